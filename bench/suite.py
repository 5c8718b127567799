"""What every benchmark in ``bench/`` hands to ``python -m bench``: figures with their baselines.

Each benchmark module exposes ``run(quick: bool) -> list[Figure]`` beside its own ``main()``. A
figure is one measured number; ``ratio`` divides it by a baseline measured in the same run (raw
PostgreSQL inserts, raw SHA-256, a plain-SQL transfer, a peer ledger), so results from a loaded or
a faster machine stay comparable.
"""

from __future__ import annotations

import platform
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from ledger.db import create_engine


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


class Server:
    """The PostgreSQL server a benchmark owns scratch databases on; drops every one it created.

    Databases are named ``bench_<name>_<random>_<suffix>``, so runs never collide and leftovers
    of a killed run are easy to find. ``file_copy`` clones templates by file copy
    (PostgreSQL 15+), so cloning a multi-GB database does not write it all to the WAL.
    """

    def __init__(self, url: str, name: str, *, file_copy: bool = False) -> None:
        self.url = url
        self.prefix = f"bench_{name}_{uuid.uuid4().hex[:10]}"
        self.file_copy = file_copy
        self.admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        self.created: list[str] = []

    def url_of(self, name: str) -> str:
        return sa.make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def create(self, suffix: str, template: str | None = None) -> str:
        name = f"{self.prefix}_{suffix}"
        clause = f' TEMPLATE "{template}"' if template else ""
        if template and self.file_copy:
            clause += " STRATEGY FILE_COPY"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"{clause}')
        self.created.append(name)
        return name

    def drop(self, name: str) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(reversed(self.created)):
            self.drop(name)
        self.admin.dispose()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for the machine line of a result."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
