"""Majority-vote ensembles on disk: S ONNX classifiers listed in a vote manifest (`vote.json`,
schema uverify.vote/1) with their sha256, and onnxruntime over them counting votes.

A vote (each member's argmax counted, the most votes wins, ties to the lowest class) is not a graph
that one ONNX file can hold for bound propagation, so SISA's majority_vote exports its members one by
one and this manifest ties them together. How the verifier certifies a vote is in verifier/vote.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from uverify.errors import ModelError, validation_one_line
from uverify.files import atomic_write_json, sha256_file
from uverify.models.export import read_metadata
from uverify.models.referee import Referee

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
    spec_sha256: str | None = Field(None, description="the spec every member was trained from (uverify's exports)")


def is_vote_manifest(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".json"


def write_vote_manifest(path: Path, members: list[Path], spec_sha256: str | None = None) -> Path:
    """List `members` (ONNX files beside or below `path`) with their hashes, and the spec they came from."""
    manifest = VoteManifest(
        members=[VoteMember(path=str(m.relative_to(path.parent)), sha256=sha256_file(m)) for m in members],
        spec_sha256=spec_sha256,
    )
    return atomic_write_json(path, manifest.model_dump(mode="json", by_alias=True))


def read_vote_manifest(path: str | Path) -> tuple[VoteManifest, list[Path]]:
    """The manifest and its member files, each checked to exist and to be the file that was listed, no
    member twice, and the members uverify exported checked to be this vote's (see `_check_members`)."""
    path = Path(path)
    try:
        manifest = VoteManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"vote manifest {path}: not readable ({exc})") from None
    except ValidationError as exc:
        raise ModelError(f"vote manifest {path}: not a {VOTE_SCHEMA} file ({validation_one_line(exc)})") from None
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
    _check_members(path, manifest, files)
    return manifest, files


def _check_members(path: Path, manifest: VoteManifest, files: list[Path]) -> None:
    """A vote that lists a member twice, or a member from another training, would count votes that were
    never cast: refuse it. uverify's exports record their shard (`sisa_shard`), the shard count and the spec
    hash; where any member does, every member must, member k must be shard k of the same spec, and the
    count must be the shards'."""
    paths, hashes = [m.path for m in manifest.members], [m.sha256 for m in manifest.members]
    for member in manifest.members:
        if paths.count(member.path) > 1 or hashes.count(member.sha256) > 1:
            raise ModelError(f"vote manifest {path}: member {member.path} is listed twice (or under two names)")
    metadata = [read_metadata(f) for f in files]
    exported = [m for m in metadata if "sisa_shard" in m]
    if not exported and manifest.spec_sha256 is None:
        return  # a vote of someone else's models: nothing recorded to check against
    for k, (member, meta) in enumerate(zip(manifest.members, metadata, strict=True)):
        where = f"vote manifest {path}: member {member.path}"
        if "sisa_shard" not in meta:
            raise ModelError(f"{where} is not one of this vote's SISA shards (it records no shard)")
        if meta.get("sisa_shard") != k:
            raise ModelError(f"{where} is shard {meta.get('sisa_shard')}, listed as member {k}")
        shards = (meta.get("sisa") or {}).get("shards") if isinstance(meta.get("sisa"), dict) else None
        if shards != len(files):
            raise ModelError(f"{where} belongs to a vote of {shards} shards; the manifest lists {len(files)}")
        expected = manifest.spec_sha256 or metadata[0].get("spec_sha256")
        if meta.get("spec_sha256") != expected:
            raise ModelError(f"{where} was trained from another spec (spec hash {str(meta.get('spec_sha256'))[:12]})")


def manifest_metadata(path: Path) -> dict[str, Any]:
    """The vote's metadata: the first member's (data set, domain, ...) plus the aggregation and members."""
    _, files = read_vote_manifest(path)
    metadata = dict(read_metadata(files[0]))
    metadata["aggregation"] = "majority_vote"
    metadata["members"] = [str(f.relative_to(path.parent)) for f in files]
    return metadata


def vote_counts(member_logits: list[np.ndarray]) -> np.ndarray:
    """(N, classes) float32 vote counts; argmax of the counts breaks ties to the lowest class."""
    counts = np.zeros_like(member_logits[0], dtype=np.float32)
    rows = np.arange(len(counts))
    for logits in member_logits:
        counts[rows, logits.argmax(axis=1)] += 1.0
    return counts


class VoteReferee:
    """onnxruntime over every member; `logits` returns the vote counts, so a counterexample is judged
    by the vote itself."""

    def __init__(self, members: list[Path]) -> None:
        self.members = [Referee(m) for m in members]

    def logits(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        return vote_counts([m.logits(x, batch_size) for m in self.members])


def referee_for(model_file: Path) -> Referee | VoteReferee:
    """onnxruntime over a model file: one graph, or the vote a manifest lists."""
    if is_vote_manifest(model_file):
        return VoteReferee(read_vote_manifest(model_file)[1])
    return Referee(model_file)


__all__ = [
    "VOTE_SCHEMA",
    "VoteManifest",
    "VoteMember",
    "VoteReferee",
    "is_vote_manifest",
    "manifest_metadata",
    "read_vote_manifest",
    "referee_for",
    "vote_counts",
    "write_vote_manifest",
]
