"""ONNX export: a fresh dynamo export per model against the per-process template with swapped weights.

For each architecture (the default mlp, the digits cnn, a 5-shard SISA mean-of-logits ensemble) it
exports the same structure with 5 different weight draws twice, interleaved: once clearing the template
cache before each export (what every export cost before), once keeping it (the first export traces,
the rest reuse the graph). Both include onnxruntime's check of the file against torch. It prints the
median seconds per export and the ratio, and checks the two files are byte-identical.

    .venv/bin/python bench/export.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from uverify.models import build_model, export_onnx
from uverify.models import export as export_module
from uverify.specs.schema import CnnSpec, MlpSpec
from uverify.unlearning.sisa import SisaEnsemble

DRAWS = 5


def _mlp(seed: int) -> nn.Module:
    return build_model(MlpSpec(arch="mlp", hidden=[64, 64]), (10,), 4, seed=seed)


def _cnn(seed: int) -> nn.Module:
    return build_model(CnnSpec(arch="cnn", channels=[16, 32], hidden=[64]), (1, 8, 8), 10, seed=seed)


def _ensemble(seed: int) -> nn.Module:
    return SisaEnsemble([_mlp(seed * 10 + k) for k in range(5)], "mean_logits")


def main() -> None:
    cases: dict[str, tuple[Callable[[int], nn.Module], tuple[int, ...]]] = {
        "mlp": (_mlp, (10,)),
        "cnn": (_cnn, (1, 8, 8)),
        "sisa x5": (_ensemble, (10,)),
    }
    rng = np.random.default_rng(0)
    print(f"{'model':8} {'fresh s':>8} {'template s':>10} {'ratio':>6}  identical")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        for name, (make, shape) in cases.items():
            samples = rng.random((64, *shape), dtype=np.float32)
            fresh, templated, same = [], [], True
            export_module._TEMPLATES.clear()
            for seed in range(DRAWS):
                model = make(seed)
                saved = dict(export_module._TEMPLATES)
                export_module._TEMPLATES.clear()
                started = time.perf_counter()
                export_onnx(model, out / "fresh.onnx", samples)
                fresh.append(time.perf_counter() - started)
                export_module._TEMPLATES.clear()
                export_module._TEMPLATES.update(saved)
                started = time.perf_counter()
                export_onnx(model, out / "templated.onnx", samples)
                templated.append(time.perf_counter() - started)
                same &= (out / "fresh.onnx").read_bytes() == (out / "templated.onnx").read_bytes()
            # the first templated export traces (nothing cached yet); the ratio is over the later ones
            f, t = statistics.median(fresh[1:]), statistics.median(templated[1:])
            print(f"{name:8} {f:8.3f} {t:10.3f} {f / t:5.1f}x  {same}")


if __name__ == "__main__":
    main()
