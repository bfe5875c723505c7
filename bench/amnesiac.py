"""Benchmark of Amnesiac unlearning on the mixture spec (or loan), every figure measured side by side in one run.

1. Storage: bytes the update store costs per epoch of training, float32 and float16, and the cost of
   recording (training with the store written against the same training without it).
2. Speed-up: one deletion request (subtract the batches that held the ids, then 0 or 1 repair epochs)
   against retraining from scratch without the ids, the gold standard. Target >= 100x. Both times are
   the method alone (store checks, subtraction, repair, weights written): the ONNX export that
   `uverify unlearn` adds is the same ~1 s for either and is left out.
3. Quality per deletion fraction (0.1%, 1%, 5%): the share of recorded batches touched, test accuracy of
   M, M' and the retrained model, and the membership-inference AUC of the forgotten samples against
   the test set (loss threshold; the retrained model's AUC is what forgetting looks like).

Run: `make bench-amnesiac` or `.venv/bin/python bench/amnesiac.py [--dataset loan] [--training standard]`
(a few minutes on 2 cores; loan reads a generated Lending Club file of the real format).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from uverify.datasets import Dataset, Splits, load
from uverify.rundir import DeleteRequest
from uverify.specs.load import load_spec
from uverify.specs.schema import AdversarialSpec, Spec
from uverify.testing.loan import write_loan_csv
from uverify.unlearning.amnesiac import AMNESIAC_DIR, UPDATES_FILE, Amnesiac
from uverify.unlearning.metrics import accuracy_on, membership_auc
from uverify.unlearning.retrain import retrain, trainer_for

FRACTIONS = (0.001, 0.01, 0.05)


DATA: dict[str, object] = {}  # the data set's overrides: empty for mixture, the generated file for loan


def spec_for(repair_epochs: int = 0, dtype: str = "float32") -> Spec:
    return load_spec(
        str(DATA.get("name", "mixture")),
        {
            **{k: v for k, v in DATA.items() if k != "name"},
            "unlearning.method": "amnesiac",
            "unlearning.amnesiac.repair_epochs": repair_epochs,
            "unlearning.amnesiac.dtype": dtype,
        },
    )


def unlearn_timed(
    store: Path, scratch: Path, method: Amnesiac, ids: np.ndarray, repeats: int
) -> tuple[float, nn.Module, dict]:
    """Median seconds of `repeats` unlearnings, each on a fresh copy of the trained run."""
    times, model, touched = [], None, {}
    for i in range(repeats):
        copy = scratch / f"copy-{i}"
        shutil.copytree(store, copy)
        started = time.perf_counter()
        model, rows = method.unlearn(copy, ids, ids, progress=False)
        times.append(time.perf_counter() - started)
        touched = rows[0]
        shutil.rmtree(copy)
    assert model is not None
    return statistics.median(times), model, touched


def bench(training: str, splits: Splits, repeats: int, workdir: Path) -> None:
    train, test = splits.train, splits.test
    spec = spec_for()
    adversarial: AdversarialSpec | None = spec.adversarial_or_default() if training == "adversarial" else None
    epochs = spec.train.epochs
    adv = f" (PGD eps {adversarial.epsilon}, {adversarial.steps} steps)" if adversarial else ""
    print(f"\n=== {training} training{adv}: {epochs} epochs, batches of {spec.train.batch_size}")

    # 1. storage, and what recording costs (after a warm-up epoch, so that no side pays the first-call costs)
    trainer_for(spec, train, adversarial).fit(train, 1, progress=False)
    stores, fit_s = {}, {}
    for dtype in ("float32", "float16"):
        stores[dtype] = workdir / f"{training}-{dtype}"
        started = time.perf_counter()
        model, _ = Amnesiac(spec_for(dtype=dtype), train, adversarial).fit(stores[dtype], progress=False)
        fit_s[dtype] = time.perf_counter() - started
    started = time.perf_counter()
    plain = retrain(spec, train, adversarial, np.zeros(0, np.int64), progress=False)
    plain_s = time.perf_counter() - started
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values(), strict=True))
    n_params = sum(p.numel() for p in model.parameters())
    method = Amnesiac(spec, train, adversarial)
    print(
        f"\n1. Storage ({n_params} parameters = {4 * n_params / 1024:.1f} KiB per float32 model, "
        f"{method.per_epoch} batches per epoch)"
    )
    print(f"{'dtype':8} {'bytes/epoch':>12} {'x model':>8} {'store MiB':>10} {'train s':>8} {'vs plain':>9}")
    for dtype, folder in stores.items():
        updates = (folder / AMNESIAC_DIR / UPDATES_FILE).stat().st_size
        total = method.storage_bytes(folder)
        per_epoch = updates / epochs
        print(
            f"{dtype:8} {per_epoch:12,.0f} {per_epoch / (4 * n_params):8.1f} {total / 2**20:10.2f} "
            f"{fit_s[dtype]:8.2f} {fit_s[dtype] / plain_s:9.2f}"
        )
    print(f"plain training (no store) {plain_s:.2f} s; recorded M == plain M bit for bit: {same}")

    # 2 and 3: per deletion fraction, retraining and unlearning side by side
    before = method.load(stores["float32"])
    methods = {r: Amnesiac(spec_for(repair_epochs=r), train, adversarial) for r in (0, 1)}
    rows = []
    for fraction in FRACTIONS:
        ids = DeleteRequest.build(fraction=fraction, seed=0).resolve(train.ids, "the bench's training set")
        started = time.perf_counter()
        retrained = retrain(spec, train, adversarial, ids, progress=False)
        retrain_s = time.perf_counter() - started
        results = {r: unlearn_timed(stores["float32"], workdir, m, ids, repeats) for r, m in methods.items()}
        rows.append((fraction, ids, retrain_s, retrained, results))

    print(f"\n2. Unlearning vs retraining from scratch (unlearning: median of {repeats}; target >= 100x)")
    print(
        f"{'fraction':>8} {'ids':>5} {'batches':>8} {'MiB read':>9} {'retrain s':>10} "
        f"{'r0 s':>8} {'speed-up':>9} {'r1 s':>8} {'speed-up':>9}"
    )
    for fraction, ids, retrain_s, _, results in rows:
        (t0, _, touched), (t1, _, _) = results[0], results[1]
        print(
            f"{fraction:8.1%} {len(ids):5d} {touched['fraction_of_batches']:8.1%} {touched['bytes_read'] / 2**20:9.2f} "
            f"{retrain_s:10.2f} {t0:8.3f} {retrain_s / t0:8.0f}x {t1:8.3f} {retrain_s / t1:8.1f}x"
        )

    print("\n3. Test accuracy and membership-inference AUC (forgotten vs test) of M, M' (repair 0 / 1), retrained")
    print(
        f"{'fraction':>8} {'acc M':>7} {'M r0':>7} {'M r1':>7} {'retrain':>7} {'drop r1':>8}   "
        f"{'AUC M':>6} {'M r0':>6} {'M r1':>6} {'retrain':>7}"
    )
    for fraction, ids, _, retrained, results in rows:
        forgotten = train.subset(np.isin(train.ids, ids))
        models = {"M": before, "r0": results[0][1], "r1": results[1][1], "retrained": retrained}
        acc = {k: accuracy(m, test) for k, m in models.items()}
        auc = {k: membership_auc(m, forgotten, test) or float("nan") for k, m in models.items()}
        print(
            f"{fraction:8.1%} {acc['M']:7.4f} {acc['r0']:7.4f} {acc['r1']:7.4f} {acc['retrained']:7.4f} "
            f"{acc['M'] - acc['r1']:8.4f}   {auc['M']:6.3f} {auc['r0']:6.3f} {auc['r1']:6.3f} {auc['retrained']:7.3f}"
        )


def accuracy(model: nn.Module, data: Dataset) -> float:
    value = accuracy_on(model, data)
    return float("nan") if value is None else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--training", nargs="+", choices=["standard", "adversarial"], default=["standard", "adversarial"]
    )
    parser.add_argument("--repeats", type=int, default=3, help="unlearning runs per request (median)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: small models gain nothing from more, and timings stay stable)",
    )
    parser.add_argument("--dataset", choices=["mixture", "loan"], default="mixture")
    parser.add_argument("--loan-rows", type=int, default=30_000, help="rows of the generated Lending Club file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.dataset == "loan":  # a generated file in the real 151-column format
            csv = Path(tmp) / "accepted_2007_to_2018Q4.csv"
            write_loan_csv(csv, args.loan_rows, seed=0)
            DATA.update({"name": "loan", "data.path": str(csv), "data.subsample": None})
        run(args, Path(tmp))


def run(args: argparse.Namespace, workdir: Path) -> None:
    spec = spec_for()
    splits = load(spec.data)
    print(
        f"Amnesiac on {spec.name}: {len(splits.train)} train / {len(splits.test)} test samples, "
        f"{spec.model.arch} {spec.model.model_dump().get('hidden')}, torch threads {torch.get_num_threads()}"
    )
    for training in args.training:
        bench(training, splits, args.repeats, workdir)


if __name__ == "__main__":
    main()
