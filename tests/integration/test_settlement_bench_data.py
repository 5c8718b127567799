"""The settlement benchmark's generated month is what the kernel would have booked.

bench/settlement.py does not book its 10 million entries through the kernel: it simulates the
kernel's commands and writes the rows directly. These tests hold it to the kernel at small scale:

- the same commands booked through :class:`~ledger.service.Ledger` give, entry by entry, the same
  postings, lots and lot moves (``book_through_kernel`` refuses any difference), and the two
  databases close and prepare to the same statements, line by line, with the same control total;
- the generated database, log included, passes :func:`audit.verify.verify_database`;
- on PostgreSQL, the bulk path (keys and indexes dropped and rebuilt, the month copied server-side
  for other members) leaves the migrated schema and consistent books, and ``k`` copies settle to
  exactly ``k`` times the points of one.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit.verify import verify_database
from bench import settlement as bench
from ledger import tables as lt
from ledger.consistency import cached_balances, check_consistency, recomputed_balances
from ledger.db import Database, create_engine
from ledger.note import NoteSigner
from settlement import service
from settlement.model import Flow, StatementRun
from tests.conftest import PG_URL

NOW = bench.MONTH.end + timedelta(hours=1)


@pytest.fixture
def twin(template_database: str, tmp_path: Path) -> Iterator[Database]:
    """A second fresh migrated database, beside the test's own ``db``."""
    if PG_URL is None:
        path = tmp_path / "twin.db"
        shutil.copy(template_database, path)
        database = Database.connect(f"sqlite:///{path}")
        yield database
        database.dispose()
        return
    name = f"coalition_twin_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    url = sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    database = Database.connect(url)
    yield database
    database.dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def generate(db: Database, month: bench.Month, **options: object) -> bench.Loaded:
    with db.transaction() as conn:
        return bench.load(conn, month, NoteSigner.generate(bench.ORIGIN), **options)  # type: ignore[arg-type]


def settle(db: Database) -> StatementRun:
    signer = NoteSigner.generate(bench.ORIGIN)
    with db.transaction() as conn:
        service.close_period(conn, bench.MONTH, now=NOW, integrator=bench.Integrator(signer))
    with db.transaction() as conn:
        return service.prepare_statements(conn, bench.MONTH, now=NOW)


def lines(run: StatementRun) -> list[tuple]:
    return [
        (
            line.partner, line.flow.value, line.contract_version, line.points, line.points_gross,
            line.points_reversed, line.points_prior_period, line.amount_cents,
        )
        for line in run.settlement.lines
    ]  # fmt: skip


def test_the_generated_month_is_what_the_kernel_books(db: Database, twin: Database) -> None:
    """Every kind of entry, booked by the kernel and generated: same entries, same statements."""
    planned = list(bench.Month(300, members=10, seed=11).plan())
    assert {p.kind for p in planned} == {
        "EARN",
        "BURN",
        "EARN_REVERSAL",
        "BURN_REVERSAL",
        "EXPIRE",
    }
    assert any(p.funding and len(p.funding) == 2 for p in planned)  # joint promotions
    assert bench.book_through_kernel(db, bench.Month(300, members=10, seed=11)) == 300
    generate(twin, bench.Month(300, members=10, seed=11))
    with db.engine.connect() as booked, twin.engine.connect() as generated:
        assert check_consistency(generated) == []
        assert recomputed_balances(generated) == recomputed_balances(booked)
        assert cached_balances(generated) == cached_balances(booked)
        for table in (lt.entries, lt.postings, lt.lots, lt.lot_moves):
            everything = sa.select(table).order_by(*table.primary_key.columns)
            rows = generated.execute(everything).all()
            assert rows == booked.execute(everything).all(), table.name
            assert rows
    kernel, generator = settle(db), settle(twin)
    assert lines(generator) == lines(kernel)
    assert {line[1] for line in lines(kernel)} >= {"ISSUANCE", "REIMBURSEMENT", "BREAKAGE"}
    assert {line[2] for line in lines(kernel) if line[0] == "SUPER"} == {1, 2}  # repriced
    assert generator.settlement.control == kernel.settlement.control
    assert generator.settlement.control.balanced


def test_a_planned_entry_the_kernel_books_differently_is_refused(db: Database) -> None:
    """book_through_kernel compares entry by entry: a tampered plan is caught at its entry."""
    month = bench.Month(40, members=5, seed=3)
    original = month._next

    def tampered(n: int, now: object) -> bench.Planned:
        planned = original(n, now)  # type: ignore[arg-type]
        if n == 25:
            planned.postings = [(account, amount * 2) for account, amount in planned.postings]
        return planned

    month._next = tampered  # type: ignore[method-assign]
    with pytest.raises(bench.GeneratorDiverged, match="entry k-25"):
        bench.book_through_kernel(db, month)


def test_the_generated_database_passes_the_verifier(db: Database) -> None:
    """2,000 entries with their leaves, tree nodes and checkpoints: the verifier finds nothing."""
    month = bench.Month(2_000, seed=5)
    loaded = generate(db, month)
    assert loaded.checkpoint_size == 2_000
    with db.engine.connect() as conn:
        report = verify_database(conn)
        assert report.findings == []
        assert report.leaves == 2_000
    run = settle(db)
    assert run.settlement.checkpoint.size == 2_000
    assert run.settlement.control.balanced
    for partner in bench.PARTNERS:
        issued = sum(
            line.points
            for line in run.settlement.statement(partner).lines
            if line.flow is Flow.ISSUANCE
        )
        assert issued == -month.balances[f"partner:{partner}:issued"] != 0


def test_the_bulk_path_keeps_the_schema_and_copies_settle_as_many_times(
    db: Database, twin: Database, postgres_only: None
) -> None:
    """Indexes dropped and rebuilt, three server-side copies: same schema, 3 × every line."""
    schema = (
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        " UNION ALL SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
        " FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2, 3"
    )
    with db.engine.connect() as conn:
        migrated = conn.execute(sa.text(schema)).all()
    loaded = generate(db, bench.Month(600, seed=9), check_references=False, copies=3)
    assert loaded.entries == 1_800
    generate(twin, bench.Month(600, seed=9))
    with db.engine.connect() as conn:
        assert conn.execute(sa.text(schema)).all() == migrated
        assert check_consistency(conn) == []
        assert conn.scalar(sa.text("SELECT count(*) FROM entries")) == 1_800
        members = conn.scalar(sa.text("SELECT count(DISTINCT member) FROM lots"))
    with twin.engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(DISTINCT member) FROM lots")) * 3 == members
    tripled, single = settle(db), settle(twin)
    assert [line[:3] for line in lines(tripled)] == [line[:3] for line in lines(single)]
    assert [line[3:7] for line in lines(tripled)] == [
        tuple(3 * n for n in line[3:7]) for line in lines(single)
    ]
    assert tripled.settlement.control.balanced


def test_preparing_reads_the_periods_postings_in_one_pass(db: Database) -> None:
    """Flows and control total come from one aggregate over postings, not one per figure."""
    generate(db, bench.Month(500, seed=4))
    signer = NoteSigner.generate(bench.ORIGIN)
    with db.transaction() as conn:
        service.close_period(conn, bench.MONTH, now=NOW, integrator=bench.Integrator(signer))
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        with db.transaction() as conn:
            run = service.prepare_statements(conn, bench.MONTH, now=NOW)
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)
    assert run.settlement.control.balanced
    assert len([s for s in statements if "FROM postings" in s]) == 1
    assert len([s for s in statements if "FROM lot_moves" in s]) == 1
