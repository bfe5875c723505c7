"""The seed's finding on the default spec, for several seeds: is it the data set or the draw?

For each seed (every seed of the spec at once: the mixture's generation and split, initialisation and
shuffling, the deletion request and the attack's starts), the whole `uverify demo` study runs: SISA and
Amnesiac, standard and adversarial training, checked before and after the deletion. It prints, per
method and moment, the clean accuracies and PGD Gaps of the standard and the adversarial model at the
headline sigma and their ratio, and whether the seed's finding holds: standard Gap >= 3x adversarial
Gap, adversarial clean accuracy within 5 points of standard. Exit status 1 when it fails anywhere.

Run: `.venv/bin/python bench/demo_pattern.py [--seeds 0 1 2] [--spec mixture] [--out DIR]`
(about a minute per seed on 2 cores).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

from uverify.specs.load import load_spec
from uverify.specs.schema import Spec
from uverify.study import PATTERN_ACCURACY, PATTERN_RATIO, PatternCheck, study

SEEDS = ("data.seed", "train.seed", "unlearning.delete.seed", "attack.seed")


def seeded(ref: str, seed: int) -> Spec:
    return load_spec(ref, {key: seed for key in SEEDS})


def _pct(value: float) -> str:
    return f"{100 * value:6.2f}%"


def _row(seed: int, p: PatternCheck) -> str:
    ratio = "    inf" if math.isinf(p.ratio) else "    n/a" if math.isnan(p.ratio) else f"{p.ratio:6.1f}x"
    return (
        f"{seed:>4} {p.method.display_name:>9} {p.when:>7} {_pct(p.acc_standard)} {_pct(p.acc_adversarial)} "
        f"{_pct(p.gap_standard)} {_pct(p.gap_adversarial)} {ratio} {'yes' if p.holds else 'NO':>6}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--spec", default="mixture", help="a shipped spec or a YAML file (default: mixture)")
    parser.add_argument("--out", type=Path, help="keep the studies here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        first = seeded(args.spec, args.seeds[0])
        print(
            f"{first.name}: headline σ {first.headline_epsilon():g}; finding: standard Gap >= {PATTERN_RATIO:g}x "
            f"adversarial Gap (PGD), clean accuracies within {100 * PATTERN_ACCURACY:g} points; seeds set: "
            f"{', '.join(SEEDS)}"
        )
        print(
            f"{'seed':>4} {'method':>9} {'when':>7} {'ACC st':>7} {'ACC at':>7} {'Gap st':>7} {'Gap at':>7} "
            f"{'ratio':>7} {'holds':>6}"
        )
        failed, times = 0, []
        for seed in args.seeds:
            started = time.perf_counter()
            result = study(seeded(args.spec, seed), out / f"seed{seed}", progress=False, echo=lambda _: None)
            times.append(time.perf_counter() - started)
            for check in result.pattern:
                print(_row(seed, check))
                failed += not check.holds
        print(f"study wall time per seed: {', '.join(f'{t:.1f} s' for t in times)}")
        print("the finding holds everywhere" if not failed else f"the finding fails in {failed} case(s)")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
