from __future__ import annotations

from pathlib import Path

import pytest

from uverify.errors import ExportError
from uverify.pipeline import train_run
from uverify.specs.schema import Spec


def test_a_failed_run_leaves_the_previous_run_whole(
    tiny_spec: Spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    train_run(tiny_spec, out, adversarial=False, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args: object, **kwargs: object) -> None:
        raise ExportError("simulated export failure")

    monkeypatch.setattr("uverify.pipeline.export_onnx", broken)
    with pytest.raises(ExportError):
        train_run(tiny_spec, out, adversarial=False, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left behind


def test_a_rerun_replaces_the_whole_directory(tiny_spec: Spec, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_run(tiny_spec, out, adversarial=False, progress=False)
    (out / "stale.txt").write_text("from an older run")
    result = train_run(tiny_spec, out, adversarial=False, progress=False)
    assert result.out == out
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.safetensors", "spec.json", "train_log.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
