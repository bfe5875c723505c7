"""The names every layer shares, defined once: the schema validates them, the CLI offers them as
choices, the run record and the reports store them.

Kept free of heavy imports (no pydantic, no torch) so that `uverify --help` can build its choices
from them at once. Each is a `StrEnum`: its members compare equal to their strings, and a spec or a
report dumped as JSON holds the plain string.
"""

from __future__ import annotations

from enum import StrEnum


class UnlearningMethod(StrEnum):
    SISA = "sisa"
    AMNESIAC = "amnesiac"

    @property
    def display_name(self) -> str:
        """The name the seed's tables use."""
        return {"sisa": "SISA", "amnesiac": "Amnesiac"}[self.value]


class Training(StrEnum):
    STANDARD = "standard"
    ADVERSARIAL = "adversarial"


class Aggregation(StrEnum):
    """How a SISA ensemble combines its shards: one graph (the means) or a vote of separate graphs."""

    MEAN_LOGITS = "mean_logits"
    MEAN_SOFTMAX = "mean_softmax"
    MAJORITY_VOTE = "majority_vote"


class BoundMethod(StrEnum):
    IBP = "IBP"
    CROWN_IBP = "CROWN-IBP"
    CROWN = "CROWN"
    ALPHA_CROWN = "alpha-CROWN"


class Norm(StrEnum):
    INF = "inf"
    L2 = "2"
    L1 = "1"

    @property
    def label(self) -> str:
        """L∞, L2, L1: how tables and titles write the norm."""
        return "L∞" if self is Norm.INF else f"L{self.value}"


class GateMetric(StrEnum):
    CERTIFIED_ACCURACY = "certified_accuracy"
    PGD_ACCURACY = "pgd_accuracy"
    CLEAN_ACCURACY = "clean_accuracy"


_NORM_ALIASES = {"infinity": "inf", ".inf": "inf", "∞": "inf", "2.0": "2", "1.0": "1"}


def canonical_norm(value: object) -> object:
    """'inf', '2' or '1' for the ways people write a norm (inf, .inf, math.inf, 2, "L2", "linf", ...);
    anything else comes back unchanged, for the caller to reject with its own message."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and value == float("inf"):
        return "inf"
    if isinstance(value, (int, float)) and value in (1, 2):
        return str(int(value))
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("l")
        return _NORM_ALIASES.get(text, text)
    return value


def values(kind: type[StrEnum]) -> list[str]:
    """The strings a user may write for `kind`, in definition order (click choices, error messages)."""
    return [member.value for member in kind]


__all__ = [
    "Aggregation",
    "BoundMethod",
    "GateMetric",
    "Norm",
    "Training",
    "UnlearningMethod",
    "canonical_norm",
    "values",
]
