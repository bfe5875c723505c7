"""Real-world files: VNN-COMP 2021 mnistfc instances, a network written by another tool, with the
competition's consensus answers. An L_inf ball around an MNIST image clipped to [0, 1] is exactly our
property with the domain [0, 1]; uverify must never contradict the consensus: no "verified" where a
counterexample exists (sat), no "falsified" where the property holds (unsat)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from uverify.datasets import Domain
from uverify.specs.load import validate_spec
from uverify.verifier.check import check
from uverify.verifier.samples import Samples

from helpers import NO_VNNCOMP, VNNCOMP, tiny_spec_dict

if not VNNCOMP.is_dir():
    pytest.skip(NO_VNNCOMP, allow_module_level=True)


def _mnist_instance(vnnlib: Path, eps: float) -> tuple[np.ndarray, int]:
    """The image and label behind a mnistfc property: its input box is [x - eps, x + eps] ∩ [0, 1]."""
    text = vnnlib.read_text()
    label = int(re.search(r"label: (\d+)", text).group(1))  # type: ignore[union-attr]
    lo, hi = np.zeros(784), np.ones(784)
    for op, index, value in re.findall(r"\(assert \((<=|>=) X_(\d+) ([-0-9.e]+)\)\)", text):
        (hi if op == "<=" else lo)[int(index)] = float(value)
    x = np.where(lo > 0, lo + eps, hi - eps)  # a clipped side gives the centre from the other one
    assert np.all(np.abs(np.clip(x - eps, 0, 1) - lo) < 1e-6) and np.all(np.abs(np.clip(x + eps, 0, 1) - hi) < 1e-6)
    return x.astype(np.float32), label


def _rows() -> list[dict[str, str]]:
    with open(VNNCOMP / "ground_truth.csv") as handle:
        return [row for row in csv.DictReader(handle) if row["category"] == "mnistfc"]


@pytest.mark.parametrize("row", _rows(), ids=lambda row: Path(row["vnnlib"]).stem)
def test_mnistfc_verdicts_never_contradict_the_consensus(row: dict[str, str]) -> None:
    eps = float(re.search(r"_([0-9.]+)\.vnnlib$", row["vnnlib"]).group(1))  # type: ignore[union-attr]
    x, label = _mnist_instance(VNNCOMP / row["vnnlib"], eps)
    spec = validate_spec(
        tiny_spec_dict(property={"norm": "inf", "epsilon": [eps]}, attack={"steps": 100, "restarts": 3})
    )
    sample = Samples(x[None], np.array([label]), np.array([0]), row["vnnlib"])
    report = check(VNNCOMP / row["onnx"], spec, sample, Domain.box((784,), 0.0, 1.0), progress=False, cross_check=True)
    verdict = report.samples[0].verdicts[0]
    if row["consensus_result"].startswith("sat"):
        assert verdict in ("falsified", "unknown", "misclassified")
    else:
        assert verdict in ("verified", "unknown")
