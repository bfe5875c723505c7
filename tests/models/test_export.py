from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from uverify.errors import ExportError, ModelError
from uverify.kinds import Aggregation
from uverify.models import build_model, export_onnx, read_metadata, registered
from uverify.models import export as export_module
from uverify.models.referee import Agreement, agreement
from uverify.specs.schema import CnnSpec, MlpSpec
from uverify.unlearning.sisa import SisaEnsemble

ARCHS = {
    "mlp": (MlpSpec(arch="mlp", hidden=[16, 8]), (6,)),
    "cnn": (CnnSpec(arch="cnn", channels=[4, 8], stride=2, hidden=[16]), (1, 8, 8)),
}


def test_every_registered_architecture_is_covered() -> None:
    assert set(registered()) == set(ARCHS)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_export_matches_torch_on_real_batches_and_carries_metadata(arch: str, tmp_path: Path) -> None:
    spec, shape = ARCHS[arch]
    model = build_model(spec, shape, 3, seed=0)
    rng = np.random.default_rng(0)
    samples = rng.random((32, *shape), dtype=np.float32)
    report = export_onnx(model, tmp_path / "m.onnx", samples, {"dataset": "x", "class_names": ["a", "b", "c"]})
    assert report.max_abs_diff <= 1e-4
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert proto.opset_import[0].version == 18
    # only ops the verifier's importer reads: the exported graph stays inside that op set
    expected = {"mlp": {"Gemm", "Relu"}, "cnn": {"Conv", "Relu", "Reshape", "Gemm"}}[arch]
    assert {n.op_type for n in proto.graph.node} <= expected | {"Flatten"}
    assert read_metadata(tmp_path / "m.onnx") == {"dataset": "x", "class_names": ["a", "b", "c"]}
    # dynamic batch: any batch size runs, and agrees with torch
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 5, 100):
        x = rng.random((n, *shape), dtype=np.float32)
        got = session.run(None, {"input": x})[0]
        np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_a_mismatch_is_detected_and_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, shape = ARCHS["mlp"]
    samples = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
    a, b = build_model(spec, shape, 3, seed=0), build_model(spec, shape, 3, seed=1)
    export_onnx(a, tmp_path / "a.onnx", samples)
    # the check itself: a's file against b's weights differs far above the tolerance
    assert agreement(b, (tmp_path / "a.onnx").read_bytes(), samples).max_abs_diff > 1e-3
    # and a disagreeing export fails loudly without touching the target path
    monkeypatch.setattr("uverify.models.export.agreement", lambda *args: Agreement(0.5, 1.0, (2, 3), (2, 3)))
    with pytest.raises(ExportError, match="disagrees with torch"):
        export_onnx(a, tmp_path / "bad.onnx", samples)
    assert not (tmp_path / "bad.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.onnx"]  # no temp file left behind


def _forget_templates() -> None:
    """As a new process on a new machine: no template in memory, none stored."""
    export_module._TEMPLATES.clear()
    shutil.rmtree(export_module._template_folder(), ignore_errors=True)


def _fresh(model: torch.nn.Module, path: Path, samples: np.ndarray) -> bytes:
    """An export with no template anywhere: what the first export of an architecture writes."""
    _forget_templates()
    export_onnx(model, path, samples)
    return path.read_bytes()


def _no_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch's exporter ran")

    monkeypatch.setattr(torch.onnx, "export", refuse)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_an_export_from_the_template_is_byte_for_byte_a_fresh_one(arch: str, tmp_path: Path) -> None:
    spec, shape = ARCHS[arch]
    samples = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
    a, b = build_model(spec, shape, 3, seed=0), build_model(spec, shape, 3, seed=1)
    fresh_b = _fresh(b, tmp_path / "fresh_b.onnx", samples)
    _fresh(a, tmp_path / "a.onnx", samples)
    assert len(export_module._TEMPLATES) == 1  # a's graph is kept ...
    export_onnx(b, tmp_path / "b.onnx", samples)  # ... and b gets it with b's weights
    assert (tmp_path / "b.onnx").read_bytes() == fresh_b
    assert len(export_module._TEMPLATES) == 1


def test_the_template_is_per_structure_and_per_aggregation(tmp_path: Path) -> None:
    spec, shape = ARCHS["mlp"]
    samples = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
    members = [build_model(spec, shape, 3, seed=s) for s in range(2)]
    fresh = {agg: _fresh(SisaEnsemble(members, agg), tmp_path / f"{agg}.onnx", samples) for agg in Aggregation}
    _forget_templates()
    for agg in Aggregation:  # same members and weights, other graphs: each aggregation its own template
        export_onnx(SisaEnsemble(members, agg), tmp_path / "e.onnx", samples)
        assert (tmp_path / "e.onnx").read_bytes() == fresh[agg]
    wider = build_model(MlpSpec(arch="mlp", hidden=[16, 9]), shape, 3, seed=0)
    export_onnx(wider, tmp_path / "w.onnx", samples)
    assert (tmp_path / "w.onnx").read_bytes() == _fresh(wider, tmp_path / "w2.onnx", samples)
    assert len(export_module._TEMPLATES) == 1


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_a_new_process_exports_from_the_stored_template_byte_for_byte(
    arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, shape = ARCHS[arch]
    samples = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
    a, b = build_model(spec, shape, 3, seed=0), build_model(spec, shape, 3, seed=1)
    fresh_b = _fresh(b, tmp_path / "fresh_b.onnx", samples)
    _fresh(a, tmp_path / "a.onnx", samples)  # traced, and its template stored
    assert len(list(export_module._template_folder().iterdir())) == 1
    export_module._TEMPLATES.clear()  # a new process: only the stored template
    _no_exporter(monkeypatch)
    export_onnx(b, tmp_path / "b.onnx", samples)
    assert (tmp_path / "b.onnx").read_bytes() == fresh_b
    assert len(export_module._TEMPLATES) == 1  # and kept for this process


def _relu_to_identity(proto: onnx.ModelProto) -> None:  # a well-formed graph that computes something else
    for node in proto.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Identity"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other structure", "other function"])
def test_a_damaged_stored_template_is_traced_afresh_and_replaced(damage: str, tmp_path: Path) -> None:
    spec, shape = ARCHS["mlp"]
    samples = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
    a, b = build_model(spec, shape, 3, seed=0), build_model(spec, shape, 3, seed=1)
    fresh_b = _fresh(b, tmp_path / "fresh_b.onnx", samples)
    _fresh(a, tmp_path / "a.onnx", samples)
    (stored,) = export_module._template_folder().iterdir()
    good = stored.read_bytes()
    if damage == "garbage":
        stored.write_bytes(b"not a protobuf \xff\xfe" * 10)
    elif damage == "truncated":
        stored.write_bytes(good[: len(good) // 2])
    else:
        other = build_model(MlpSpec(arch="mlp", hidden=[16, 9]), shape, 3, seed=0) if damage == "other structure" else a
        export_module._TEMPLATES.clear()
        export_onnx(other, tmp_path / "other.onnx", samples)  # its own template, memorised or stored
        proto = onnx.load_from_string((tmp_path / "other.onnx").read_bytes())
        if damage == "other function":
            _relu_to_identity(proto)
        stored.write_bytes(proto.SerializeToString())
    export_module._TEMPLATES.clear()
    export_onnx(b, tmp_path / "b.onnx", samples)
    assert (tmp_path / "b.onnx").read_bytes() == fresh_b  # what a fresh export writes, never the damaged graph
    assert stored.read_bytes() == good  # and the stored template is the good one again


def test_a_stored_template_holds_no_weights(tmp_path: Path) -> None:
    spec, shape = ARCHS["mlp"]
    samples = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
    _fresh(build_model(spec, shape, 3, seed=0), tmp_path / "a.onnx", samples)
    (stored,) = export_module._template_folder().iterdir()
    weights = onnx.load_from_string(stored.read_bytes()).graph.initializer
    assert weights and all(not onnx.numpy_helper.to_array(w).any() for w in weights if w.dims and w.data_type == 1)


def test_an_unwritable_cache_folder_only_costs_the_speed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("a file where the cache folder would be")
    monkeypatch.setenv("UVERIFY_CACHE_DIR", str(tmp_path / "file"))
    spec, shape = ARCHS["mlp"]
    samples = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
    export_module._TEMPLATES.clear()
    report = export_onnx(build_model(spec, shape, 3, seed=0), tmp_path / "m.onnx", samples)
    assert report.max_abs_diff <= 1e-4 and (tmp_path / "m.onnx").is_file()


def test_cnn_on_flat_data_is_a_clear_error() -> None:
    with pytest.raises(ModelError, match="needs image input"):
        build_model(CnnSpec(arch="cnn"), (10,), 3, seed=0)


def test_export_needs_a_batch() -> None:
    spec, shape = ARCHS["mlp"]
    with pytest.raises(ExportError, match="at least 2"):
        export_onnx(build_model(spec, shape, 3, seed=0), "never.onnx", np.zeros((1, *shape), np.float32))


def test_read_metadata_of_garbage_is_a_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file at all")
    with pytest.raises(ModelError, match="not a readable ONNX file"):
        read_metadata(bad)
