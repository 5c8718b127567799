"""What every benchmark in ``bench/`` hands to ``python -m bench``: figures with their baselines.

Each benchmark module exposes ``run(quick: bool) -> list[Figure]`` beside its own ``main()``. A
figure is one measured number; ``ratio`` divides it by a baseline measured in the same run (raw
PostgreSQL inserts, raw SHA-256, a plain-SQL transfer, a peer ledger), so results from a loaded or
a faster machine stay comparable.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One measured number of one benchmark, and how it compares to its in-run baseline."""

    benchmark: str
    """Module that measured it, e.g. ``settlement``."""
    metric: str
    """What was measured, in words, e.g. ``close + prepare, 10,000,000 entries``."""
    value: float
    unit: str
    """E.g. ``entries/s``, ``ms p99``, ``s``."""
    baseline: str | None = None
    """The in-run baseline the ratio is taken against, in words; None for a baseline itself."""
    ratio: float | None = None
    """``value`` divided by the baseline's value (higher is better for rates)."""
    goal: str | None = None
    """The issue's goal for this figure, in words, e.g. ``≤ 60 s``; None when there is none."""
    met: bool | None = None
    """Whether the goal was met in this run; None when there is no goal, or when this run cannot
    decide it (a ``--quick`` run smaller than the size the goal is set at)."""


class Incomplete(Exception):
    """Raised by a ``run`` that measured some of its figures but could not measure the rest."""

    def __init__(self, reason: str, figures: list[Figure]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.figures = figures
