"""A verification property in the form every back end shares: an input box and an output condition.

The condition is the one VNN-LIB asserts: the *violation* ("unsafe") region, a disjunction of
conjunctions of linear inequalities over the outputs, each conjunction `C y <= d` (row-wise). A property
holds (`unsat` in VNN-COMP's words, `verified` in uverify's) when no point of the box reaches any
disjunct; a point of the box that satisfies one disjunct is a counterexample (`sat`, `falsified`).

The L_p-ball robustness property of `uverify check` is the special case of one box (the ball ∩ domain,
for norm inf) and one single-row conjunction per other class j: z_j − z_y >= 0, i.e. (e_y − e_j) y <= 0.
The bounder's specification matrix is one C row per inequality, and a conjunction is infeasible over the
box when one of its rows has a certified lower bound of `C y - d` above zero.

Owned here so the VNN-LIB reader (vnn/), the check, the branch and bound and the attacks agree on one
representation; each converts to it, none to another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from uverify.errors import UverifyError


class PropertyError(UverifyError):
    """A property that cannot be checked as given (an empty box, inconsistent shapes)."""


@dataclass(frozen=True)
class Conjunction:
    """All rows of `C y <= d` at once: one disjunct of the violation region."""

    C: np.ndarray  # (rows, outputs) float64
    d: np.ndarray  # (rows,) float64

    def __post_init__(self) -> None:
        if self.C.ndim != 2 or self.d.shape != (self.C.shape[0],):
            raise PropertyError(
                f"a conjunction needs C (rows, outputs) and d (rows,): got {self.C.shape}, {self.d.shape}"
            )

    def slack(self, y: np.ndarray) -> np.ndarray:
        """max over rows of C y - d for each output row of `y` (n, outputs): <= 0 where the disjunct holds."""
        return (y @ self.C.T - self.d).max(axis=1)


@dataclass(frozen=True)
class Box:
    """An axis-aligned input box, flat over the network's input (lower <= upper everywhere)."""

    lower: np.ndarray  # (inputs,) float64
    upper: np.ndarray

    def __post_init__(self) -> None:
        if self.lower.shape != self.upper.shape or self.lower.ndim != 1:
            raise PropertyError(
                f"box bounds must be two flat arrays of one shape: {self.lower.shape}, {self.upper.shape}"
            )
        bad = np.flatnonzero(~(self.lower <= self.upper))
        if len(bad):
            i = int(bad[0])
            raise PropertyError(f"empty input box: X_{i} has lower {self.lower[i]} > upper {self.upper[i]}")

    def contains(self, x: np.ndarray, tol: float = 0.0) -> np.ndarray:
        """Whether each flat row of `x` lies in the box, up to `tol`."""
        x = x.reshape(len(x), -1)
        return np.all((x >= self.lower - tol) & (x <= self.upper + tol), axis=1)


@dataclass(frozen=True)
class Property:
    """∃ x in one of `boxes` with the network's output in one of `violation`'s disjuncts?"""

    boxes: tuple[Box, ...]
    violation: tuple[Conjunction, ...]

    def __post_init__(self) -> None:
        if not self.boxes or not self.violation:
            raise PropertyError("a property needs at least one input box and one output disjunct")
        sizes = {b.lower.shape[0] for b in self.boxes}
        outputs = {c.C.shape[1] for c in self.violation}
        if len(sizes) != 1 or len(outputs) != 1:
            raise PropertyError(f"inconsistent property: input sizes {sorted(sizes)}, output sizes {sorted(outputs)}")

    @property
    def num_inputs(self) -> int:
        return self.boxes[0].lower.shape[0]

    @property
    def num_outputs(self) -> int:
        return self.violation[0].C.shape[1]

    def slack(self, y: np.ndarray) -> np.ndarray:
        """min over disjuncts of max over rows of C y - d: <= 0 exactly where `y` violates the property.
        PGD minimises this inside the box."""
        return np.min(np.stack([c.slack(y) for c in self.violation]), axis=0)

    def violated_by(self, y: np.ndarray, tol: float = 0.0) -> np.ndarray:
        return self.slack(y) <= tol


def robustness(lower: np.ndarray, upper: np.ndarray, label: int, num_classes: int) -> Property:
    """The L_inf-ball (∩ domain) robustness property as a `Property`: the box [lower, upper] and one
    disjunct per class j ≠ label, z_j − z_label >= 0."""
    disjuncts = []
    for j in range(num_classes):
        if j == label:
            continue
        row = np.zeros((1, num_classes))
        row[0, label], row[0, j] = 1.0, -1.0  # z_label - z_j <= 0
        disjuncts.append(Conjunction(row, np.zeros(1)))
    return Property((Box(np.asarray(lower, float).ravel(), np.asarray(upper, float).ravel()),), tuple(disjuncts))


def stack_rows(conjunctions: Sequence[Conjunction]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row of every disjunct as one specification matrix for the bounder: C (rows, outputs), d
    (rows,), and which disjunct each row belongs to (rows,). A disjunct is refuted when any of its rows
    has a certified lower bound of C y - d above zero; the property holds when every disjunct is."""
    C = np.concatenate([c.C for c in conjunctions])
    d = np.concatenate([c.d for c in conjunctions])
    owner = np.concatenate([np.full(len(c.d), k) for k, c in enumerate(conjunctions)])
    return C, d, owner
