"""``python -m bench`` finds every benchmark, never invents a figure, and rewrites only its block.

The benchmarks themselves run against PostgreSQL for minutes and are not run here; what is tested is
the harness that turns their figures into the committed table of bench/RESULTS.md.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

import bench.__main__ as suite
from bench.suite import Figure, Incomplete


def test_every_module_in_bench_is_a_benchmark_except_the_harness() -> None:
    names = suite.discover()
    here = Path(suite.__file__).parent
    on_disk = {p.stem for p in here.glob("*.py") if not p.stem.startswith("_")}
    assert set(names) >= on_disk - suite.NOT_BENCHMARKS
    assert "suite" not in names
    assert names[: len(suite.ORDER)] == list(suite.ORDER)


def _module(monkeypatch: pytest.MonkeyPatch, name: str, **attributes: object) -> None:
    module = types.ModuleType(f"bench.{name}")
    for key, value in attributes.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, f"bench.{name}", module)


def test_outcomes_report_what_happened_and_never_a_figure_that_was_not_measured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    figure = Figure("fake", "rate", 10.0, "ops/s", "raw", 0.5, "≥ 1×", False)

    def partial(quick: bool) -> list[Figure]:
        raise Incomplete("second half needs PostgreSQL", [figure])

    def broken(quick: bool) -> list[Figure]:
        raise RuntimeError("boom")

    _module(monkeypatch, "fake_ok", run=lambda quick: [figure])
    _module(monkeypatch, "fake_partial", run=partial)
    _module(monkeypatch, "fake_broken", run=broken)
    _module(monkeypatch, "fake_norun")
    _module(monkeypatch, "fake_lies", run=lambda quick: [1.0])

    assert suite.run_here("fake_ok", True) == suite.Outcome("fake_ok", "ok", [figure])
    partial_outcome = suite.run_here("fake_partial", True)
    assert (partial_outcome.status, partial_outcome.figures) == ("incomplete", [figure])
    assert suite.run_here("fake_broken", True).status == "failed"
    assert suite.run_here("fake_norun", True).status == "not available"
    assert suite.run_here("fake_lies", True).status == "failed"
    assert suite.run_here("no_such_benchmark_module", True).status == "not available"


def test_the_table_block_is_replaced_and_the_hand_written_sections_are_kept(
    tmp_path: Path,
) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Hand-written\n\nkeep me\n", encoding="utf-8")
    figure = Figure("fake", "drain | rate", 1234.5, "entries/s", "raw COPY", 0.25, "≥ 1×", False)
    first = suite.markdown([suite.Outcome("fake", "ok", [figure])], ["date: today"], "cmd")
    suite.write_block(first, results)
    text = results.read_text(encoding="utf-8")
    assert text.index(suite.START) < text.index("## Hand-written")
    assert "| fake | drain \\| rate | 1,234 | entries/s | 0.25 | raw COPY | ≥ 1×: not met |" in text

    second = suite.markdown(
        [suite.Outcome("other", "not available", detail="no bench/other.py")], ["x"], "cmd"
    )
    suite.write_block(second, results)
    text = results.read_text(encoding="utf-8")
    assert text.count(suite.START) == 1
    assert text.count(suite.END) == 1
    assert "1,234" not in text
    assert "**other**: not available — no bench/other.py" in text
    assert text.endswith("## Hand-written\n\nkeep me\n")


def test_a_goal_the_run_cannot_decide_is_not_reported_as_missed() -> None:
    quick = Figure("fake", "close, 500 entries", 1.0, "s", "join", 1.5, "≤ 60 s at 10M", None)
    met = Figure("fake", "close, 10M entries", 20.0, "s", "join", 1.2, "≤ 60 s at 10M", True)
    missed = Figure("fake", "close, 10M entries", 90.0, "s", "join", 5.0, "≤ 60 s at 10M", False)
    assert suite.goal(quick) == "≤ 60 s at 10M: not decided by this run"
    assert suite.goal(met) == "≤ 60 s at 10M: met"
    assert suite.goal(missed) == "≤ 60 s at 10M: not met"
