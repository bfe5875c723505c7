"""Shared fixtures: tiny specs that train in well under a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from uverify.specs.load import validate_spec
from uverify.specs.schema import Spec

from helpers import tiny_spec_dict


@pytest.fixture
def tiny_spec() -> Spec:
    return validate_spec(tiny_spec_dict())


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write a spec dict (or raw text) to a YAML file and return its path."""

    def write(content: dict[str, Any] | str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content), encoding="utf-8")
        return path

    return write


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The loan cache goes to a folder of this test session, never to the user's ~/.cache."""
    import os

    os.environ["UVERIFY_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


# what the suite's forked commands (fault injection, the CLI tests' pools) import on top of the
# product's preloads: the ONNX exporter (about 0.6 s of imports in every command that exports)
EXPORTER_MODULES = ("torch.onnx._internal.exporter._compat", "torch._functorch.aot_autograd", "torch.export._trace")


@pytest.fixture(autouse=True, scope="session")
def _forkserver(_private_cache: None) -> None:
    """uverify's forkserver, started before any test with the exporter among its preloads (it imports
    them in its own process while the first tests run; the first caller fixes the preloads), after the
    environment is set: a forked process has the server's environment."""
    from uverify.compute import forkserver_context

    forkserver_context(*EXPORTER_MODULES)
