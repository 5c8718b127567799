"""Fixtures for end-to-end tests: the real ``coalition`` commands, a real gunicorn, real HTTP.

The ``served`` fixture does what an operator does, on the test's fresh database (``database_url``
of ``tests/conftest.py``): ``coalition init`` with key files in the test's directory, a partner
onboarded with a contract and a partner credential (straight through :mod:`partners.directory`, as
the API tests do), then ``coalition serve`` as a subprocess on a free 127.0.0.1 port with three
gunicorn workers, and — on PostgreSQL, where writers only queue entries — ``coalition integrate``
beside it. Once ``/readyz`` answers, a member is enrolled and earns 100 points over HTTP.

The server runs in its own process group, so a test can SIGKILL the master and every worker at
once (:meth:`Service.kill`) and start it again on the same port and database
(:meth:`Served.start_server`). Teardown stops whatever still runs: SIGTERM to the group, SIGKILL
after a grace period.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import pytest

from ledger.db import Database
from partners import directory
from partners.directory import ContractTerms, Role

HOST = "127.0.0.1"
WORKERS = 3
PARTNER = "SUPER"
PROBLEM_JSON = "application/problem+json"
#: Valid bank details (schwifty checks them) for the partner the fixture onboards.
IBAN, BIC = "DE89370400440532013000", "COBADEFFXXX"
#: What the fixture's member holds once the server is up.
STARTING_POINTS = 100


def coalition_argv(*args: str) -> list[str]:
    """The ``coalition`` console script of this interpreter's environment, with ``args``."""
    script = shutil.which("coalition", path=str(Path(sys.executable).parent))
    if script is not None:
        return [script, *args]
    return [sys.executable, "-c", "from api.cli import main; main()", *args]


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's choice for an ephemeral bind)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def purchase(member: str, cents: int, **extra: Any) -> dict[str, Any]:
    """An earn request body: one ordinary basket line of ``cents`` (1 pt per euro here)."""
    return {"member": member, "lines": [{"amount_cents": cents}], **extra}


@dataclass(frozen=True)
class Reply:
    """One HTTP response, its body decoded when it is JSON."""

    status: int
    headers: dict[str, str]
    body: Any

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0]


class Http:
    """One client connection to the server (reopened when the server closes it).

    Not thread-safe: give each thread its own. gunicorn's sync workers close the connection after
    every response; :mod:`http.client` then reconnects on the next request.
    """

    def __init__(self, port: int, token: str | None = None, timeout: float = 30) -> None:
        self.connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
        self.token = token

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Reply:
        sent = {"Accept": "application/json", **(headers or {})}
        if self.token is not None:
            sent["Authorization"] = f"Bearer {self.token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        try:
            self.connection.request(method, path, body=payload, headers=sent)
            response = self.connection.getresponse()
            raw = response.read()
        except BaseException:
            self.connection.close()
            raise
        reply_headers = {name.lower(): value for name, value in response.getheaders()}
        decoded: Any = raw.decode()
        if reply_headers.get("content-type", "").split(";")[0].endswith("json") and raw:
            decoded = json.loads(raw)
        return Reply(response.status, reply_headers, decoded)

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, body: Any, key: str | None = None) -> Reply:
        return self.request("POST", path, body, {"Idempotency-Key": key} if key else None)

    def close(self) -> None:
        self.connection.close()


@dataclass
class Service:
    """A ``coalition`` subprocess in its own process group, logging to a file."""

    argv: Sequence[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> None:
        assert self.process is None, "already running"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            list(self.argv),
            env=self.env,
            cwd=self.log_path.parent,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own: the master and its workers
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL every process of the group at once: no handler, no cleanup, no goodbye."""
        self._signal_group(signal.SIGKILL)
        self._reap(timeout=10)

    def stop(self, grace: float = 15) -> None:
        """SIGTERM the group (gunicorn shuts down gracefully), SIGKILL it after ``grace``."""
        if self.process is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
        self._reap(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _signal_group(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
            os.killpg(self.process.pid, signum)

    def _reap(self, timeout: float) -> None:
        assert self.process is not None
        self.process.wait(timeout=timeout)
        # Workers of a killed master are reparented; make sure none outlives the test.
        deadline = time.monotonic() + timeout
        while _group_alive(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._log is not None:
            self._log.close()
        self.process, self._log = None, None


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process remains in group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid pgrp ...; comm may hold spaces, so split after its ")".
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@dataclass
class Served:
    """A running ``coalition serve`` over the test's database, and what the fixture set up."""

    database_url: str
    env: dict[str, str]
    port: int
    server: Service
    integrator: Service | None
    token: str
    member: str
    workdir: Path
    clients: list[Http] = field(default_factory=list)

    @property
    def on_postgresql(self) -> bool:
        return self.database_url.startswith("postgresql")

    def client(self, timeout: float = 30) -> Http:
        """A new partner connection (closed at teardown)."""
        http_client = Http(self.port, self.token, timeout)
        self.clients.append(http_client)
        return http_client

    def start_server(self, timeout: float = 30) -> None:
        """Start ``coalition serve`` and wait until ``/readyz`` says ready."""
        self.server.start()
        wait_ready(self.port, self.server, timeout)

    def coalition(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a ``coalition`` command with the server's environment; fail on a non-zero exit."""
        done = subprocess.run(
            coalition_argv(*args), env=self.env, cwd=self.workdir, capture_output=True,
            text=True, timeout=timeout, check=False,
        )
        assert done.returncode == 0, f"coalition {' '.join(args)}: {done.stdout}{done.stderr}"
        return done

    def database(self) -> Database:
        """A direct connection to the server's database, for the test's own checks."""
        return Database.connect(self.database_url)


def wait_ready(port: int, server: Service, timeout: float) -> None:
    """Poll ``/readyz`` until it answers 200; fail with the server's log if it never does."""
    deadline = time.monotonic() + timeout
    probe = Http(port, timeout=2)
    try:
        while time.monotonic() < deadline:
            if not server.running:
                pytest.fail(f"coalition serve exited early:\n{server.log_tail()}")
            try:
                if probe.get("/readyz").status == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.1)
    finally:
        probe.close()
    pytest.fail(f"coalition serve not ready after {timeout} s:\n{server.log_tail()}")


def server_env(database_url: str, workdir: Path) -> dict[str, str]:
    """The environment of every subprocess: this test's database and key files, nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COALITION_")}
    env.update(
        COALITION_DATABASE_URL=database_url,
        COALITION_LOG_KEY_FILE=str(workdir / "log.key"),
        COALITION_MASTER_KEY_FILE=str(workdir / "master.key"),
        COALITION_LOG_ORIGIN="e2e.coalition.local/ledger",
        PYTHONUNBUFFERED="1",
    )
    return env


def onboard_partner(database_url: str) -> str:
    """Partner SUPER with a contract in force and no return window; a token of its credential."""
    now = datetime.now(UTC)
    terms = ContractTerms(
        issue_price=Decimal("0.01"), reimbursement_price=Decimal("0.009"),
        breakage_rebate=Decimal("0.002"), monthly_fee_cents=10_000,
        pending_days=0,  # earned points are available at once, so the tests can spend them
        earn_rate=Decimal(1), rounding_mode="ROUND_HALF_UP", carry_forward_threshold_cents=1_000,
    )
    db = Database.connect(database_url)
    try:
        with db.transaction() as conn:
            directory.onboard_partner(conn, PARTNER, f"{PARTNER} Ltd", IBAN, BIC, now)
            directory.add_contract(conn, PARTNER, terms, datetime(2026, 1, 1, tzinfo=UTC), None,
                                   now, "e2e")
            issued = directory.issue_credential(conn, partner=PARTNER, role=Role.PARTNER,
                                                label="e2e", now=now)
    finally:
        db.dispose()
    return issued.token


def enroll_with_points(client: Http, points: int) -> str:
    """A member enrolled over HTTP who then earns ``points`` over HTTP."""
    enrolled = client.post("/v1/members", {})
    assert enrolled.status == 201, enrolled.body
    member = enrolled.body["id"]
    earned = client.post("/v1/earn", purchase(member, points * 100), key=f"welcome-{member}")
    assert earned.status == 201, earned.body
    assert earned.body["points"] == points, earned.body
    return str(member)


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[Served]:
    """``coalition serve`` (3 workers) on this test's database, with a member holding 100 points."""
    env = server_env(database_url, tmp_path)
    init = subprocess.run(
        coalition_argv("init"), env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    token = onboard_partner(database_url)
    port = free_port()
    server = Service(
        coalition_argv("serve", "--host", HOST, "--port", str(port), "--workers", str(WORKERS),
                       "--graceful-timeout", "5"),
        env, tmp_path / "serve.log",
    )
    integrator = None
    if database_url.startswith("postgresql"):
        integrator = Service(coalition_argv("integrate", "--interval", "0.1"), env,
                             tmp_path / "integrate.log")
    running = Served(database_url, env, port, server, integrator, token, "", tmp_path)
    try:
        running.start_server()
        if integrator is not None:
            integrator.start()
        running.member = enroll_with_points(running.client(), STARTING_POINTS)
        yield running
    finally:
        for client in running.clients:
            client.close()
        server.stop()
        if integrator is not None:
            integrator.stop()
