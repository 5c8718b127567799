"""Shared fixtures: a migrated database per test, on SQLite or on PostgreSQL.

The backend is chosen by ``COALITION_TEST_DATABASE_URL``: unset, every test runs on a fresh SQLite
file; set (always in CI), on PostgreSQL. Each PostgreSQL test gets its own database cloned from a
template migrated once per session, and dropped afterwards, so tests never see each other's rows.
Under ``CI=true`` an unreachable PostgreSQL fails the run instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import api.tables  # noqa: F401  (request_nonces, the API's own table)
import audit.tables  # noqa: F401
import ledger.tables  # noqa: F401  (registers the tables on the shared metadata)
import partners.tables  # noqa: F401
import settlement.tables  # noqa: F401
from ledger.db import Database, create_engine, upgrade

PG_URL = os.environ.get("COALITION_TEST_DATABASE_URL")


def pytest_report_header() -> str:
    return f"coalition backend: {'postgresql' if PG_URL else 'sqlite'}"


def _admin_engine() -> sa.Engine:
    assert PG_URL is not None
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def _database_url(name: str) -> str:
    assert PG_URL is not None
    url = sa.make_url(PG_URL).set(database=name)
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def template_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated, empty database that each test clones: a PostgreSQL database or a SQLite file."""
    if PG_URL is None:
        path = tmp_path_factory.mktemp("template") / "template.db"
        engine = create_engine(f"sqlite:///{path}")
        upgrade(engine)
        engine.dispose()
        yield str(path)
        return
    name = f"coalition_tmpl_{uuid.uuid4().hex[:12]}"
    try:
        admin = _admin_engine()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL at COALITION_TEST_DATABASE_URL is unreachable: {exc}")
    engine = create_engine(_database_url(name), poolclass=sa.pool.NullPool)
    upgrade(engine)
    engine.dispose()
    yield name
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def database_url(template_database: str, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh migrated database for one test, dropped afterwards."""
    if PG_URL is None:
        path = tmp_path / "coalition.db"
        shutil.copy(template_database, path)
        yield f"sqlite:///{path}"
        return
    name = f"coalition_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield _database_url(name)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database.connect(database_url)
    yield database
    database.dispose()


@pytest.fixture
def postgres_only() -> None:
    if PG_URL is None:
        pytest.skip("needs PostgreSQL: set COALITION_TEST_DATABASE_URL")
