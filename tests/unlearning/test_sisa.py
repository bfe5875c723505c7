from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from uverify.datasets import load
from uverify.errors import UverifyError
from uverify.models.referee import Referee
from uverify.models.vote import read_vote_manifest, vote_counts
from uverify.pipeline import train_run, unlearn_run
from uverify.specs.load import validate_spec
from uverify.specs.schema import Spec
from uverify.unlearning.sisa import Manifest, Sisa, SisaEnsemble, slice_epochs
from uverify.verifier.check import check
from uverify.verifier.counterexamples import lp_distance
from uverify.verifier.samples import samples_from_spec
from uverify.verifier.vote import vote_margin

from helpers import tiny_spec_dict


def _spec(shards: int = 3, slices: int = 3, aggregation: str = "mean_logits", **train: object) -> Spec:
    raw = tiny_spec_dict(
        unlearning={"method": "sisa", "sisa": {"shards": shards, "slices": slices, "aggregation": aggregation}}
    )
    raw["train"].update(train)
    return validate_spec(raw)


def test_manifest_puts_every_id_in_one_shard_and_slice_deterministically() -> None:
    ids = np.arange(100, 203, dtype=np.int64)
    a = Manifest.build(ids, 4, 3, seed=0)
    assert sorted(a.ids) == list(ids)
    sizes = [int(((a.shard == k) & (a.slice == r)).sum()) for k in range(4) for r in range(3)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(ids)
    b = Manifest.build(ids, 4, 3, seed=0)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.shard, b.shard)
    assert not np.array_equal(a.ids, Manifest.build(ids, 4, 3, seed=1).ids)
    shard, slice_ = a.locate(a.ids[[5, 50]])
    assert list(shard) == list(a.shard[[5, 50]]) and list(slice_) == list(a.slice[[5, 50]])
    members = a.members(1, 1, exclude=a.ids[:3])
    assert set(members) == set(a.ids[(a.shard == 1) & (a.slice <= 1)])
    with pytest.raises(UverifyError, match="need at least 12 training samples; the training set has 10"):
        Manifest.build(np.arange(10), 4, 3, seed=0)


def test_slice_epoch_budget_matches_an_unsliced_shard() -> None:
    # sum over slice steps r of (r / R) * epochs_per_step = E: the schedule costs E epochs over the shard
    for epochs, slices in [(20, 1), (20, 4), (20, 3), (10, 9), (7, 2)]:
        per_step = slice_epochs(epochs, slices)
        cost = sum(r / slices * per_step for r in range(1, slices + 1))
        assert abs(cost - epochs) <= 0.5 * (slices + 1) / 2, (epochs, slices, cost)  # rounding only
    assert slice_epochs(20, 4) == 8 and slice_epochs(20, 1) == 20
    assert slice_epochs(1, 4) == 1  # never less than one epoch a step


def _weights(model: SisaEnsemble) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("adversarial", [False, True], ids=["standard", "adversarial"])
def test_deletion_equals_sisa_trained_from_scratch_without_the_ids(tmp_path: Path, adversarial: bool) -> None:
    spec = _spec(epochs=3) if not adversarial else _spec(epochs=2, adversarial={"epsilon": 0.05, "steps": 2})
    train = load(spec.data).train
    adv = spec.adversarial_or_default() if adversarial else None
    sisa = Sisa(spec, train, adv)
    run = tmp_path / "run"
    sisa.fit(run, progress=False)
    manifest = sisa.manifest(run)
    # ids in two shards, one of them in its last slice only
    pick = [np.flatnonzero((manifest.shard == 0) & (manifest.slice == 2))[0]]
    pick += list(np.flatnonzero((manifest.shard == 2) & (manifest.slice == 1))[:2])
    deleted = np.sort(manifest.ids[pick])
    unlearned, touched = sisa.unlearn(run, deleted, deleted, progress=False)
    assert [(t["shard"], t["from_slice"]) for t in touched] == [(0, 3), (2, 2)]
    scratch, _ = Sisa(spec, train, adv).fit(tmp_path / "scratch", manifest=manifest, exclude=deleted, progress=False)
    for a, b in zip(_weights(unlearned), _weights(scratch), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), float((a - b).abs().max())
    full, _ = Sisa(spec, train, adv).fit(tmp_path / "full", manifest=manifest, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(_weights(unlearned), _weights(full), strict=True))


def test_deletion_touches_only_the_shards_and_slices_that_held_the_ids(tmp_path: Path) -> None:
    spec = _spec()
    train = load(spec.data).train
    sisa = Sisa(spec, train, None)
    run = tmp_path / "run"
    sisa.fit(run, progress=False)
    manifest = sisa.manifest(run)
    target = manifest.ids[np.flatnonzero((manifest.shard == 1) & (manifest.slice == 1))[0]]
    before = {p: p.read_bytes() for p in sorted((run / "sisa").rglob("*.pt"))}
    _, touched = sisa.unlearn(run, np.array([target]), np.array([target]), progress=False)
    assert touched[0]["shard"] == 1 and touched[0]["slices_retrained"] == 2
    changed = {str(p.relative_to(run / "sisa")) for p, data in before.items() if p.read_bytes() != data}
    assert changed == {"shard_001/slice_002.pt", "shard_001/slice_003.pt"}


def test_a_deletion_that_empties_a_shard_is_refused(tmp_path: Path) -> None:
    spec = _spec()
    train = load(spec.data).train
    sisa = Sisa(spec, train, None)
    sisa.fit(tmp_path, progress=False)
    manifest = sisa.manifest(tmp_path)
    whole = manifest.ids[manifest.shard == 2]
    with pytest.raises(UverifyError, match="leaves SISA shard 2 without training data"):
        sisa.unlearn(tmp_path, whole, whole, progress=False)


def test_aggregations_combine_the_members_as_documented() -> None:
    torch.manual_seed(0)
    members = [torch.nn.Linear(4, 3) for _ in range(3)]
    x = torch.randn(50, 4)
    logits = torch.stack([m(x) for m in members])
    with torch.no_grad():
        assert torch.allclose(SisaEnsemble(members, "mean_logits")(x), logits.mean(0), atol=1e-6)
        assert torch.allclose(SisaEnsemble(members, "mean_softmax")(x), logits.softmax(2).mean(0), atol=1e-6)
        votes = SisaEnsemble(members, "majority_vote")(x)
    expected = vote_counts([m.numpy() for m in logits.detach()])
    assert np.array_equal(votes.numpy(), expected) and (votes.sum(1) == 3).all()


def test_vote_ties_go_to_the_lowest_class_and_a_strict_majority_certifies() -> None:
    counts = vote_counts([np.array([[0.0, 1.0, 0.0]]), np.array([[0.0, 0.0, 1.0]])])
    assert counts.tolist() == [[0.0, 1.0, 1.0]] and counts.argmax(1)[0] == 1
    # 4 members: 2 certified is a tie, not a majority; 3 is
    assert vote_margin(np.array([[0.5], [0.2], [-0.1], [-0.3]]))[0] == pytest.approx(-0.1)
    assert vote_margin(np.array([[0.5], [0.2], [0.1], [-0.3]]))[0] == pytest.approx(0.1)
    assert vote_margin(np.array([[0.5], [-0.2], [0.1]]))[0] == pytest.approx(0.1)


@pytest.mark.parametrize("aggregation", ["mean_logits", "mean_softmax", "majority_vote"])
def test_ensembles_export_and_check_soundly(tmp_path: Path, aggregation: str) -> None:
    """One ONNX graph (mean_logits, mean_softmax) or a vote of per-shard files (majority_vote): onnxruntime
    agrees with torch, CROWN bounds the whole ensemble, and no certified sample is falsified (cross-check)."""
    spec = _spec(aggregation=aggregation)
    result = train_run(spec, tmp_path / "run", adversarial=False, progress=False)
    splits = load(spec.data)
    model = Sisa(spec, splits.train, None).load(tmp_path / "run")
    if aggregation == "majority_vote":
        assert result.model_path.name == "vote.json"
        _, files = read_vote_manifest(result.model_path)
        assert len(files) == 3
        ort_out = vote_counts([Referee(f).logits(splits.test.X) for f in files])
    else:
        assert result.model_path.name == "model.onnx"
        ort_out = Referee(result.model_path).logits(splits.test.X)
    with torch.no_grad():
        torch_out = model(torch.from_numpy(splits.test.X)).numpy()
    assert np.abs(ort_out - torch_out).max() <= 1e-5
    samples, domain = samples_from_spec(spec)
    report = check(result.model_path, spec, samples, domain, progress=False, cross_check=True)
    by_eps = {r.epsilon: r for r in report.results}
    assert by_eps[0.02].certified_accuracy > 0.5
    for r in report.results:
        assert r.certified_accuracy <= r.pgd_accuracy <= r.clean_accuracy

    # sampled points in the ball around every certified sample keep the (onnxruntime) prediction
    rng = np.random.default_rng(0)
    eps = 0.05
    k = report.results.index(by_eps[eps])
    certified = [i for i, row in enumerate(report.samples) if row.verdicts[k] == "verified"]
    assert certified
    x = samples.x[certified]
    noise = rng.uniform(-1, 1, (len(x), 400, x.shape[1])).astype(np.float32)
    noise[:, :64] = np.sign(noise[:, :64])  # box corners too
    points = np.clip(x[:, None] + 0.999 * eps * noise, domain.lower, domain.upper).reshape(-1, x.shape[1])
    assert (lp_distance(np.repeat(x, 400, axis=0), points, "inf") < eps).all()
    if aggregation == "majority_vote":
        predicted = vote_counts([Referee(f).logits(points) for f in files]).argmax(1)
    else:
        predicted = Referee(result.model_path).logits(points).argmax(1)
    labels = np.array([report.samples[i].label for i in certified])
    assert (predicted.reshape(len(x), 400) == labels[:, None]).all()


def test_check_refuses_a_vote_whose_member_changed(tmp_path: Path) -> None:
    spec = _spec(aggregation="majority_vote")
    result = train_run(spec, tmp_path / "run", adversarial=False, progress=False)
    member = tmp_path / "run" / "shards" / "shard_001.onnx"
    shutil.copy(tmp_path / "run" / "shards" / "shard_000.onnx", member)
    samples, domain = samples_from_spec(spec)
    from uverify.errors import ModelError

    with pytest.raises(ModelError, match=r"shard_001\.onnx changed since the manifest was written"):
        check(result.model_path, spec, samples, domain, progress=False)
    member.unlink()
    with pytest.raises(ModelError, match=r"member shards/shard_001\.onnx is missing"):
        check(result.model_path, spec, samples, domain, progress=False)


def test_majority_vote_run_unlearns_and_rewrites_its_members(tmp_path: Path) -> None:
    spec = _spec(aggregation="majority_vote")
    run = tmp_path / "run"
    train_run(spec, run, adversarial=False, progress=False)
    before = {p.name: p.read_bytes() for p in (run / "shards").iterdir()}
    manifest = Manifest.load(run / "sisa" / "manifest.npz")
    target = manifest.ids[manifest.shard == 2][:1]
    result = unlearn_run(run, ids=target, progress=False)
    assert result.model_path == run / "vote.json"
    after = {p.name: p.read_bytes() for p in (run / "shards").iterdir()}
    assert [name for name in sorted(before) if before[name] != after[name]] == ["shard_002.onnx"]
    read_vote_manifest(run / "vote.json")  # hashes match the rewritten members


def test_damaged_checkpoints_and_foreign_vote_members_are_one_line_errors(tmp_path: Path) -> None:
    import json

    from uverify.errors import ModelError

    spec = _spec(aggregation="majority_vote")
    train_run(spec, tmp_path / "run", adversarial=False, progress=False)
    manifest = Manifest.load(tmp_path / "run" / "sisa" / "manifest.npz")
    (tmp_path / "run" / "sisa" / "shard_000" / "slice_002.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UverifyError, match=r"SISA checkpoint .*slice_002\.pt: not readable"):
        unlearn_run(tmp_path / "run", ids=manifest.ids[(manifest.shard == 0) & (manifest.slice == 2)][:1])
    vote = json.loads((tmp_path / "run" / "vote.json").read_text())
    vote["members"][0]["path"] = str((tmp_path / "run" / "shards" / "shard_000.onnx").resolve())
    (tmp_path / "run" / "vote.json").write_text(json.dumps(vote))
    with pytest.raises(ModelError, match="must be a path inside the manifest's folder"):
        read_vote_manifest(tmp_path / "run" / "vote.json")
