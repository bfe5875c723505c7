"""Branch and bound inside `uverify check`: the shared soundness suite's nets under every norm, the
report's exact counts and stop reasons, the fallbacks that say why, and the command line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from uverify.attacks import pgd_for
from uverify.cli import cli
from uverify.datasets import Domain
from uverify.models.referee import Referee
from uverify.models.vote import write_vote_manifest
from uverify.specs.load import validate_spec
from uverify.specs.schema import CompleteSpec
from uverify.verifier.bab.stage import CompleteStage
from uverify.verifier.bounds import Bounder
from uverify.verifier.check import check
from uverify.verifier.onnx_import import import_onnx
from uverify.verifier.report import load_report, render_table, save_report
from uverify.verifier.samples import Samples

from helpers import assert_one_line_error, tiny_spec_dict


def _beside(name: str) -> ModuleType:
    """A test module of this folder, loaded under another name (pytest imports test files with
    --import-mode=importlib, so they are not importable by name): its builders, not its tests."""
    spec = importlib.util.spec_from_file_location(f"bab_uses_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


core = _beside("test_bab")  # write_sequential, random_mlp
shared = _beside("test_soundness")  # the shared soundness suite's nets, radii and ball sampler
NETS = {"mlp": (shared._mlp, (5,)), "cnn": (shared._cnn, (1, 6, 6))}


@pytest.fixture(scope="module")
def shared_nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    folder = tmp_path_factory.mktemp("shared")
    out = {}
    for name, (make, shape) in NETS.items():
        path = core.write_sequential(make(), shape, folder / f"{name}.onnx")
        x = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
        out[name] = (import_onnx(path, samples=x), path, x)
    return out


# (net, norm, mode, radius as a multiple of the shared suite's, samples): each has balls that CROWN alone
# leaves undecided and that branch and bound verifies after splitting, beside balls it falsifies
CASES = [
    ("mlp", "inf", "input", 4, (0, 1, 2)),
    ("mlp", "inf", "relu", 2, (0, 1)),
    ("mlp", "2", "relu", 2, (0, 1)),
    ("mlp", "1", "relu", 2, (0, 1)),
    ("cnn", "2", "relu", 4, (2,)),
]


def test_bab_never_verifies_a_ball_with_a_sampled_or_attacked_counterexample(shared_nets: dict[str, tuple]) -> None:
    """The shared suite's nets under every norm: every `verified` survives 10,000 sampled points in the
    ball ∩ domain and PGD, every `falsified` is onnxruntime's own verdict, in the open ball and the domain."""
    split_and_verified = 0
    statuses = set()
    gen = torch.Generator().manual_seed(0)
    for net, norm, mode, factor, picks in CASES:
        model, path, xs = shared_nets[net]
        module, shape = model.module, model.input_shape
        referee = Referee(path)
        lo, hi = np.zeros(shape, np.float32), np.ones(shape, np.float32)
        bounder = Bounder(module, shape)
        stage = CompleteStage(bounder, CompleteSpec(timeout_s=3.0, mode=mode), referee, norm, lo, hi)
        eps = factor * shared.EPS[norm]
        attack = pgd_for(norm, steps=50, restarts=3)
        for i in picks:
            x, xt = xs[i], torch.from_numpy(xs[i : i + 1])
            y = int(referee.logits(x[None]).argmax())
            decision = stage.decide(x, y, eps)
            statuses.add(decision.status)
            if decision.status == "verified":
                points = shared._sample_ball(xt[0], eps * (1 - 1e-6), norm, 10_000, gen)
                adv = attack.run(module, xt, torch.tensor([y]), eps, torch.zeros(1), torch.ones(1), gen).x_adv
                every = torch.cat([points, adv])
                assert float(shared._margins(module, every, y).min()) > -1e-5, (net, norm, mode, i)
                assert (referee.logits(every.numpy()).argmax(1) == y).all(), (net, norm, mode, i)
                incomplete = float(bounder.margins(xt, torch.tensor([y]), eps, norm, 0.0, 1.0).min())
                split_and_verified += decision.domains > 1 and incomplete <= 0
            elif decision.status == "falsified":
                assert decision.x_adv is not None and decision.logits is not None
                order = np.inf if norm == "inf" else float(norm)
                assert np.linalg.norm((decision.x_adv - x).reshape(-1).astype(np.float64), ord=order) < eps
                assert np.all(decision.x_adv >= 0) and np.all(decision.x_adv <= 1)
                assert int(referee.logits(decision.x_adv[None]).argmax()) != y
    assert {"verified", "falsified"} <= statuses
    # the guard above ran on balls only branch and bound could verify (>= 3 on a quiet machine; a loaded one
    # leaves BaB less of its wall-clock budget)
    assert split_and_verified >= 2


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Samples]:
    folder = tmp_path_factory.mktemp("check")
    path = core.write_sequential(core.random_mlp(3, (12, 12)), (4,), folder / "net.onnx")
    xs = np.random.default_rng(3).random((24, 4), dtype=np.float32)
    ys = Referee(path).logits(xs).argmax(1)
    return path, Samples(xs, ys, np.arange(100, 124), "random")


def _spec(**verify: object) -> object:
    return validate_spec(
        tiny_spec_dict(
            property={"norm": "inf", "epsilon": [0.05, 0.15]},
            verify={"method": "CROWN", "batch_size": 16, **verify},
            attack={"steps": 5, "restarts": 1},
        )
    )


def test_check_complete_decides_every_sample_and_reports_it(mlp_file: tuple[Path, Samples], tmp_path: Path) -> None:
    path, samples = mlp_file
    domain = Domain.box((4,), 0.0, 1.0)
    cex = tmp_path / "cex.npz"
    plain = check(path, _spec(), samples, domain, progress=False)
    full = check(path, _spec(complete={"timeout_s": 10.0}), samples, domain, progress=False, counterexamples=cex)
    attempted = 0
    for k, (before, after) in enumerate(zip(plain.results, full.results, strict=True)):
        c = after.complete
        assert c is not None and before.complete is None
        assert c.attempted == before.counts.unknown and c.incomplete_certified_accuracy == before.certified_accuracy
        assert after.counts.unknown == 0 and c.undecided == 0 and c.exact_accuracy == after.certified_accuracy
        assert sum(c.stop_reasons.values()) == c.attempted == c.verified + c.falsified
        assert after.counts.verified == before.counts.verified + c.verified
        assert after.counts.falsified == before.counts.falsified + c.falsified
        assert before.certified_accuracy <= after.certified_accuracy == after.pgd_accuracy <= before.pgd_accuracy
        rows = [row.complete[k] if row.complete else None for row in full.samples]
        assert sum(r is not None for r in rows) == c.attempted
        attempted += c.attempted
    assert attempted > 0  # the weak attack leaves unknowns for branch and bound
    with np.load(cex) as found:  # PGD's and BaB's counterexamples, every one real for onnxruntime
        assert len(found["ids"]) == sum(r.counts.falsified for r in full.results)
        assert np.all(Referee(path).logits(found["x_adv"]).argmax(1) != found["y"])
    table = render_table(full)
    assert "exact" in table and "branch and bound at epsilon 0.15 (input splitting" in table
    assert "exact" not in render_table(plain) and "branch and bound" not in render_table(plain)
    # without complete nothing new is written: the report and the spec's hash are as before
    save_report(plain, tmp_path / "plain.json")
    assert '"complete"' not in (tmp_path / "plain.json").read_text()
    assert plain.spec["verify"] == {"method": "CROWN", "batch_size": 16}
    save_report(full, tmp_path / "full.json")
    assert load_report(tmp_path / "full.json") == full


def test_fallbacks_say_why_and_keep_the_incomplete_verdicts(mlp_file: tuple[Path, Samples], tmp_path: Path) -> None:
    path, samples = mlp_file
    spec = validate_spec(
        tiny_spec_dict(
            property={"norm": "2", "epsilon": [0.3]},
            verify={"complete": {"mode": "input"}},
            attack={"steps": 5, "restarts": 1},
        )
    )
    report = check(path, spec, samples, None, progress=False)
    c = report.results[0].complete
    assert c is not None and c.skipped is not None and "norm inf" in c.skipped and c.mode == "skipped"
    assert "not run (input splitting needs a box" in render_table(report)
    member = tmp_path / "member.onnx"
    member.write_bytes(path.read_bytes())
    vote = write_vote_manifest(tmp_path / "vote.json", [member])
    voted = check(vote, _spec(complete={}), samples, Domain.box((4,), 0.0, 1.0), progress=False)
    assert all(r.complete is not None and "majority vote" in (r.complete.skipped or "") for r in voted.results)


def test_cli_complete_and_its_bad_input(mlp_file: tuple[Path, Samples], tmp_path: Path, write_spec) -> None:
    path, samples = mlp_file
    npz = tmp_path / "s.npz"
    np.savez(npz, x=samples.x, y=samples.y)
    base = ["check", "--model", str(path), "--samples", str(npz), "--epsilon", "0.15", "--quiet"]
    runner = CliRunner()
    ok = runner.invoke(cli, [*base, "--complete", "--timeout", "5", "--out", str(tmp_path / "r.json")])
    assert ok.exit_code == 0, ok.output
    assert "BaB verified" in ok.output and "branch and bound at epsilon 0.15" in ok.output
    assert json.loads((tmp_path / "r.json").read_text())["spec"]["verify"]["complete"]["timeout_s"] == 5.0
    for args, needle in (
        (["--complete", "--timeout", "0"], "--timeout must be a positive number of seconds"),
        (["--timeout", "3"], "give --complete too"),
    ):
        bad = runner.invoke(cli, [*base, *args])
        assert bad.exit_code == 2 and needle in bad.output and len(bad.output.strip().splitlines()) == 1, bad.output
    spec = write_spec(tiny_spec_dict(verify={"complete": {"timeout_s": -1}}))
    bad = runner.invoke(cli, ["check", "--spec", str(spec), "--model", str(path), "--samples", str(npz), "--quiet"])
    assert bad.exit_code == 2 and "verify.complete.timeout_s" in bad.output, bad.output
    with pytest.raises(Exception) as excinfo:
        validate_spec(tiny_spec_dict(verify={"complete": {"timeout": 5}}))
    assert_one_line_error(excinfo, "verify.complete.timeout", "did you mean 'timeout_s'")
