"""Majority-vote ensembles: S ONNX classifiers listed in a vote manifest (`vote.json`).

A vote (each member's argmax counted, the most votes wins, ties to the lowest class) is not a graph
that bound propagation can pass through, so the verifier certifies it by counting: the vote is
certified for y at x when more than S/2 members are certified for y over the ball (ties count
against). It is sound: in the ball every one of those members predicts y, so y holds a strict
majority. PGD attacks the mean of the members' logits (differentiable), and onnxruntime judges each
candidate by the vote itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from uverify.errors import ModelError
from uverify.files import atomic_write_json, sha256_file
from uverify.verifier.referee import Referee

VOTE_SCHEMA = "uverify.vote/1"


class VoteMember(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str = Field(description="relative to the manifest's folder")
    sha256: str


class VoteManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    schema_: Literal["uverify.vote/1"] = Field("uverify.vote/1", alias="schema")
    aggregation: Literal["majority_vote"] = "majority_vote"
    members: list[VoteMember] = Field(min_length=1)


def is_vote_manifest(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".json"


def write_vote_manifest(path: Path, members: list[Path]) -> Path:
    """List `members` (ONNX files beside or below `path`) with their hashes."""
    manifest = VoteManifest(
        members=[VoteMember(path=str(m.relative_to(path.parent)), sha256=sha256_file(m)) for m in members]
    )
    return atomic_write_json(path, manifest.model_dump(mode="json", by_alias=True))


def read_vote_manifest(path: str | Path) -> tuple[VoteManifest, list[Path]]:
    """The manifest and its member files, each checked to exist and to be the file that was listed."""
    path = Path(path)
    try:
        manifest = VoteManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"vote manifest {path}: not readable ({exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ModelError(f"vote manifest {path}: not a {VOTE_SCHEMA} file ({where}: {first['msg']})") from None
    files = []
    for member in manifest.members:
        if Path(member.path).is_absolute() or ".." in Path(member.path).parts:
            raise ModelError(f"vote manifest {path}: member {member.path} must be a path inside the manifest's folder")
        file = path.parent / member.path
        if not file.is_file():
            raise ModelError(f"vote manifest {path}: member {member.path} is missing")
        if sha256_file(file) != member.sha256:
            raise ModelError(f"vote manifest {path}: member {member.path} changed since the manifest was written")
        files.append(file)
    return manifest, files


def vote_counts(member_logits: list[np.ndarray]) -> np.ndarray:
    """(N, classes) float32 vote counts; argmax of the counts breaks ties to the lowest class."""
    counts = np.zeros_like(member_logits[0], dtype=np.float32)
    rows = np.arange(len(counts))
    for logits in member_logits:
        counts[rows, logits.argmax(axis=1)] += 1.0
    return counts


def vote_margin(member_margins: np.ndarray) -> np.ndarray:
    """Per sample, the (floor(S/2)+1)-th largest member margin lower bound, members along axis 0.

    It exceeds a threshold exactly when more than S/2 members' margins do: a vote margin that is
    certified exactly when a strict majority of members is."""
    need = member_margins.shape[0] // 2 + 1
    return -np.sort(-member_margins, axis=0)[need - 1]


class VoteReferee:
    """onnxruntime over every member; `logits` returns the vote counts, so `confirm_counterexamples`
    judges a candidate by the vote."""

    def __init__(self, members: list[Path]) -> None:
        self.members = [Referee(m) for m in members]

    def logits(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        return vote_counts([m.logits(x, batch_size) for m in self.members])


class MeanOfLogits(nn.Module):
    """The differentiable surrogate PGD attacks in place of the vote."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.members[0](x)
        for member in self.members[1:]:
            total = total + member(x)
        return total * (1.0 / len(self.members))


def manifest_metadata(path: Path) -> dict[str, str]:
    """The vote's metadata: the first member's (data set, domain, ...) plus the aggregation."""
    from uverify.models import read_metadata

    _, files = read_vote_manifest(path)
    metadata = dict(read_metadata(files[0]))
    metadata["aggregation"] = "majority_vote"
    metadata["members"] = json.dumps([str(f.relative_to(path.parent)) for f in files])
    return metadata


__all__ = [
    "MeanOfLogits",
    "VoteManifest",
    "VoteReferee",
    "is_vote_manifest",
    "manifest_metadata",
    "read_vote_manifest",
    "vote_counts",
    "vote_margin",
    "write_vote_manifest",
]
