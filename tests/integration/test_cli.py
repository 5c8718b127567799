"""The ``coalition`` command line over a real database, as an operator runs it.

Each test points the CLI at a fresh migrated database (``COALITION_DATABASE_URL``) and a key file
in its temporary directory (``COALITION_LOG_KEY_FILE``). Errors must come out as one line and exit
status 1, never a traceback.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.engine import Connection

import api.cli
from api.cli import _database as open_database
from api.cli import main
from api.config import Settings
from ledger import tables as t
from ledger.db import Database
from ledger.note import NoteSigner, NoteVerifier
from ledger.receipts import Receipt, verify_receipt
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Ledger
from tests.conftest import PG_URL

ORIGIN = "cli.coalition.local/ledger"
SUPER = Actor(credential="key-super", partner="SUPER")


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "log.key"


@pytest.fixture
def cli(
    database_url: str, key_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliRunner]:
    """A runner whose environment names this test's database and key files, and nothing else."""
    key_file.parent.mkdir()
    monkeypatch.chdir(tmp_path)  # any file a command writes by default lands here
    # A command's engine lives as long as its process; in-process runs dispose them at the end.
    opened: list[Database] = []

    def tracked_database(settings: Settings) -> Database:
        opened.append(open_database(settings))
        return opened[-1]

    monkeypatch.setattr(api.cli, "_database", tracked_database)
    yield CliRunner(
        env={
            "COALITION_DATABASE_URL": database_url,
            "COALITION_LOG_KEY_FILE": str(key_file),
            "COALITION_LOG_ORIGIN": ORIGIN,
            "COALITION_LOG_KEY": None,
            "COALITION_MASTER_KEY_FILE": str(key_file.with_name("master.key")),
            "COALITION_MASTER_KEY": None,
            "COALITION_DATABASE_ROLE": None,
        }
    )
    for db in opened:
        db.dispose()


def run(cli: CliRunner, *args: str) -> Result:
    return cli.invoke(main, list(args), catch_exceptions=False)


def assert_clean_failure(result: Result, message: str) -> None:
    """Exit status 1 with ``message`` on the terminal and no stack trace."""
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.fixture
def initialised(cli: CliRunner) -> Result:
    result = run(cli, "init")
    assert result.exit_code == 0, result.output
    return result


def book_earns(database_url: str, count: int) -> list[UUID]:
    """Book ``count`` earns through the kernel, as the API would, one transaction each."""
    kernel, db = Ledger(), Database.connect(database_url)
    try:
        with db.transaction() as conn:
            kernel.open_partner(SqlLedgerStore(conn), "SUPER")
            kernel.open_member(SqlLedgerStore(conn), "alice")
        ids = []
        for n in range(count):
            with db.transaction() as conn:
                booking = kernel.earn(
                    SqlLedgerStore(conn),
                    SUPER,
                    str(uuid4()),
                    member="alice",
                    funding={"SUPER": 10 + n},
                    business_time=kernel.clock(),
                )
            ids.append(booking.entry.id)
        return ids
    finally:
        db.dispose()


@contextmanager
def tampering(database_url: str) -> Iterator[Connection]:
    """Raw edits as a DBA makes them, past PostgreSQL's append-only triggers."""
    db = Database.connect(database_url)
    try:
        with db.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            yield conn
    finally:
        db.dispose()


def verifier_key(output: str) -> str:
    """The verifier key printed on a ``… verifier key: <vkey>`` line."""
    (line,) = [line for line in output.splitlines() if "verifier key: " in line]
    return line.split("verifier key: ", 1)[1].strip()


# -- init and the key file ----------------------------------------------------------------------


def test_init_creates_a_private_key_file_and_prints_its_verifier_key(
    cli: CliRunner, key_file: Path
) -> None:
    """init writes the log key with mode 0600 and prints the matching verifier key."""
    result = run(cli, "init")
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    signer = NoteSigner.from_skey(key_file.read_text(encoding="ascii").strip())
    assert signer.name == ORIGIN
    assert verifier_key(result.output) == signer.vkey
    assert f"created log key {key_file}" in result.output


def test_init_twice_is_harmless(
    cli: CliRunner, key_file: Path, initialised: Result, database_url: str
) -> None:
    """A second init keeps the key and the log, and prints the same verifier key."""
    before = key_file.read_bytes()
    again = run(cli, "init")
    assert again.exit_code == 0, again.output
    assert key_file.read_bytes() == before
    assert "created log key" not in again.output
    assert verifier_key(again.output) == verifier_key(initialised.output)
    db = Database.connect(database_url)
    try:
        with db.engine.connect() as conn:
            assert conn.scalar(sa.select(sa.func.count()).select_from(t.logs)) == 1
    finally:
        db.dispose()


def test_a_key_file_readable_by_others_is_refused(
    cli: CliRunner, key_file: Path, initialised: Result
) -> None:
    """A log key with mode 0644 is refused with a one-line message and exit status 1."""
    key_file.chmod(0o644)
    for command in (["keys", "show"], ["integrate", "--once"], ["init"]):
        assert_clean_failure(run(cli, *command), "is readable by others (mode 644); chmod 600")


def test_a_missing_key_file_is_reported(cli: CliRunner) -> None:
    """Commands that need the key say to run init when there is none."""
    assert_clean_failure(run(cli, "keys", "show"), "run `coalition init`")


def test_keys_show_prints_the_verifier_key(cli: CliRunner, initialised: Result) -> None:
    """keys show prints the same verifier key init printed."""
    shown = run(cli, "keys", "show")
    assert shown.exit_code == 0, shown.output
    assert shown.output.strip() == verifier_key(initialised.output)


# -- audit ----------------------------------------------------------------------------------------


def test_audit_verify_passes_on_a_fresh_ledger(cli: CliRunner, initialised: Result) -> None:
    """audit verify --json exits 0 on a newly initialised ledger with an empty log."""
    result = run(cli, "audit", "verify", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True
    assert (report["logs"], report["leaves"], report["findings"]) == ([ORIGIN], 0, [])


def test_audit_verify_passes_on_an_integrated_ledger(
    cli: CliRunner, initialised: Result, database_url: str
) -> None:
    """After booking and integrate --once, audit verify (with the trusted key) exits 0."""
    book_earns(database_url, 3)
    integrated = run(cli, "integrate", "--once", "--batch-size", "2")
    assert integrated.exit_code == 0, integrated.output
    assert "integrated 3 entries" in integrated.output
    result = run(cli, "audit", "verify", "--json", "--key", verifier_key(initialised.output))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["leaves"] == 3


def test_audit_verify_fails_after_tampering(
    cli: CliRunner, initialised: Result, database_url: str
) -> None:
    """An edited posting makes audit verify exit 1 and list the findings."""
    (entry_id, _) = book_earns(database_url, 2)
    assert run(cli, "integrate", "--once").exit_code == 0
    with tampering(database_url) as conn:
        conn.execute(
            t.postings.update()
            .where(t.postings.c.entry_id == entry_id, t.postings.c.amount > 0)
            .values(amount=999)
        )
    result = run(cli, "audit", "verify", "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False
    assert {"entry-altered", "cached-balance"} <= {f["check"] for f in report["findings"]}
    text = run(cli, "audit", "verify")
    assert text.exit_code == 1
    assert any(
        line.startswith("FINDING") and "entry-altered" in line for line in text.output.splitlines()
    )
    assert "FAILED" in text.output


def test_audit_verify_fails_with_an_untrusted_key(
    cli: CliRunner, initialised: Result, database_url: str
) -> None:
    """Checkpoints that do not verify under the auditor's own key fail the audit."""
    stranger = NoteSigner.generate(ORIGIN).vkey
    result = run(cli, "audit", "verify", "--json", "--key", stranger)
    assert result.exit_code == 1
    assert {f["check"] for f in json.loads(result.output)["findings"]} == {"checkpoint-signature"}


def test_audit_prove_prints_a_receipt_that_verifies(
    cli: CliRunner, initialised: Result, database_url: str
) -> None:
    """audit prove prints a JSON receipt (and a tlog-proof) that verifies with the vkey."""
    ids = book_earns(database_url, 5)
    assert run(cli, "integrate", "--once", "--batch-size", "2").exit_code == 0
    proved = run(cli, "audit", "prove", str(ids[3]))
    assert proved.exit_code == 0, proved.output
    found = Receipt.from_json(json.loads(proved.output))
    verifier = NoteVerifier.from_vkey(verifier_key(initialised.output))
    assert verify_receipt(found, [verifier]).body["id"] == str(ids[3])
    tlog = run(cli, "audit", "prove", str(ids[3]), "--format", "tlog-proof")
    assert tlog.exit_code == 0
    assert tlog.output == found.tlog_proof()


def test_audit_prove_of_an_unknown_entry_fails_cleanly(cli: CliRunner, initialised: Result) -> None:
    """audit prove of an id that is not in the log exits 1 with a message."""
    missing = uuid4()
    assert_clean_failure(
        run(cli, "audit", "prove", str(missing)), f"entry {missing} is not in the log"
    )


def test_audit_prove_of_a_malformed_id_is_a_usage_error(cli: CliRunner) -> None:
    """audit prove refuses an argument that is not a UUID before touching the database."""
    result = run(cli, "audit", "prove", "not-a-uuid")
    assert result.exit_code == 2
    assert "not a valid UUID" in result.output


# -- key rotation ---------------------------------------------------------------------------------


def test_keys_rotate_opens_a_new_log_and_the_audit_stays_clean(
    cli: CliRunner, key_file: Path, initialised: Result, database_url: str
) -> None:
    """keys rotate retires the key, starts log …/2 with a new key, and audit verify still passes."""
    old_vkey = verifier_key(initialised.output)
    book_earns(database_url, 2)  # queued: rotate integrates them into the old log first
    rotated = run(cli, "keys", "rotate")
    assert rotated.exit_code == 0, rotated.output
    assert f"log {ORIGIN} closed; new log {ORIGIN}/2" in rotated.output
    new_vkey = verifier_key(rotated.output)
    retired = key_file.with_name(key_file.name + ".retired")
    assert NoteSigner.from_skey(retired.read_text().strip()).vkey == old_vkey
    assert NoteSigner.from_skey(key_file.read_text().strip()).vkey == new_vkey
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    book_earns(database_url, 2)
    assert run(cli, "integrate", "--once").exit_code == 0
    result = run(cli, "audit", "verify", "--json", "--key", old_vkey, "--key", new_vkey)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["logs"] == [ORIGIN, f"{ORIGIN}/2"]
    assert report["leaves"] == 2 + 3  # old log: 2 entries; new log: LOG_START and 2 entries
    assert run(cli, "audit", "verify").exit_code == 0


# -- demo -----------------------------------------------------------------------------------------


@pytest.mark.skipif(PG_URL is not None, reason="the demo runs on an embedded SQLite file")
def test_demo_runs_and_verifies(tmp_path: Path) -> None:
    """demo simulates a small coalition on SQLite and ends with a passing verification."""
    runner = CliRunner(env={"COALITION_LOG_KEY": None})
    database = tmp_path / "d.db"
    result = runner.invoke(
        main,
        ["demo", "--members", "20", "--days", "5", "--database", str(database), "--no-serve"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "verification: OK" in result.output
    assert database.exists()
    assert stat.S_IMODE(database.with_suffix(".key").stat().st_mode) == 0o600
    assert json.loads(database.with_suffix(".receipt.json").read_text())["tlog_proof"]
