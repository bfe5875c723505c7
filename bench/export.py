"""ONNX export: a fresh dynamo export per model against the templates with swapped weights.

For each architecture (the default mlp, the digits cnn, a 5-shard SISA mean-of-logits ensemble) it
exports the same structure with 5 different weight draws three ways, interleaved: with no template
anywhere (what every export cost before: torch's exporter traces), with only the stored template (what
a new process pays: a worker, the next command), and with this process's template in memory. Each
includes onnxruntime's check of the file against torch. It prints the median seconds per export and the
ratios to the fresh export, and checks the three files are byte-identical. The cache folder is a
temporary one (UVERIFY_CACHE_DIR), so the user's is never touched.

    .venv/bin/python bench/export.py
"""

from __future__ import annotations

import os
import shutil
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
    print(f"{'model':8} {'fresh s':>8} {'stored s':>9} {'memory s':>9} {'stored':>7} {'memory':>7}  identical")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        os.environ["UVERIFY_CACHE_DIR"] = str(out / "cache")
        for name, (make, shape) in cases.items():
            samples = rng.random((64, *shape), dtype=np.float32)
            seconds: dict[str, list[float]] = {"fresh": [], "stored": [], "memory": []}
            same = True
            for seed in range(DRAWS):
                model = make(seed)
                for how in seconds:
                    if how != "memory":
                        export_module._TEMPLATES.clear()
                    if how == "fresh":
                        shutil.rmtree(out / "cache", ignore_errors=True)
                    started = time.perf_counter()
                    export_onnx(model, out / f"{how}.onnx", samples)
                    seconds[how].append(time.perf_counter() - started)
                same &= len({(out / f"{how}.onnx").read_bytes() for how in seconds}) == 1
            # the first draw's fresh export also pays the exporter's imports: the medians are over the later ones
            f, s, m = (statistics.median(seconds[how][1:]) for how in seconds)
            print(f"{name:8} {f:8.3f} {s:9.3f} {m:9.3f} {f / s:6.1f}x {f / m:6.1f}x  {same}")


if __name__ == "__main__":
    main()
