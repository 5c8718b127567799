"""The demo benchmark's in-run baseline writes what it claims: one row per entry, a commit a day."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bench import demo


def test_the_baseline_inserts_one_row_per_entry(tmp_path: Path) -> None:
    assert demo.raw_sqlite_seconds(1_234, tmp_path) > 0
    with sqlite3.connect(tmp_path / "baseline.db") as conn:
        query = "SELECT count(*), count(DISTINCT id) FROM entries"
        count, distinct = conn.execute(query).fetchone()
    assert count == distinct == 1_234


def test_a_quick_run_decides_no_goal(monkeypatch: pytest.MonkeyPatch) -> None:
    summary = {"entries": 20_000, "seconds": {"booking": 9.0}}
    monkeypatch.setattr(demo, "measure", lambda members, runs: [(14.0, summary, 0.5)])
    [figure] = demo.run(quick=True)
    assert (figure.value, figure.ratio, figure.met) == (14.0, 28.0, None)
    monkeypatch.setattr(demo, "measure", lambda members, runs: [(61.0, summary, 0.5)])
    assert demo.run(quick=False)[0].met is False


def test_the_command_judges_the_goal_on_every_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = {"entries": 103_400, "seconds": {"booking": 30.0}}
    monkeypatch.setattr("sys.argv", ["bench.demo", "--runs", "2"])
    monkeypatch.setattr(demo, "measure", lambda m, r: [(48.0, summary, 0.8), (61.0, summary, 0.8)])
    demo.main()
    assert "goal < 60 s: NOT met (1 of 2 runs under it, slowest 61.0 s)" in capsys.readouterr().out
    monkeypatch.setattr(demo, "measure", lambda m, r: [(48.0, summary, 0.8), (52.5, summary, 0.8)])
    demo.main()
    assert "goal < 60 s: met (2 of 2 runs under it, slowest 52.5 s)" in capsys.readouterr().out
