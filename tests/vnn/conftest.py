"""Fixtures for the VNN-LIB tests: the tiny network of `uverify.testing.vnn`, and the shared instances."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from uverify.testing.vnn import write_network

# ../shared/vnncomp beside the repository, or $UVERIFY_VNNCOMP
VNNCOMP = Path(os.environ.get("UVERIFY_VNNCOMP", Path(__file__).resolve().parents[2].parent / "shared" / "vnncomp"))


@pytest.fixture
def vnncomp_root() -> Path:
    if not (VNNCOMP / "ground_truth.csv").is_file():
        pytest.skip(f"the VNN-COMP instances are not at {VNNCOMP} (set UVERIFY_VNNCOMP)")
    return VNNCOMP


@pytest.fixture
def network(tmp_path: Path) -> Path:
    return write_network(tmp_path / "tiny.onnx")
