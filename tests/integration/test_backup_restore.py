"""Backups and restore as docs/OPERATIONS.md prescribes them: ``pg_dump``, ``pg_restore``, then the
verifier decides whether the restored database is the ledger that was backed up.

The restore is accepted when ``coalition audit verify`` (here :func:`verify_database`, with the log
key obtained out of band) finds nothing and the restored log's latest signed checkpoint is the one
the partners last saw. A backup that was altered before it was restored is caught by the same run.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit.verify import verify_database
from ledger import tables as t
from ledger.db import Database
from ledger.logstore import SqlLogStore
from ledger.note import NoteSigner
from tests.conftest import _admin_engine, _database_url
from tests.integration.conftest import Books
from tests.integration.test_bundle import ORIGIN, Journal, build_journal

pytestmark = pytest.mark.usefixtures("postgres_only")


def _pg_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; the backup procedure of docs/OPERATIONS.md needs it")
    return path


def _libpq_args(url: str) -> list[str]:
    """``pg_dump``/``pg_restore`` connection options for a SQLAlchemy URL."""
    parsed = sa.make_url(url)
    args = ["--host", parsed.host or "127.0.0.1", "--port", str(parsed.port or 5432)]
    if parsed.username:
        args += ["--username", parsed.username]
    return args


@pytest.fixture
def journal(books: Books) -> Journal:
    """A small varied journal, integrated and signed (the bundle tests' journal)."""
    return build_journal(books, NoteSigner.generate(ORIGIN))


@pytest.fixture
def restored_name() -> Iterator[str]:
    """An empty database to restore into, dropped afterwards."""
    name = f"coalition_restore_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield name
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def _backup_and_restore(source_url: str, target: str, dump: Path) -> Database:
    subprocess.run(
        [_pg_tool("pg_dump"), *_libpq_args(source_url), "--format=custom", "--file", str(dump),
         "--dbname", sa.make_url(source_url).database or ""],
        check=True, capture_output=True,
    )
    subprocess.run(
        [_pg_tool("pg_restore"), *_libpq_args(source_url), "--no-owner", "--exit-on-error",
         "--dbname", target, str(dump)],
        check=True, capture_output=True,
    )
    return Database.connect(_database_url(target))


def _state(db: Database) -> tuple[int, list[object]]:
    """How many entries the database holds, and the latest signed checkpoint of each log."""
    with db.engine.connect() as conn:
        store = SqlLogStore(conn)
        entries = int(conn.scalar(sa.select(sa.func.count()).select_from(t.entries)) or 0)
        return entries, [store.checkpoint(origin) for origin, _, _ in store.logs()]


def test_a_restored_backup_verifies_and_ends_on_the_published_checkpoint(
    journal: Journal, database_url: str, restored_name: str, tmp_path: Path
) -> None:
    restored = _backup_and_restore(database_url, restored_name, tmp_path / "backup.dump")
    try:
        with restored.engine.connect() as conn:
            report = verify_database(conn, [journal.signer.verifier])
        assert report.findings == []
        entries, checkpoints = _state(restored)
        assert entries >= len(journal.entries)
        assert all(checkpoint is not None for checkpoint in checkpoints)
        assert (entries, checkpoints) == _state(journal.db)
    finally:
        restored.dispose()


def test_a_backup_altered_before_restore_is_refused_by_the_verifier(
    journal: Journal, database_url: str, restored_name: str, tmp_path: Path
) -> None:
    restored = _backup_and_restore(database_url, restored_name, tmp_path / "backup.dump")
    try:
        # Someone with access to the backup store raises a posting before the restore is checked;
        # the guard-rail triggers are bypassed the way a superuser restoring data could.
        with restored.engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            posting = conn.execute(
                sa.select(t.postings.c.entry_id, t.postings.c.account)
                .where(t.postings.c.amount > 0)
                .limit(1)
            ).one()
            conn.execute(
                t.postings.update()
                .where(t.postings.c.entry_id == posting.entry_id)
                .where(t.postings.c.account == posting.account)
                .values(amount=t.postings.c.amount + 1)
            )
        with restored.engine.connect() as conn:
            report = verify_database(conn, [journal.signer.verifier])
        assert report.findings, "an altered restore must not verify"
    finally:
        restored.dispose()
