"""VNN-COMP's files: result files (written, read back exactly), instance lists, ground truth and score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from uverify.vnn.results import (
    InstanceResult,
    ResultFileError,
    normalise_truth,
    parse_result_file,
    read_ground_truth,
    read_instances,
    render_score,
    score,
    write_result_file,
    write_results_csv,
)


def test_result_file_round_trip(tmp_path: Path) -> None:
    x = np.array([0.1, -3.0e-8, 1.0], dtype=np.float32)
    y = np.array([np.float32(1) / 3, -2.5], dtype=np.float32)
    path = write_result_file(tmp_path / "r.txt", "sat", x, y)
    text = path.read_text()
    assert text.startswith("sat\n((X_0 ") and text.rstrip().endswith(")")
    result, x_back, y_back = parse_result_file(text)
    assert result == "sat" and x_back is not None and y_back is not None
    assert np.array_equal(x_back.astype(np.float32), x) and np.array_equal(y_back.astype(np.float32), y)
    for other in ("unsat", "unknown", "timeout", "error"):
        assert write_result_file(tmp_path / f"{other}.txt", other).read_text() == other + "\n"


def test_bad_result_files() -> None:
    with pytest.raises(ResultFileError, match="none of"):
        parse_result_file("maybe\n")
    with pytest.raises(ResultFileError, match="X_i"):
        parse_result_file("sat\n((X_0 1.0)\n(X_2 1.0)\n(Y_0 0.0))")
    assert parse_result_file("holds\n")[0] == "unsat" and parse_result_file("violated\n((X_0 1)(Y_0 2))")[0] == "sat"


@pytest.mark.parametrize(
    ("text", "truth"),
    [("unsat(holds)", "unsat"), ("sat(violated)", "sat"), ("DISPUTED", None), ("holds", "unsat"), ("", None)],
)
def test_ground_truth_words(text: str, truth: str | None) -> None:
    assert normalise_truth(text) == truth


def test_score() -> None:
    assert (score("sat", "sat"), score("unsat", "unsat"), score("unsat", "sat"), score("sat", "unsat")) == (
        10,
        10,
        -150,
        -150,
    )
    assert score("unknown", "sat") == score("timeout", "unsat") == score("sat", None) == 0


def _files(folder: Path) -> None:
    (folder / "onnx").mkdir(parents=True)
    (folder / "vnnlib").mkdir()
    for name in ("onnx/a.onnx", "vnnlib/p.vnnlib", "vnnlib/q.vnnlib.gz"):
        (folder / name).write_bytes(b"x")


def test_vnncomp_instance_list(tmp_path: Path) -> None:
    bench = tmp_path / "acasxu"
    _files(bench)
    (bench / "instances.csv").write_text("onnx/a.onnx,vnnlib/p.vnnlib,116\nonnx/a.onnx,vnnlib/q.vnnlib.gz,12.5\n")
    rows = read_instances(bench / "instances.csv")
    assert [(r.category, r.onnx, r.timeout, r.truth) for r in rows] == [
        ("acasxu", bench / "onnx/a.onnx", 116.0, None),
        ("acasxu", bench / "onnx/a.onnx", 12.5, None),
    ]


def test_instance_list_with_a_header_and_truth(tmp_path: Path) -> None:
    _files(tmp_path)
    listing = tmp_path / "list.csv"
    listing.write_text("category,onnx,vnnlib,timeout_s,consensus_result\nc1,onnx/a.onnx,vnnlib/p.vnnlib,5,violated\n")
    (row,) = read_instances(listing)
    assert (row.category, row.timeout, row.truth) == ("c1", 5.0, "sat")
    truth = read_ground_truth(listing)
    assert truth == {("a.onnx", "p.vnnlib"): "sat"}


def test_a_disputed_row_has_no_truth_and_scores_nothing(tmp_path: Path) -> None:
    _files(tmp_path)
    listing = tmp_path / "list.csv"
    listing.write_text("category,onnx,vnnlib,timeout_s,consensus_result\nc1,onnx/a.onnx,vnnlib/p.vnnlib,5,DISPUTED\n")
    (row,) = read_instances(listing)
    assert row.truth is None and read_ground_truth(listing) == {}
    assert score("unsat", row.truth) == score("sat", row.truth) == 0


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("onnx/a.onnx,vnnlib/missing.vnnlib,10\n", "does not exist"),
        ("onnx/a.onnx,vnnlib/p.vnnlib,soon\n", "not a number"),
        ("onnx/a.onnx\n", "expected onnx,vnnlib,timeout"),
        ("", "lists no instances"),
    ],
)
def test_bad_instance_lists(tmp_path: Path, text: str, match: str) -> None:
    _files(tmp_path)
    (tmp_path / "instances.csv").write_text(text)
    with pytest.raises(ResultFileError, match=match):
        read_instances(tmp_path / "instances.csv")


def test_results_csv_and_table(tmp_path: Path) -> None:
    results = [
        InstanceResult("acasxu", "a.onnx", "p.vnnlib", 0.5, "sat", 1.25, "sat"),
        InstanceResult("acasxu", "a.onnx", "q.vnnlib", 0.5, "unsat", 2.0, "sat"),
        InstanceResult("mnist", "m.onnx", "r.vnnlib", 1.0, "timeout", 3.0, "unsat"),
    ]
    path = write_results_csv(tmp_path / "results.csv", results)
    assert path.read_text().splitlines()[0] == "acasxu,a.onnx,p.vnnlib,0.500,sat,1.250"
    table = render_score(results)
    acas = next(line for line in table.splitlines() if line.startswith("acasxu")).split()
    assert acas[1:11] == ["2", "1", "1", "0", "0", "0", "2", "1", "1", "-140"]
    assert next(line for line in table.splitlines() if line.startswith("total")).split()[10] == "-140"
