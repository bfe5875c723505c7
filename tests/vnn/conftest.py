"""Fixtures for the VNN-LIB tests: the tiny network of `uverify.testing.vnn`, and the shared instances."""

from __future__ import annotations

from pathlib import Path

import pytest

from uverify.testing.vnn import write_network

from helpers import vnncomp_file


@pytest.fixture
def vnncomp_root() -> Path:
    return vnncomp_file("ground_truth.csv").parent


@pytest.fixture
def network(tmp_path: Path) -> Path:
    return write_network(tmp_path / "tiny.onnx")
