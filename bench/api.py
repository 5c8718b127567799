"""The REST API under load: an earn/burn mix beside a trivial INSERT + COMMIT on the same stack.

Run ``python -m bench.api [--quick]``. It needs PostgreSQL at ``COALITION_BENCH_DATABASE_URL``
(default ``postgresql://root@127.0.0.1:5432/test``), where it creates a database of its own,
migrates it, runs ``coalition init`` on it, and drops it at the end.

Two servers run side by side on 127.0.0.1, both through ``api.cli.run_gunicorn`` — the function
behind ``coalition serve`` — so they share every gunicorn setting (sync workers, worker count,
timeouts):

(a) trivial: a Flask app of a dozen lines, on the same engine settings as the API
    (``ledger.db.create_engine``, ``Database.transaction``), whose one endpoint parses a JSON body,
    INSERTs one row and COMMITs. It lives here, not in the product.
(b) the API itself, ``coalition serve``, with ``coalition integrate`` running beside it as in
    production: three earns (a 12.50 € purchase) to one burn (1 point), each with its own
    Idempotency-Key and a partner's bearer token, spread over 32 members holding plenty of points.
(c) the same mix on one connection: the API's service time, with no request queued behind another.

The load comes from this process: one thread per connection, each with its own
:mod:`http.client` connection, sending the next request as soon as the last answer is read
(a closed loop). gunicorn's sync workers close the connection after every response, so every
request also pays a TCP connect — as every client of ``coalition serve`` does. ``--loadgen wrk``
uses wrk (``apt-get install wrk``) instead, when it is installed, to see what the Python
generator's own CPU costs on a small machine; the default needs nothing beyond the project.

The scenarios alternate in rounds (rotated order), and each figure is the total of its rounds, so
a drift in the machine's load favours none. Latency is per request as the client sees it, connect
to last byte. Beside it, the CPU each request costs the server's processes, the integrator and
PostgreSQL's backends is read from ``/proc`` — the figure a busy machine distorts least — and
turned into a ceiling: the requests per second the machine's CPUs could serve at that cost.

Then one API worker is profiled with cProfile (CPU time) under the same mix, with the SQL
statements, transactions and pool checkouts each request makes counted and one request's
statements listed, to name where a request's time goes.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import http.client
import json
import os
import pstats
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

from bench import suite
from bench.ledger_concurrency import DEFAULT_URL, machine, scratch_database
from ledger.db import Database, create_engine

HOST = "127.0.0.1"
PARTNER = "BENCH"
MEMBERS = 32
SEED_POINTS = 1_000_000
EARN_CENTS = 1250
#: Every fourth request of a connection is a burn, the others earns.
BURN_EVERY = 4
GOAL_RATIO, GOAL_P99_MS = 0.75, 50.0
STARTED = time.monotonic()

#: A request to send: path, JSON body, extra headers, and a label to group latencies by.
Request = tuple[str, dict[str, Any], dict[str, str], str]
#: Builds the n-th request of connection ``worker``.
RequestMaker = Callable[[int, int], Request]


# -- the trivial endpoint (a): served in a child process -----------------------------------------


def trivial_app(database_url: str) -> Any:
    """Flask, one JSON body, one INSERT, one COMMIT — on the API's own engine settings."""
    from flask import Flask, request

    app = Flask("bench-trivial")
    db = Database(create_engine(database_url))
    insert = sa.text("INSERT INTO bench_baseline (worker, n) VALUES (:worker, :n)")

    @app.post("/trivial")
    def trivial() -> tuple[dict[str, bool], int]:
        body = request.get_json()
        with db.transaction() as conn:
            conn.execute(insert, {"worker": body["worker"], "n": body["n"]})
        return {"ok": True}, 201

    return app


class ProfiledApp:
    """WSGI middleware: cProfile around each request, and what the request asked of the database.

    One CPU-time profile per worker process, from its ``WARM_UP``-th request on (the first ones
    import modules and fill caches); stats are written every 25 requests and at exit, with counts
    per path — SQL statements, transactions begun, pool checkouts (each checkout is one
    ``pool_pre_ping`` round trip) — and the statements of one sampled request per path.
    """

    WARM_UP = 20

    def __init__(self, app: Any, engine: sa.Engine, out: Path) -> None:
        self.app, self.out = app, out
        # CPU time, not wall time: on a small shared machine the CPU is what runs out, and the
        # database's own CPU is measured apart (Meter); round trips are counted below.
        self.profile = cProfile.Profile(time.process_time)
        self.path = ""
        self.served = 0
        self.sampling = False
        self.counts: Counter[str] = Counter()
        self.samples: dict[str, list[str]] = {}
        sa.event.listen(engine, "before_cursor_execute", self._statement)
        sa.event.listen(engine, "begin", lambda *_: self._count("transactions"))
        sa.event.listen(engine.pool, "checkout", lambda *_: self._count("checkouts"))
        atexit.register(self.dump)

    @property
    def profiling(self) -> bool:
        return self.served >= self.WARM_UP

    def _count(self, what: str) -> None:
        if self.profiling:
            self.counts[f"{self.path} {what}"] += 1

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self._count("statements")
        if self.sampling:
            self.samples[self.path].append(" ".join(statement.split())[:110])

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.path = environ.get("PATH_INFO", "")
        self.sampling = self.profiling and self.path not in self.samples
        if self.sampling:
            self.samples[self.path] = []
        if self.profiling:
            self.profile.enable()
        try:
            result = self.app(environ, start_response)
            try:
                body = list(result)  # render the whole response inside the profile
            finally:
                if hasattr(result, "close"):
                    result.close()
        finally:
            self.profile.disable()
            self._count("requests")
            self.served += 1
            self.sampling = False
        if self.served % 25 == 0:
            self.dump()
        return body

    def dump(self) -> None:
        if not self.counts:
            return  # the master process, or a worker still warming up
        self.profile.dump_stats(self.out / f"worker-{os.getpid()}.prof")
        (self.out / f"worker-{os.getpid()}.json").write_text(
            json.dumps({"counts": self.counts, "samples": self.samples})
        )


def serve(kind: str, port: int, workers: int, profile_dir: Path | None) -> None:
    """Serve the trivial app or the profiled API through ``run_gunicorn`` (``coalition serve``).

    ``run_gunicorn`` loads ``api.wsgi:app``; a module of that name holding another app, put in
    ``sys.modules`` first, makes gunicorn serve it with exactly the settings of the product.
    """
    from api import cli

    if kind == "trivial":
        app = trivial_app(os.environ["COALITION_DATABASE_URL"])
    else:
        from api.wsgi import app as api_app

        assert profile_dir is not None
        app = ProfiledApp(api_app, api_app.extensions["coalition"].db.engine, profile_dir)
    stand_in = types.ModuleType("api.wsgi")
    stand_in.app = app  # type: ignore[attr-defined]
    sys.modules["api.wsgi"] = stand_in
    cli.run_gunicorn(HOST, port, workers, 5)


# -- processes -----------------------------------------------------------------------------------


def coalition_argv(*args: str) -> list[str]:
    script = shutil.which("coalition", path=str(Path(sys.executable).parent))
    if script is not None:
        return [script, *args]
    return [sys.executable, "-c", "from api.cli import main; main()", *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """A subprocess in its own process group, logging to a file; stopped with its workers."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int | None = None

    @classmethod
    def start(cls, name: str, argv: list[str], env: dict[str, str], workdir: Path,
              port: int | None = None) -> Child:
        log = workdir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(  # our own commands
                argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        return cls(name, process, log, port)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until ``/readyz`` (or, for the trivial app, any HTTP answer) comes back."""
        assert self.port is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            with suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", "/readyz")
                status = conn.getresponse().status
                conn.close()
                if status in (200, 404):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout} s")

    def terminate(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM the group (a graceful gunicorn shutdown), SIGKILL it if that hangs."""
        self.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


# -- the load generator --------------------------------------------------------------------------


@dataclass
class Figure:
    """What one scenario achieved over its rounds, as the client saw it."""

    name: str
    requests: int = 0
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    """Seconds per request, by label (``all`` plus each kind of request)."""
    statuses: Counter[int] = field(default_factory=Counter)
    client_cpu: float = 0.0
    """CPU seconds the load generator spent in the counted window (this process, or wrk)."""
    generator: str = "python"
    socket_errors: int = 0
    """wrk's connect/read/write/timeout errors (the Python generator raises on any instead)."""
    system_cpu: Counter[str] = field(default_factory=Counter)
    """CPU seconds in the counted window: the server (``app``), ``integrator``, ``postgres``."""

    def cpu_per_request(self, part: str) -> float:
        """Milliseconds of CPU per request: ``app``, ``integrator``, ``postgres``, ``generator``."""
        spent = self.client_cpu if part == "generator" else self.system_cpu.get(part, 0.0)
        return spent / self.requests * 1000 if self.requests else float("nan")

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float, label: str = "all") -> float:
        """Nearest-rank percentile in milliseconds."""
        ordered = sorted(self.latencies.get(label, []))
        if not ordered:
            return float("nan")
        index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
        return ordered[index] * 1000

    def add(self, label: str, latency: float) -> None:
        self.latencies.setdefault("all", []).append(latency)
        if label != "all":
            self.latencies.setdefault(label, []).append(latency)


class Meter:
    """CPU seconds spent so far by the servers' process groups and the database's backends.

    Read from ``/proc`` (Linux): what each request costs the application and PostgreSQL,
    whatever else the machine is running — the figure that the machine's load does not distort.
    """

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, url: str, groups: dict[str, int]) -> None:
        self.monitor = psycopg.connect(url, autocommit=True)
        self.groups = {pgid: part for part, pgid in groups.items()}

    def sample(self) -> dict[str, dict[int, float]]:
        backends = {row[0] for row in self.monitor.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()")}
        spent: dict[str, dict[int, float]] = {part: {} for part in self.groups.values()}
        spent["postgres"] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            pid, group = int(stat.parent.name), int(fields[2])
            cpu = (int(fields[11]) + int(fields[12])) / self.TICK
            if group in self.groups:
                spent[self.groups[group]][pid] = cpu
            elif pid in backends:
                spent["postgres"][pid] = cpu
        return spent

    @staticmethod
    def spent(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
              ) -> Counter[str]:
        return Counter({part: sum(cpu - before[part].get(pid, 0.0) for pid, cpu in pids.items())
                        for part, pids in after.items()})

    def close(self) -> None:
        self.monitor.close()


def drive(figure: Figure, port: int, connections: int, warmup: float, seconds: float,
          make: RequestMaker, meter: Meter | None = None) -> None:
    """Closed-loop load for ``warmup + seconds``; what completes in the last ``seconds`` counts."""
    start_at = time.perf_counter() + 0.2
    counted_from, counted_to = start_at + warmup, start_at + warmup + seconds
    lock = threading.Lock()
    cpu: dict[str, float] = {}

    def work(worker: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        seen: list[tuple[str, float, int]] = []
        n = 0
        time.sleep(max(0.0, start_at - time.perf_counter()))
        while True:
            began = time.perf_counter()
            if began >= counted_to:
                break
            path, body, headers, label = make(worker, n)
            n += 1
            conn.request("POST", path, json.dumps(body).encode(),
                         {"Content-Type": "application/json", **headers})
            response = conn.getresponse()
            response.read()
            ended = time.perf_counter()
            if counted_from <= ended <= counted_to:
                seen.append((label, ended - began, response.status))
        conn.close()
        with lock:
            for label, latency, status in seen:
                figure.add(label, latency)
                figure.statuses[status] += 1
            figure.requests += len(seen)

    def mark_cpu() -> None:
        while time.perf_counter() < counted_from:
            time.sleep(0.001)
        cpu["from"] = time.process_time()
        before = meter.sample() if meter else None
        time.sleep(max(0.0, counted_to - time.perf_counter()))
        cpu["to"] = time.process_time()
        if meter and before is not None:
            figure.system_cpu.update(Meter.spent(before, meter.sample()))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(connections)]
    threads.append(threading.Thread(target=mark_cpu))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    figure.seconds += seconds
    figure.client_cpu += cpu["to"] - cpu["from"]


WRK_SCRIPT = """
local kind, members, threads = "%(kind)s", {%(members)s}, 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
counter = 0
request = function()
  counter = counter + 1
  if kind == "trivial" then
    return wrk.format("POST", "/trivial", {["Content-Type"] = "application/json"},
      string.format('{"worker": %%d, "n": %%d}', id, counter))
  end
  local member = members[(id * 7919 + counter) %% #members + 1]
  local headers = {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer %(token)s",
    ["Idempotency-Key"] = string.format("%(run)s-wrk-%%d-%%d", id, counter)}
  if counter %% %(burn_every)d == 0 then
    return wrk.format("POST", "/v1/burn", headers,
      string.format('{"member": "%%s", "points": 1}', member))
  end
  return wrk.format("POST", "/v1/earn", headers, string.format(
    '{"member": "%%s", "lines": [{"amount_cents": %(cents)d}]}', member))
end
"""


def drive_wrk(figure: Figure, port: int, connections: int, warmup: float, seconds: float,
              kind: str, token: str, members: list[str], run: str, workdir: Path,
              meter: Meter | None = None) -> None:
    """The same closed loop with wrk: one thread per CPU, ``connections`` connections."""

    def wrk(duration: float) -> str:
        # A script per invocation: the warm-up's Idempotency-Keys must not be replayed later.
        script = workdir / f"{kind}-{uuid.uuid4().hex[:6]}.lua"
        script.write_text(WRK_SCRIPT % {
            "kind": kind, "members": ", ".join(f'"{m}"' for m in members), "token": token,
            "run": script.stem + run, "burn_every": BURN_EVERY, "cents": EARN_CENTS,
        })
        threads = max(1, min(connections, os.cpu_count() or 1))
        done = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s",
             "-s", str(script), "--latency", f"http://{HOST}:{port}/"],
            capture_output=True, text=True, check=True,
        )
        return done.stdout

    if warmup:
        wrk(warmup)
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    system_before = meter.sample() if meter else None
    output = wrk(seconds)
    if meter and system_before is not None:
        figure.system_cpu.update(Meter.spent(system_before, meter.sample()))
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    figure.client_cpu += (cpu_after.ru_utime + cpu_after.ru_stime
                          - cpu_before.ru_utime - cpu_before.ru_stime)
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", output)
    failed = int(non_2xx.group(1)) if non_2xx else 0
    figure.requests += requests
    figure.seconds += seconds
    figure.statuses[201] += requests - failed
    figure.statuses[0] += failed
    if socket_errors:
        figure.socket_errors += sum(int(n) for n in socket_errors.groups())
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    for pct, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", output, re.M):
        # wrk reports percentiles only: keep them as one pseudo-sample per percentile and run.
        figure.latencies.setdefault(f"wrk p{pct}", []).append(float(value) * units[unit])
    figure.generator = "wrk"


# -- the setup -----------------------------------------------------------------------------------


def onboard_partner(database_url: str) -> str:
    """Partner BENCH with a contract in force and no return window; its credential's token."""
    from partners import directory
    from partners.directory import ContractTerms, Role

    now = datetime.now(UTC)
    terms = ContractTerms(
        issue_price=Decimal("0.01"), reimbursement_price=Decimal("0.009"),
        breakage_rebate=Decimal("0.002"), monthly_fee_cents=10_000, pending_days=0,
        earn_rate=Decimal(1), rounding_mode="ROUND_HALF_UP", carry_forward_threshold_cents=1_000,
    )
    db = Database.connect(database_url)
    try:
        with db.transaction() as conn:
            directory.onboard_partner(conn, PARTNER, "Bench Ltd", "DE89370400440532013000",
                                      "COBADEFFXXX", now)
            directory.add_contract(conn, PARTNER, terms, datetime(2026, 1, 1, tzinfo=UTC), None,
                                   now, "bench")
            issued = directory.issue_credential(conn, partner=PARTNER, role=Role.PARTNER,
                                                label="bench", now=now)
    finally:
        db.dispose()
    return issued.token


def call(port: int, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("POST", path, json.dumps(body).encode(),
                     {"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        answer = json.loads(response.read())
    finally:
        conn.close()
    if response.status != 201:
        raise RuntimeError(f"{path}: {response.status} {answer}")
    return answer


def seed_members(port: int, token: str) -> list[str]:
    """Members enrolled and funded over HTTP (which also warms the workers up)."""
    auth = {"Authorization": f"Bearer {token}"}

    def seed(index: int) -> str:
        member = call(port, "/v1/members", {}, auth)["id"]
        call(port, "/v1/earn", {"member": member, "lines": [{"amount_cents": SEED_POINTS * 100}]},
             {**auth, "Idempotency-Key": f"seed-{index}"})
        return str(member)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(seed, range(MEMBERS)))


def mix(token: str, members: list[str], run: str) -> RequestMaker:
    """Three earns to one burn, spread over the members, each with a fresh Idempotency-Key."""
    auth = {"Authorization": f"Bearer {token}"}

    def make(worker: int, n: int) -> Request:
        member = members[(worker * 7919 + n) % len(members)]
        headers = {**auth, "Idempotency-Key": f"{run}-{worker}-{n}"}
        if n % BURN_EVERY == BURN_EVERY - 1:
            return "/v1/burn", {"member": member, "points": 1}, headers, "burn"
        return ("/v1/earn", {"member": member, "lines": [{"amount_cents": EARN_CENTS}]},
                headers, "earn")

    return make


def trivial(worker: int, n: int) -> Request:
    return "/trivial", {"worker": worker, "n": n}, {}, "insert"


def queue_length(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM journal_queue").fetchone()
    return int(row[0]) if row else 0


@contextmanager
def servers(url: str, workers: int, workdir: Path, profile: bool) -> Iterator[dict[str, Any]]:
    """``coalition init`` on the scratch database, then the trivial app, the API, the integrator
    and, with ``profile``, a one-worker profiled API (started now: it idles until its turn)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COALITION_")}
    env.update(
        COALITION_DATABASE_URL=url,
        COALITION_LOG_KEY_FILE=str(workdir / "log.key"),
        COALITION_MASTER_KEY_FILE=str(workdir / "master.key"),
        PYTHONUNBUFFERED="1",
    )
    progress("coalition init")
    subprocess.run(coalition_argv("init"), env=env, cwd=workdir, check=True, capture_output=True)
    token = onboard_partner(url)
    here = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    children: list[Child] = []
    try:
        port = free_port()
        children.append(Child.start(
            "trivial", [sys.executable, "-m", "bench.api", "--serve", "trivial", "--port",
                        str(port), "--workers", str(workers)], env, workdir, port))
        port = free_port()
        children.append(Child.start(
            "api", coalition_argv("serve", "--port", str(port), "--workers", str(workers),
                                  "--graceful-timeout", "5"), env, workdir, port))
        children.append(Child.start("integrate", coalition_argv("integrate"), env, workdir))
        if profile:
            (workdir / "profile").mkdir()
            port = free_port()
            children.append(Child.start(
                "profiled", [sys.executable, "-m", "bench.api", "--serve", "profiled", "--port",
                             str(port), "--workers", "1", "--profile-dir",
                             str(workdir / "profile")], env, workdir, port))
        for child in children:
            if child.port is not None:
                child.wait_ready()
        progress("servers ready")
        yield {"token": token, **{child.name: child for child in children}}
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.stop()


# -- the profile ---------------------------------------------------------------------------------

CATEGORIES = [
    ("psycopg (driver)", ("psycopg",)),
    ("SQLAlchemy", ("/sqlalchemy/",)),
    ("marshmallow, flask-smorest, webargs", ("/marshmallow/", "/flask_smorest/", "/webargs/",
                                            "/apispec/")),
    ("Flask, Werkzeug", ("/flask/", "/werkzeug/", "/jinja2/", "/itsdangerous/")),
    ("logging, json, prometheus", ("/logging/", "/json/", "/prometheus_client/")),
    ("coalition code (api, partners, ledger)", ("/api/", "/partners/", "/ledger/")),
]


def category(filename: str, function: str) -> str:
    for name, needles in CATEGORIES:
        if any(needle in filename or needle in function for needle in needles):
            return name
    return "other (stdlib, crypto, builtins)"


def profile_api(child: Child, token: str, members: list[str], run: str, requests: int,
                out: Path) -> list[str]:
    """The profiled API worker serving ``requests`` of the mix (2 connections); where its CPU
    time goes. A number of requests, not seconds, so a busy machine still yields a profile."""
    port = child.port or 0
    try:
        make = mix(token, members, f"{run}-prof")
        auth = {"Authorization": f"Bearer {token}"}
        started = time.perf_counter()

        def send(worker: int) -> None:
            for n in range((ProfiledApp.WARM_UP + requests) // 2):
                path, body, headers, _ = make(worker, n)
                call(port, path, body, {**auth, **headers})

        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(send, range(2)))
        elapsed = time.perf_counter() - started
    finally:
        child.stop()  # the worker writes its last stats as it exits
    stats = pstats.Stats(*[str(p) for p in out.glob("*.prof")])
    counts: Counter[str] = Counter()
    samples: dict[str, list[str]] = {}
    for path in out.glob("*.json"):
        recorded = json.loads(path.read_text())
        counts.update(recorded["counts"])
        samples.update(recorded["samples"])
    return profile_report(stats, counts, samples, elapsed)


def profile_report(stats: pstats.Stats, counts: Counter[str], samples: dict[str, list[str]],
                   elapsed: float) -> list[str]:
    """Round trips per request, wall time by layer, the hottest functions, sampled statements."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(tottime for _, _, tottime, _, _ in raw.values())
    shares: Counter[str] = Counter()
    for (filename, _, function), (_, _, tottime, _, _) in raw.items():
        shares[category(filename, function)] += tottime
    requests = sum(v for k, v in counts.items() if k.endswith(" requests"))
    lines = [f"profiled worker: {requests} requests, {total / max(1, requests) * 1000:.2f} ms of"
             f" CPU each inside the app (cProfile's own overhead included);"
             f" {(ProfiledApp.WARM_UP + requests) / elapsed:.0f} req/s with 1 worker"]
    for path in ("/v1/earn", "/v1/burn"):
        n = counts.get(f"{path} requests", 0)
        if n:
            per = {what: counts.get(f"{path} {what}", 0) / n
                   for what in ("statements", "transactions", "checkouts")}
            lines.append(f"  {path}: {per['statements']:.1f} SQL statements,"
                         f" {per['transactions']:.1f} transactions,"
                         f" {per['checkouts']:.1f} pool checkouts (pre-ping) per request")
    lines.append("  CPU by layer (own time):")
    lines += [f"    {share / total * 100:5.1f}%  {name}" for name, share in shares.most_common()]
    lines.append("  top functions by own time:")
    ranked = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:12]
    for (filename, line, function), (_, calls, tottime, _, _) in ranked:
        where = "/".join(Path(filename).parts[-2:]) if filename != "~" else ""
        lines.append(f"    {tottime / total * 100:5.1f}%  {calls:>7} calls  {function}"
                     f" {where}:{line}" if where else f"    {tottime / total * 100:5.1f}%"
                     f"  {calls:>7} calls  {function}")
    lines.append("  coalition functions by cumulative CPU per request of the mix:")
    ours = [(key, value) for key, value in raw.items()
            if any(part in key[0] for part in ("/api/", "/partners/", "/ledger/"))]
    for (filename, line, function), (_, _, _, cumtime, _) in sorted(
            ours, key=lambda item: item[1][3], reverse=True)[:12]:
        lines.append(f"    {cumtime / max(1, requests) * 1000:6.2f} ms  {function}"
                     f" {'/'.join(Path(filename).parts[-2:])}:{line}")
    for path in ("/v1/earn", "/v1/burn"):
        lines.append(f"  the SQL of one {path} (authentication, then the command):")
        statements = samples.get(path, [])
        lines += [f"    {n:>2}. {statement}" for n, statement in enumerate(statements, 1)]
    return lines


# -- the run -------------------------------------------------------------------------------------


def say(lines: Iterable[str]) -> None:
    for line in lines:
        print(line, flush=True)


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.1f} s] {message}", file=sys.stderr, flush=True)


@dataclass
class Scenario:
    """A figure to fill, the server that serves it, how many connections, what to send."""

    figure: Figure
    server: str
    connections: int
    make: RequestMaker


def benchmark(url: str, args: argparse.Namespace) -> list[Figure]:
    """The scenarios in alternating rounds, then the profile; prints as it goes; the figures."""
    rounds, seconds, warmup = (1, 4.0, 1.0) if args.quick else (3, 10.0, 2.0)
    run_id = uuid.uuid4().hex[:8]
    use_wrk = args.loadgen == "wrk" and shutil.which("wrk") is not None
    say([f"load generator: {'wrk' if use_wrk else 'python threads (http.client)'}"
         + (" (wrk requested but not installed)" if args.loadgen == "wrk" and not use_wrk
            else ""),
         f"gunicorn: {args.workers} sync workers per server (run_gunicorn, as coalition serve);"
         f" {args.connections} client connections; {rounds} round(s) of {seconds:g} s after"
         f" {warmup:g} s warm-up per scenario"])
    with scratch_database(url) as scratch, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with servers(scratch, args.workers, workdir, not args.no_profile) as up:
            members = seed_members(up["api"].port, up["token"])
            progress(f"{len(members)} members seeded")
            scenarios = [
                Scenario(Figure("(a) trivial: JSON in, INSERT + COMMIT"), "trivial",
                         args.connections, trivial),
                Scenario(Figure(f"(b) API: earn/burn {BURN_EVERY - 1}:1 mix"), "api",
                         args.connections, mix(up["token"], members, run_id)),
                Scenario(Figure("(c) API mix, 1 connection (no queueing)"), "api", 1,
                         mix(up["token"], members, f"{run_id}-serial")),
            ]
            # The integrator belongs to the API's cost; it idles (polls) during (a).
            meters = {kind: Meter(scratch, {"app": up[kind].process.pid,
                                            "integrator": up["integrate"].process.pid})
                      for kind in ("trivial", "api")}
            try:
                for round_ in range(rounds):
                    for scenario in scenarios[round_:] + scenarios[:round_]:
                        progress(f"round {round_ + 1}: {scenario.figure.name}")
                        port, meter = up[scenario.server].port, meters[scenario.server]
                        if use_wrk:
                            drive_wrk(scenario.figure, port, scenario.connections, warmup,
                                      seconds, scenario.server, up["token"], members,
                                      f"{run_id}-{round_}", workdir, meter)
                        else:
                            drive(scenario.figure, port, scenario.connections, warmup, seconds,
                                  scenario.make, meter)
            finally:
                for meter in meters.values():
                    meter.close()
            backlog = queue_length(scratch)
            say(["", *report([scenario.figure for scenario in scenarios]),
                 f"integrator backlog right after the last round: {backlog} entries"])
            if not args.no_profile:
                progress("profiling one API worker")
                say(["", *profile_api(up["profiled"], up["token"], members, run_id,
                                      30 if args.quick else 200, workdir / "profile")])
    return [scenario.figure for scenario in scenarios]


def report(figures: list[Figure]) -> list[str]:
    """Throughput, latency and CPU per request of each scenario; the goals, met or not."""
    trivial_figure, api = figures[0], figures[1]
    parts = ("app", "integrator", "postgres", "generator")
    lines = [f"{'scenario':<40} {'req/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'requests':>8}"
             f" {'errors':>6}   CPU ms/req: {'app':>5} {'integ':>5} {'pg':>5} {'gen':>5}"
             "   ceiling req/s"]
    for figure in figures:
        errors = sum(n for status, n in figure.statuses.items() if status >= 400 or status == 0)
        p50, p99 = percentiles(figure)
        cpu = [figure.cpu_per_request(part) for part in parts]
        ceiling = (os.cpu_count() or 1) * 1000 / sum(cpu) if sum(cpu) > 0 else 0.0
        lines.append(f"{figure.name:<40} {figure.throughput:>6.0f} {p50:>7.1f} {p99:>7.1f}"
                     f" {figure.requests:>8} {errors:>6}   {'':>11}"
                     + "".join(f" {c:>5.2f}" for c in cpu) + f"   {ceiling:>13.0f}")
        for label in ("earn", "burn"):
            if figure.latencies.get(label):
                lines.append(f"  {label:<38} {len(figure.latencies[label]) / figure.seconds:>6.0f}"
                             f" {figure.percentile(0.5, label):>7.1f}"
                             f" {figure.percentile(0.99, label):>7.1f}")
        if figure.socket_errors:
            lines.append(f"  {figure.socket_errors} wrk socket errors")
    ratio = api.throughput / trivial_figure.throughput if trivial_figure.throughput else 0.0
    _, api_p99 = percentiles(api)
    app_cost, trivial_cost = (sum(f.cpu_per_request(p) for p in parts[:3])
                              for f in (api, trivial_figure))
    return [
        *lines,
        "",
        "CPU ms/req: app = gunicorn master and workers, integ = coalition integrate, pg ="
        " PostgreSQL backends of the database, gen = the load generator; ceiling = CPUs × 1000"
        " / their sum",
        f"server-side CPU per request, (b)/(a): {app_cost / trivial_cost:.1f}×"
        if trivial_cost > 0 else "server-side CPU: not measured (no /proc)",
        "",
        f"(b)/(a) = {ratio:.3f}  (goal >= {GOAL_RATIO})  -> "
        f"{'met' if ratio >= GOAL_RATIO else 'NOT met'}",
        f"(b) p99 = {api_p99:.1f} ms  (goal <= {GOAL_P99_MS:g} ms)  -> "
        f"{'met' if api_p99 <= GOAL_P99_MS else 'NOT met'}",
    ]


def percentiles(figure: Figure) -> tuple[float, float]:
    if figure.generator == "wrk":  # the mean of each run's reported percentile
        return tuple(  # type: ignore[return-value]
            sum(values) / len(values) * 1000 if values else float("nan")
            for values in (figure.latencies.get("wrk p50", []), figure.latencies.get("wrk p99", []))
        )
    return figure.percentile(0.50), figure.percentile(0.99)


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The REST API under load, beside a trivial one.")
    parser.add_argument("--quick", action="store_true", help="one round of 4 s (under a minute)")
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1) + 1,
                        help="gunicorn workers per server (default 2 × CPUs + 1)")
    parser.add_argument("--connections", type=int, default=8, help="client connections")
    parser.add_argument("--loadgen", choices=["python", "wrk"], default="python")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled worker")
    parser.add_argument("--serve", choices=["trivial", "profiled"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(None if argv is None else list(argv))
    if args.serve:
        serve(args.serve, args.port, args.workers, args.profile_dir)
        return
    url = os.environ.get("COALITION_BENCH_DATABASE_URL", DEFAULT_URL)
    say(machine(url))
    benchmark(url, args)
    print(f"\n(benchmark took {time.monotonic() - STARTED:.0f} s)")


def run(quick: bool) -> list[suite.Figure]:
    """``python -m bench``'s entry: the default scenarios, without the profiled worker (a
    diagnosis, not a figure: ``python -m bench.api`` still runs it); req/s and p99 against (a)."""
    url = os.environ.get("COALITION_BENCH_DATABASE_URL", DEFAULT_URL)
    args = argparse.Namespace(quick=quick, workers=2 * (os.cpu_count() or 1) + 1, connections=8,
                              loadgen="python", no_profile=True)
    trivial_figure, *api_figures = benchmark(url, args)
    base_rate, base_p99 = trivial_figure.throughput, percentiles(trivial_figure)[1]
    out = [
        suite.Figure("api", f"{trivial_figure.name}, {args.connections} connections",
                     base_rate, "req/s"),
        suite.Figure("api", f"{trivial_figure.name}: p99 latency", base_p99, "ms"),
    ]
    for figure in api_figures:
        p99 = percentiles(figure)[1]
        crowded = figure.name.startswith("(b)")
        out += [
            suite.Figure("api", figure.name, figure.throughput, "req/s",
                         baseline="trivial INSERT + COMMIT endpoint",
                         ratio=figure.throughput / base_rate,
                         goal=f"≥ {GOAL_RATIO} × trivial" if crowded else None,
                         met=figure.throughput / base_rate >= GOAL_RATIO if crowded else None),
            suite.Figure("api", f"{figure.name}: p99 latency", p99, "ms",
                         baseline="trivial endpoint's p99", ratio=p99 / base_p99,
                         goal=f"≤ {GOAL_P99_MS:g} ms" if crowded else None,
                         met=p99 <= GOAL_P99_MS if crowded else None),
        ]
    return out


if __name__ == "__main__":
    main()
