"""Benchmark of the verifier's two halves, every figure a ratio measured side by side in one run.

1. Bounds overhead: CROWN through `uverify check`'s code path (ONNX file -> our importer ->
   `Bounder.margins`) against auto_LiRPA called directly on the original torch model, same samples,
   same epsilon, same specification matrix; the bounds must agree. Target ratio <= 1.10.
2. Throughput: samples per second of IBP, CROWN and alpha-CROWN (and alpha-CROWN as auto_LiRPA runs it
   with our options, every neuron re-bounded each iteration: the same margins) on the default mlp (mixture) and cnn
   (digits), relative to IBP.
3. PGD: ours (margin loss, restarts, early stop) against a plain torch PGD loop (Madry: CE, random
   start, last iterate) and torchattacks' PGD / PGDL2 on the same model, samples and budget: time per
   sample and attack success (ours must succeed at least as often).

Run: `make bench` (installs the benchmark-only torchattacks) or `.venv/bin/python bench/verify.py`.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from uverify.attacks import margin_loss, pgd_for
from uverify.datasets import Dataset, load
from uverify.models import build_model, export_onnx
from uverify.specs.load import load_spec
from uverify.unlearning.train import Trainer
from uverify.verifier import lirpa_compat
from uverify.verifier.bounds import Bounder, spec_matrix, verified
from uverify.verifier.onnx_import import import_onnx


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def prepare(name: str, epochs: int, workdir: Path) -> tuple[nn.Module, nn.Module, Dataset, float]:
    spec = load_spec(name)
    splits = load(spec.data)
    model = build_model(spec.model, splits.train.input_shape, splits.train.num_classes, seed=0)
    Trainer(model, spec.train).fit(splits.train, epochs, progress=False)
    path = workdir / f"{name}.onnx"
    export_onnx(model, path, splits.train.X[:64])
    imported = import_onnx(path, samples=splits.test.X[:32]).module
    return model.eval(), imported, splits.test, spec.property.epsilon[0]


def bound_batches(
    bound: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, batch: int
) -> torch.Tensor:
    return torch.cat([bound(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)])


def bench_bounds(models: dict, n: int, batch: int, repeats: int) -> None:
    lirpa = lirpa_compat.import_auto_lirpa()
    print(
        f"\n1. CROWN bounds overhead ({8 * n} mlp / {n} cnn samples, batches of {batch}, "
        f"median of {repeats}; target <= 1.10)"
    )
    print(f"{'model':6} {'direct s':>9} {'uverify s':>10} {'ratio':>6} {'max |diff|':>11}")
    for name, (torch_model, imported, test, eps) in models.items():
        count = n * 8 if name == "mlp" else n  # an mlp batch takes ~1 ms: more of them, for a stable ratio
        x, y = torch.from_numpy(test.X[:count]), torch.from_numpy(test.y[:count])
        lo, hi = torch.from_numpy(test.domain.lower), torch.from_numpy(test.domain.upper)
        classes = test.num_classes
        ours = Bounder(imported, test.input_shape, "CROWN", num_classes=classes)
        with lirpa_compat.quiet():
            direct_modules = {
                b: lirpa.BoundedModule(
                    torch_model, torch.zeros(b, *test.input_shape), bound_opts=dict(lirpa_compat.WORKAROUND_BOUND_OPTS)
                )
                for b in {batch, len(x) % batch} - {0}
            }

        def direct(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            ptb = lirpa.PerturbationLpNorm(
                norm=float("inf"), eps=eps, x_L=torch.maximum(xb - eps, lo), x_U=torch.minimum(xb + eps, hi)
            )
            with lirpa_compat.quiet(), torch.no_grad():
                lb, _ = direct_modules[len(xb)].compute_bounds(
                    x=(lirpa.BoundedTensor(xb, ptb),), C=spec_matrix(yb, classes), method="backward", bound_upper=False
                )
            return lb

        def uverify(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            return ours.margins(xb, yb, eps, "inf", lo, hi)

        bound_batches(direct, x, y, batch), bound_batches(uverify, x, y, batch)  # warm both up
        t_direct, t_ours = [], []
        for _ in range(repeats):  # interleaved, so drift on a noisy machine hits both alike
            t, lb_direct = timed(lambda: bound_batches(direct, x, y, batch), 1)
            t_direct.append(t)
            t, lb_ours = timed(lambda: bound_batches(uverify, x, y, batch), 1)
            t_ours.append(t)
        d, o = statistics.median(t_direct), statistics.median(t_ours)
        diff = float((lb_direct - lb_ours).abs().max())  # type: ignore[operator]
        print(f"{name:6} {d:9.3f} {o:10.3f} {o / d:6.2f} {diff:11.2e}")


def bench_methods(models: dict, n: int, batch: int) -> None:
    print(f"\n2. Bound throughput ({n} samples, batches of {batch}; L_inf at the spec's first epsilon)")
    print(f"{'model':6} {'method':22} {'samples/s':>10} {'vs IBP':>7} {'cert.@8':>10} {'max |diff|':>11}")
    for name, (_, imported, test, eps) in models.items():
        lo, hi = torch.from_numpy(test.domain.lower), torch.from_numpy(test.domain.upper)
        base = None
        previous: torch.Tensor | None = None
        # "alpha-CROWN dense" is auto_LiRPA's own rule with uverify's options (every neuron of every layer
        # re-bounded at each iteration), what alpha-CROWN ran before lirpa_compat let it bound only the
        # unstable ones: the same margins (max |diff| against the row above), side by side in one run
        for method in ("IBP", "CROWN", "alpha-CROWN", "alpha-CROWN dense"):
            # alpha-CROWN optimises for seconds per sample on the cnn: a smaller sample
            m = n if not method.startswith("alpha") else min(n, 32 if name == "mlp" else 16)
            x, y = torch.from_numpy(test.X[:m]), torch.from_numpy(test.y[:m])
            bounder = Bounder(imported, test.input_shape, method.split()[0], num_classes=test.num_classes)
            if method.endswith("dense"):
                for size in {min(batch, m), m % batch} - {0}:
                    bounded, _ = bounder._bounded(size)
                    bounded.__dict__.pop("check_optimized_variable_sparsity", None)
            bound = lambda xb, yb: bounder.margins(xb, yb, eps, "inf", lo, hi)  # noqa: E731
            bound_batches(bound, x[:batch], y[:batch], batch)  # warm-up
            t, lb = timed(lambda: bound_batches(bound, x, y, batch), 1)
            rate = m / t
            base = base or rate
            certified = float(verified(lb[:8]).float().mean())  # type: ignore[index]
            diff = ""
            if method.endswith("dense") and previous is not None:
                diff = f"{float((lb - previous).abs().max()):11.2e}"  # type: ignore[operator]
            previous = lb  # type: ignore[assignment]
            print(f"{name:6} {method:22} {rate:10.1f} {rate / base:7.2f} {certified:10.3f} {diff}")


def plain_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, gen: torch.Generator
) -> torch.Tensor:
    """The textbook Madry loop: CE loss, random start, sign steps of 2.5 eps/steps, last iterate."""
    alpha = 2.5 * eps / steps
    x_adv = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = (x + (x_adv.detach() + alpha * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv.detach()


def bench_pgd(models: dict, n: int, steps: int, restarts: int, repeats: int) -> None:
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
        print("\n(torchattacks not installed: `make bench` installs it; its rows are skipped)")
    print(f"\n3. PGD on {n} samples, {steps} steps (ours: margin loss, early stop; success = misclassified)")
    print(f"{'model':6} {'norm':4} {'eps':>6} {'attack':24} {'ms/sample':>10} {'success':>8} {'vs t.a.':>8}")
    for name, (torch_model, _, test, eps_inf) in models.items():
        x, y = torch.from_numpy(test.X[:n]), torch.from_numpy(test.y[:n])
        lo, hi = torch.zeros(1, *test.input_shape), torch.ones(1, *test.input_shape)
        with torch.no_grad():
            keep = torch_model(x).argmax(1) == y
        x, y = x[keep], y[keep]
        for norm, eps in (("inf", eps_inf * 4), ("2", eps_inf * 4 * np.sqrt(x[0].numel()) / 2)):

            def ours(r: int, norm: str = norm, eps: float = eps, x: Tensor = x, y: Tensor = y) -> Tensor:
                return (
                    pgd_for(norm, steps=steps, restarts=r)
                    .run(torch_model, x, y, eps, lo, hi, torch.Generator().manual_seed(0))
                    .x_adv
                )

            runs: dict[str, Callable[[], torch.Tensor]] = {
                f"uverify PGD x{r} restarts": functools.partial(ours, r) for r in sorted({1, restarts})
            }
            if norm == "inf":
                runs["plain torch loop"] = lambda: plain_pgd(
                    torch_model, x, y, eps, steps, torch.Generator().manual_seed(0)
                )
            if torchattacks is not None:
                if norm == "inf":
                    atk = torchattacks.PGD(
                        torch_model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True
                    )
                else:
                    # PGDL2 normalises gradients as image batches (N, C, H, W): give it flat data as N x 1 x 1 x d
                    as_image = nn.Sequential(nn.Flatten(), torch_model) if x.dim() != 4 else torch_model
                    atk = torchattacks.PGDL2(as_image, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
                image_x = x if x.dim() == 4 else x.reshape(len(x), 1, 1, -1)
                runs[f"torchattacks {type(atk).__name__}"] = functools.partial(
                    lambda a, xi, yy, shape: a(xi, yy).reshape(shape), atk, image_x, y, x.shape
                )
            # interleaved repeats (each round runs every attack once), medians: the machine's load then
            # weighs on all attacks alike, and the ratio to torchattacks is measured side by side
            times: dict[str, list[float]] = {label: [] for label in runs}
            found: dict[str, torch.Tensor] = {}
            for _ in range(repeats):
                for label, run in runs.items():
                    torch.manual_seed(0)
                    t, x_adv = timed(run, 1)
                    times[label].append(t)
                    found[label] = x_adv  # type: ignore[assignment]
            reference = next((statistics.median(times[k]) for k in times if k.startswith("torchattacks")), None)
            for label in runs:
                t = statistics.median(times[label])
                with torch.no_grad():
                    success = float((margin_loss(torch_model(found[label]), y) > 0).float().mean())
                ratio = f"{t / reference:8.2f}" if reference else f"{'':8}"
                print(f"{name:6} {norm:4} {eps:6.3f} {label:24} {1000 * t / len(x):10.3f} {success:8.3f} {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5, help="quick training of the benchmark models")
    parser.add_argument("--only", choices=["bounds", "methods", "pgd"], help="run one section")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        models = {name: prepare(spec, args.epochs, Path(tmp)) for name, spec in (("mlp", "mixture"), ("cnn", "digits"))}
        print(
            f"models: mlp on mixture, cnn on digits, {args.epochs} epochs each; torch threads {torch.get_num_threads()}"
        )
        if args.only in (None, "bounds"):
            bench_bounds(models, args.samples, args.batch, args.repeats)
        if args.only in (None, "methods"):
            bench_methods(models, args.samples, args.batch)
        if args.only in (None, "pgd"):
            bench_pgd(models, args.samples, steps=50, restarts=3, repeats=args.repeats)


if __name__ == "__main__":
    main()
