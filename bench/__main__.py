"""``python -m bench``: every benchmark in ``bench/``, one table, written into ``bench/RESULTS.md``.

``python -m bench [--quick] [--only NAME ...] [--no-write]``. Each module of this package that
exposes ``run(quick: bool) -> list[Figure]`` (see :mod:`bench.suite`) is run in a Python process
of its own — one benchmark's threads, forks, Django settings or leftovers never reach the next —
with its own output streamed as it goes. Their figures are collected and printed as one table,
and the table, with the date, the machine, its load and the PostgreSQL and Python versions,
replaces the block between ``<!-- bench:table:start -->`` and ``<!-- bench:table:end -->`` at the
top of ``bench/RESULTS.md``; the hand-written sections below it are left as they are.

A module that cannot be imported, or exposes no ``run``, is listed as *not available* with the
reason; one whose ``run`` fails is listed as *failed* with its error. No figure is ever made up.
``--only`` runs the named benchmarks and, so that a partial run never replaces a whole table,
writes nothing unless ``--write`` is given too.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import pkgutil
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import bench
from bench.suite import Figure, Incomplete, cpu_model

DEFAULT_URL = "postgresql://root@127.0.0.1:5432/test"
RESULTS = Path(__file__).with_name("RESULTS.md")
START, END = "<!-- bench:table:start -->", "<!-- bench:table:end -->"
#: The order of the table; any other module found in bench/ follows, alphabetically.
ORDER = ("ledger_concurrency", "journal", "api", "verify", "settlement", "peers")
NOT_BENCHMARKS = {"suite"}


@dataclass
class Outcome:
    """What running one benchmark gave: its figures, or why there are none (or not all)."""

    name: str
    status: str
    """``ok``, ``incomplete`` (some figures, and a reason), ``failed`` or ``not available``."""
    figures: list[Figure] = field(default_factory=list)
    detail: str = ""
    seconds: float = 0.0


def discover() -> list[str]:
    """Benchmark module names: the known ones (present or not yet), then any other in bench/."""
    found = {
        module.name
        for module in pkgutil.iter_modules(bench.__path__)
        if not module.name.startswith("_") and module.name not in NOT_BENCHMARKS
    }
    return list(ORDER) + sorted(found - set(ORDER))


# -- one benchmark, in a child process -----------------------------------------------------------


def run_here(name: str, quick: bool) -> Outcome:
    """Import ``bench.<name>`` and call its ``run``; what happened, as an :class:`Outcome`."""
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{name}":
            return Outcome(name, "not available", detail=f"no bench/{name}.py")
        return Outcome(name, "not available", detail=f"import failed: {exc}")
    except Exception as exc:
        return Outcome(name, "not available", detail=f"import failed: {type(exc).__name__}: {exc}")
    runner = getattr(module, "run", None)
    if not callable(runner):
        return Outcome(name, "not available", detail=f"bench/{name}.py exposes no run(quick)")
    try:
        figures = runner(quick)
    except Incomplete as exc:
        return Outcome(name, "incomplete", list(exc.figures), exc.reason)
    except Exception as exc:
        traceback.print_exc()
        return Outcome(name, "failed", detail=f"{type(exc).__name__}: {exc}")
    if not isinstance(figures, list) or not all(isinstance(f, Figure) for f in figures):
        return Outcome(name, "failed", detail="run(quick) did not return a list of Figure")
    return Outcome(name, "ok", figures)


def child_main(name: str, quick: bool, result: Path) -> None:
    outcome = run_here(name, quick)
    result.write_text(json.dumps(dataclasses.asdict(outcome)), encoding="utf-8")


def run_in_child(name: str, quick: bool, timeout: float) -> Outcome:
    """``python -m bench --child NAME`` in a fresh interpreter; its outcome, read from a file.

    Past ``timeout`` seconds the child gets SIGINT — its ``finally`` blocks stop the servers it
    started and drop its databases — then SIGKILL a minute later if it still runs.
    """
    started = time.perf_counter()
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "outcome.json"
        argv = [sys.executable, "-m", "bench", "--child", name, "--result", str(result)]
        child = subprocess.Popen([*argv, *(["--quick"] if quick else [])], cwd=root, env=env)
        timed_out = False
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if timed_out:
            outcome = Outcome(name, "failed", detail=f"timed out after {timeout:.0f} s")
        elif result.exists():
            raw = json.loads(result.read_text(encoding="utf-8"))
            raw["figures"] = [Figure(**figure) for figure in raw["figures"]]
            outcome = Outcome(**raw)
        else:
            outcome = Outcome(name, "failed", detail=f"its process exited {child.returncode}"
                              " without a result")
    outcome.seconds = time.perf_counter() - started
    return outcome


# -- the machine ---------------------------------------------------------------------------------


def nproc() -> int:
    """What ``nproc`` prints: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def postgresql_version(url: str) -> str:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            settings = conn.execute(
                "SELECT name, setting FROM pg_settings"
                " WHERE name IN ('fsync', 'synchronous_commit') ORDER BY name"
            ).fetchall()
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    return f"{row[0] if row else '?'} (" + ", ".join(f"{k}={v}" for k, v in settings) + ")"


def loads() -> str:
    return " / ".join(f"{load:.2f}" for load in os.getloadavg())


# -- output --------------------------------------------------------------------------------------


def number(value: float) -> str:
    """A figure to three significant digits at least, with thousands separators."""
    if value != value:  # NaN: nothing was measured
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def ratio(figure: Figure) -> str:
    return "—" if figure.ratio is None else f"{figure.ratio:.3g}"


def goal(figure: Figure) -> str:
    if figure.goal is None:
        return ""
    if figure.met is None:  # e.g. a quick run, smaller than the size the goal is set at
        return f"{figure.goal}: not decided by this run"
    return f"{figure.goal}: {'met' if figure.met else 'not met'}"


def rows(outcomes: list[Outcome]) -> list[list[str]]:
    table = []
    for outcome in outcomes:
        for figure in outcome.figures:
            table.append([outcome.name, figure.metric, number(figure.value), figure.unit,
                          ratio(figure), figure.baseline or "(baseline)", goal(figure)])
    return table


HEADERS = ["benchmark", "figure", "value", "unit", "× baseline", "baseline (same run)", "goal"]


def print_table(outcomes: list[Outcome], header: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    # Wide enough for the metric's words even when the output goes to a file or a CI log.
    console = Console(width=max(160, shutil.get_terminal_size((160, 24)).columns))
    table = Table(title="python -m bench")
    for name in HEADERS:
        table.add_column(name, justify="right" if name in ("value", "× baseline") else "left")
    for row in rows(outcomes):
        table.add_row(*row)
    console.print(table)
    for line in header:
        console.print(line, highlight=False)
    for outcome in outcomes:
        if outcome.status != "ok":
            console.print(f"[bold]{outcome.name}[/bold]: {outcome.status} — {outcome.detail}")


def markdown(outcomes: list[Outcome], header: list[str], command: str) -> list[str]:
    lines = [
        START,
        "## Summary: every benchmark, one run",
        "",
        f"Written by `{command}`; do not edit between the markers (the next run replaces it)."
        " \"× baseline\" is the figure divided by its baseline measured in the same run: for a"
        " rate, higher is better; for a latency or a cost, lower is better.",
        "",
        *[f"- {line}" for line in header],
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|---|---|---:|---|---:|---|---|",
        *["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
          for row in rows(outcomes)],
    ]
    others = [outcome for outcome in outcomes if outcome.status != "ok"]
    if others:
        lines.append("")
        lines += [f"- **{outcome.name}**: {outcome.status} — {outcome.detail}"
                  for outcome in others]
    lines.append(END)
    return lines


def write_block(block: list[str], path: Path = RESULTS) -> None:
    """Replace the delimited block, or put it right under the title when there is none yet."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    new = "\n".join(block)
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        text = before + new + after
    else:
        lines = text.split("\n")
        at = next((n + 1 for n, line in enumerate(lines) if line.startswith("# ")), 0)
        text = "\n".join([*lines[:at], "", new, *lines[at:]])
    path.write_text(text, encoding="utf-8")


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's short mode")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this benchmark (repeatable); writes nothing without --write")
    parser.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    parser.add_argument("--write", action="store_true", help="write even with --only")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="stop a benchmark after this long (default 900 with --quick, else"
                        " 3600); it is then reported as failed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.quick, args.result)
        return 0
    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"no benchmark named {', '.join(unknown)} (known: {', '.join(names)})")
        names = [name for name in names if name in args.only]
    url = os.environ.get("COALITION_BENCH_DATABASE_URL", DEFAULT_URL)
    timeout = args.timeout or (900.0 if args.quick else 3600.0)
    started_at, load_before = datetime.now(UTC), loads()
    started = time.perf_counter()
    outcomes = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        outcome = run_in_child(name, args.quick, timeout)
        print(f"=== {name}: {outcome.status} in {outcome.seconds:.0f} s"
              + (f" — {outcome.detail}" if outcome.detail else ""), flush=True)
        outcomes.append(outcome)
    took = time.perf_counter() - started
    command = "python -m bench" + (" --quick" if args.quick else "") + "".join(
        f" --only {name}" for name in args.only or [])
    header = [
        f"date: {started_at:%Y-%m-%d %H:%M} UTC; `{command}` took {took:.0f} s ("
        + ", ".join(f"{o.name} {o.seconds:.0f} s" for o in outcomes) + ")",
        f"machine: `nproc` {nproc()}, {cpu_model()} ({platform.machine()});"
        f" load average (1 / 5 / 15 min) {load_before} at the start, {loads()} at the end",
        f"PostgreSQL {postgresql_version(url)}; Python {platform.python_version()}",
    ]
    print()
    print_table(outcomes, header)
    if not args.no_write and (not args.only or args.write):
        write_block(markdown(outcomes, header, command))
        print(f"\nwrote the table into {RESULTS}")
    return 0 if all(outcome.status in ("ok", "not available") for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
