"""The beancount export: both books in one file that ``bean-check`` accepts, balances intact.

The journal is the reports' March–May 2026 story (earns, a joint promotion, pending points, a
burn and its reversal, an earn reversal, a transfer, expiry, a forfeiture, a EUR settlement),
plus one entry left in the integrator's queue so the export shows both flags. The file is checked
with the ``bean-check`` console script of this virtual environment, then loaded with beancount's
own loader and summed per account: every account equals the ledger's sum of postings. These tests
run on SQLite and, with ``COALITION_TEST_DATABASE_URL``, on PostgreSQL.
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from audit.beancount import COMMODITIES, beancount_account, owner_component, write_beancount
from ledger import tables as lt
from ledger.db import Database
from ledger.model import Account, Book, EntryKind, Posting
from ledger.note import NoteSigner
from ledger.repository import SqlLedgerStore
from ledger.service import Ledger
from tests.integration.test_reports import ORIGIN, STAFF, Scenario, build_ledger

BEAN_CHECK = Path(sys.executable).parent / "bean-check"


@pytest.fixture
def scenario(db: Database) -> Scenario:
    """The reports' ledger, plus a settlement payment booked but not yet integrated."""
    built = build_ledger(db, NoteSigner.generate(ORIGIN))
    with db.transaction() as conn:
        Ledger().post(
            SqlLedgerStore(conn), STAFF, "pay-1",
            kind=EntryKind.PAYMENT, business_time=datetime(2026, 5, 12, tzinfo=UTC),
            postings=[Posting("partner:SUPER:settlement", -1234), Posting("operator:bank", 1234)],
        )
    return built


@pytest.fixture
def export(scenario: Scenario, tmp_path: Path) -> Path:
    out = tmp_path / "books.beancount"
    with scenario.db.engine.connect() as conn, out.open("w", encoding="utf-8") as stream:
        summary = write_beancount(conn, stream)
    assert (summary.transactions, summary.unlogged) == (19, 1)
    return out


def ledger_balances(db: Database) -> dict[str, int]:
    p = lt.postings.c
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(p.account, sa.func.sum(p.amount)).group_by(p.account))
        return {code: int(total) for code, total in rows}


def test_bean_check_accepts_the_export(export: Path) -> None:
    """bean-check (the venv's console script) exits 0: valid syntax, opens, balanced, asserted."""
    assert BEAN_CHECK.exists(), "install the test extra: beancount provides bean-check"
    result = subprocess.run(
        [str(BEAN_CHECK), str(export)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_account_in_the_export_equals_the_ledger(scenario: Scenario, export: Path) -> None:
    """Loaded by beancount, every account sums to the ledger's balance (cents as euros)."""
    from beancount import loader
    from beancount.core import data

    entries, errors, _ = loader.load_file(str(export))
    assert errors == []
    sums: dict[str, Decimal] = defaultdict(Decimal)
    transactions = [e for e in entries if isinstance(e, data.Transaction)]
    for transaction in transactions:
        for posting in transaction.postings:
            sums[(posting.account, posting.units.currency)] += posting.units.number
    expected = {}
    for code, balance in ledger_balances(scenario.db).items():
        book = Account.parse(code).book
        value = Decimal(balance) / 100 if book is Book.EUR else Decimal(balance)
        expected[(beancount_account(code), COMMODITIES[book])] = value
    assert dict(sums) == expected
    assert expected[("Assets:Members:X-alice:Available", "PTS")] == 333
    assert expected[("Assets:Operator:Bank", "EUR")] == Decimal("12.34")
    assert len(transactions) == 19


def test_transactions_carry_entry_id_and_leaf_index(scenario: Scenario, export: Path) -> None:
    """Each logged entry's transaction names its id and leaf; the queued one is flagged '!'."""
    from beancount import loader
    from beancount.core import data

    entries, _, _ = loader.load_file(str(export))
    transactions = [e for e in entries if isinstance(e, data.Transaction)]
    with scenario.db.engine.connect() as conn:
        leaves = {str(entry): int(idx) for entry, idx in conn.execute(
            sa.select(lt.leaves.c.entry_id, lt.leaves.c.idx))}
        ids = {str(i) for i in conn.scalars(sa.select(lt.entries.c.id))}
    assert {t.meta["entry"] for t in transactions} == ids
    for transaction in transactions:
        entry = transaction.meta["entry"]
        if entry in leaves:
            assert transaction.flag == "*"
            assert transaction.meta["leaf"] == leaves[entry]
            assert transaction.meta["log"] == ORIGIN
        else:
            assert transaction.flag == "!"
            assert "leaf" not in transaction.meta
            assert transaction.meta["kind"] == "PAYMENT"


def test_accounts_open_on_the_day_of_first_use(export: Path) -> None:
    """RAIL's issued account is first used on 5 May (Paris), bob's held never."""
    from beancount import loader
    from beancount.core import data

    entries, _, _ = loader.load_file(str(export))
    opened = {e.account: (e.date, e.currencies) for e in entries if isinstance(e, data.Open)}
    assert opened["Equity:Partners:RAIL:Issued"] == (datetime(2026, 5, 5).date(), ["PTS"])
    assert opened["Assets:Members:X-alice:Available"][0] == datetime(2026, 3, 2).date()
    assert opened["Assets:Partners:SUPER:Settlement"][1] == ["EUR"]
    assert "Assets:Members:X-bob:Held" not in opened


def test_a_tampered_balance_assertion_fails_bean_check(export: Path) -> None:
    """The closing assertions are real checks: change one and bean-check exits non-zero."""
    text = export.read_text()
    line = next(x for x in text.splitlines() if " balance Assets:Members:X-alice:Available " in x)
    export.write_text(text.replace(line, line.replace(" 333 PTS", " 334 PTS")))
    result = subprocess.run(
        [str(BEAN_CHECK), str(export)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode != 0


@pytest.mark.parametrize(
    ("owner", "component"),
    [("SUPER", "SUPER"), ("M42", "M42"), ("alice", "X-alice"), ("m_4.2-x", "X-m-5F4-2E2-2Dx")],
)
def test_owner_names_map_one_to_one(owner: str, component: str) -> None:
    """Plain capitalised ids stay; others are escaped behind X- so no two owners collide."""
    assert owner_component(owner) == component


def test_the_cli_writes_the_export(scenario: Scenario, tmp_path: Path) -> None:
    """``coalition audit export --format beancount --out FILE`` writes the same file."""
    from api.cli import main

    out = tmp_path / "cli.beancount"
    env = {"COALITION_DATABASE_URL": scenario.db.engine.url.render_as_string(hide_password=False)}
    result = CliRunner().invoke(
        main, ["audit", "export", "--format", "beancount", "--out", str(out)], env=env
    )
    assert result.exit_code == 0, result.output
    assert "19 transactions (1 not yet logged)" in result.output
    assert out.read_text().count("\n  entry: ") == 19
    refused = CliRunner().invoke(
        main, ["audit", "export", "--format", "beancount", "--out", str(tmp_path)], env=env
    )
    assert refused.exit_code != 0
    assert "directory" in refused.output


def test_an_empty_ledger_exports_a_valid_file(db: Database, tmp_path: Path) -> None:
    """No entries: a header only, still accepted by bean-check."""
    out = tmp_path / "empty.beancount"
    with db.engine.connect() as conn, out.open("w") as stream:
        summary = write_beancount(conn, stream)
    assert summary.transactions == 0
    result = subprocess.run(
        [str(BEAN_CHECK), str(out)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert " open " not in out.read_text()
