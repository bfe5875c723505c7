from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from click.testing import CliRunner

from uverify.cli import cli
from uverify.datasets import load
from uverify.specs.load import load_spec

from helpers import tiny_spec_dict


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_shows_an_example_for_every_command() -> None:
    top = _invoke("--help")
    assert top.exit_code == 0 and "Example" in top.output
    for command in cli.commands:
        result = _invoke(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output, command


def test_train_writes_a_validated_run_directory(write_spec, tmp_path: Path) -> None:
    spec_path = write_spec(tiny_spec_dict())
    out = tmp_path / "run"
    result = _invoke("train", "--spec", str(spec_path), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert "clean test accuracy" in result.output
    assert {p.name for p in out.iterdir()} == {"model.onnx", "run.json", "sisa", "spec.json", "train_log.json"}
    assert len(list((out / "sisa").rglob("slice_*.pt"))) == 3 * 2  # a checkpoint per shard and slice
    log = json.loads((out / "train_log.json").read_text())
    assert log["training"] == "standard" and log["method"] == "sisa"
    assert [(s["shard"], s["slice"]) for s in log["steps"]] == [(k, r) for k in range(3) for r in (1, 2)]
    assert log["export"]["max_abs_diff"] <= 1e-4
    # the file on disk classifies the test set as the log says
    splits = load(load_spec(spec_path).data)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    preds = session.run(None, {"input": splits.test.X})[0].argmax(1)
    assert float((preds == splits.test.y).mean()) == log["test_accuracy_onnxruntime"]


def test_adversarial_flag_uses_the_spec_settings(write_spec, tmp_path: Path) -> None:
    raw = tiny_spec_dict(train={"epochs": 1, "batch_size": 64, "adversarial": {"epsilon": 0.03, "steps": 2}})
    out = tmp_path / "adv"
    result = _invoke("train", "--spec", str(write_spec(raw)), "--out", str(out), "--adversarial", "--quiet")
    assert result.exit_code == 0, result.output
    log = json.loads((out / "train_log.json").read_text())
    assert log["training"] == "adversarial"
    assert log["adversarial"] == {"epsilon": 0.03, "steps": 2, "step_size": None}
    meta = {p.key: p.value for p in __import__("onnx").load(str(out / "model.onnx")).metadata_props}
    assert meta["training"] == "adversarial" and json.loads(meta["input_domain"])["shape"] == [4]


def test_same_spec_same_model_bytes(write_spec, tmp_path: Path) -> None:
    spec_path = str(write_spec(tiny_spec_dict()))
    for name in ("a", "b"):  # the same spec file, trained twice
        assert _invoke("train", "--spec", spec_path, "--out", str(tmp_path / name), "--quiet").exit_code == 0
    for a in sorted((tmp_path / "a" / "sisa").rglob("*.pt")):
        b = tmp_path / "b" / a.relative_to(tmp_path / "a")
        wa = torch.load(a, weights_only=True)["model"]
        wb = torch.load(b, weights_only=True)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), a


def test_bad_input_is_one_line_and_exit_code_2(write_spec, tmp_path: Path) -> None:
    cases = [
        (["--spec", str(tmp_path / "missing.yaml")], "no such file"),
        (["--spec", str(write_spec("name: [unclosed\n", "a.yaml"))], "malformed YAML"),
        (["--spec", str(write_spec(tiny_spec_dict(trian={}), "b.yaml"))], "did you mean 'train'"),
        (["--spec", str(write_spec(tiny_spec_dict(property={"epsilon": -1}), "c.yaml"))], "property.epsilon[0]"),
        (["--spec", "loan", "--data", str(tmp_path / "nowhere.csv")], "accepted_2007_to_2018Q4.csv"),
        (["--spec", str(write_spec(tiny_spec_dict(model={"arch": "cnn"}), "d.yaml"))], "needs image input"),
        (
            ["--spec", str(write_spec(tiny_spec_dict(unlearning={"sisa": {"shards": 200, "slices": 2}}), "e.yaml"))],
            "200 shards x 2 slices need at least 400 training samples; the training set has 240",
        ),
    ]
    for args, expected in cases:
        result = _invoke("train", *args, "--out", str(tmp_path / "out"), "--quiet")
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_2() -> None:
    assert _invoke("train").exit_code == 2
    assert _invoke("no-such-command").exit_code == 2


def test_unlearn_deletes_logs_and_repeats_as_a_no_op(write_spec, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _invoke("train", "--spec", str(write_spec(tiny_spec_dict())), "--out", str(run), "--quiet").exit_code == 0
    train_ids = load(load_spec(str(run / "spec.json")).data).train.ids
    ids = tmp_path / "ids.txt"
    ids.write_text(f"# forget these\n{train_ids[0]}\n{train_ids[3]}, {train_ids[9]}\n")
    result = _invoke("unlearn", "--run", str(run), "--unlearning", "sisa", "--delete", str(ids), "--quiet")
    assert result.exit_code == 0, result.output
    assert "sisa: deleted 3 of 3 requested ids" in result.output and "retrained: shard" in result.output
    assert "accuracy forgotten" in result.output and "membership AUC" in result.output
    again = _invoke("unlearn", "--run", str(run), "--delete", str(ids), "--quiet")
    assert again.exit_code == 0 and "nothing to do: all 3 requested ids are already deleted" in again.output
    metrics = tmp_path / "metrics.json"
    frac = _invoke(
        "unlearn", "--run", str(run), "--delete-fraction", "0.02", "--seed", "1", "--json", str(metrics), "--quiet"
    )
    assert frac.exit_code == 0, frac.output
    assert json.loads(metrics.read_text())["deletion"] == 2
    default = _invoke("unlearn", "--run", str(run), "--quiet")  # the spec's request: fraction 0.01, seed 0
    assert default.exit_code == 0 and "deleted" in default.output
    assert len(json.loads((run / "deletions.json").read_text())) == 3
    meta = json.loads((run / "run.json").read_text())
    assert meta["deleted"] == len(np.load(run / "deleted_ids.npy"))


def test_unlearn_bad_input_is_one_line_and_exit_code_2(write_spec, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _invoke("train", "--spec", str(write_spec(tiny_spec_dict())), "--out", str(run), "--quiet").exit_code == 0
    (tmp_path / "unknown.txt").write_text("100000\n100001\n")
    (tmp_path / "words.txt").write_text("12\nseven\n")
    (tmp_path / "empty.txt").write_text("")
    cases = [
        (["--run", str(run), "--delete", str(tmp_path / "unknown.txt")], "not in the training set"),
        (["--run", str(run), "--delete", str(tmp_path / "words.txt")], "line 2: 'seven' is not an integer"),
        (["--run", str(run), "--delete", str(tmp_path / "empty.txt")], "holds no sample ids"),
        (["--run", str(run), "--delete", str(tmp_path / "nope.txt")], "no such file"),
        (["--run", str(tmp_path), "--delete-fraction", "0.1"], "not a uverify run directory"),
        (["--run", str(run), "--delete-fraction", "0.1", "--delete", str(tmp_path / "empty.txt")], "not both"),
        (["--run", str(run), "--seed", "3"], "--seed goes with --delete-fraction"),
        (["--run", str(run), "--delete-fraction", "2"], "must lie in (0, 1)"),
        (["--run", str(run), "--unlearning", "amnesiac", "--delete-fraction", "0.1"], "trained for sisa"),
    ]
    before = sorted(p.name for p in run.iterdir())
    for args, expected in cases:
        result = _invoke("unlearn", *args, "--quiet")
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written, nothing lost


def test_the_ci_example_runs_as_written(write_spec, tmp_path: Path, monkeypatch) -> None:
    """Every `uverify` line of examples/github-actions/uverify.yml, in order, on a tiny spec."""
    import os
    import shlex

    import yaml

    workflow = yaml.safe_load((Path(__file__).parents[1] / "examples/github-actions/uverify.yml").read_text())
    steps = workflow["jobs"]["robustness-after-deletion"]["steps"]
    lines = [
        line.strip()
        for step in steps
        for line in str(step.get("run", "")).splitlines()
        if line.strip().startswith(".venv/bin/uverify") and "github.event.inputs" not in line
    ]
    assert [shlex.split(line)[1] for line in lines] == ["train", "check", "unlearn", "check", "compare", "gate"]
    monkeypatch.chdir(tmp_path)
    env = {"SPEC": str(write_spec(tiny_spec_dict())), "RUN": "runs/ci", "MODEL": "runs/ci/model.onnx"}
    (tmp_path / "reports").mkdir()
    codes = []
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for line in lines:
        args = [os.path.expandvars(a) for a in shlex.split(line.split(">>")[0])[1:]]
        result = _invoke(*args)
        codes.append(result.exit_code)
        assert result.exit_code in (0, 1), (line, result.output)
    assert codes[:5] == [0, 0, 0, 0, 0]
    assert (tmp_path / "reports" / "gate.xml").is_file() and (tmp_path / "reports" / "unlearning.json").is_file()
