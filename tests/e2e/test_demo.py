"""``coalition demo`` end to end: what it prints and writes agrees with the database it leaves.

The demo runs on its own embedded SQLite file whatever the test backend, so these tests run once,
on SQLite.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import xmlschema
from click.testing import CliRunner

from api import demo as demo_module
from api.cli import main
from ledger import tables as lt
from ledger.db import Database
from ledger.logstore import SqlLogStore
from ledger.model import EntryKind
from ledger.note import CosignatureVerifier, parse_note, verify_cosignature
from ledger.repository import SqlLedgerStore
from ledger.service import Ledger
from partners import expiry
from settlement import payments, service
from settlement import tables as st
from tests.conftest import PG_URL
from tests.e2e.conftest import Http, Service, free_port, wait_ready

pytestmark = [
    pytest.mark.skipif(PG_URL is not None, reason="the demo runs on an embedded SQLite file"),
    pytest.mark.slow,
]


def run_demo(directory: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main,
        ["demo", "--members", "20", "--days", "40", "--dir", str(directory), *args],
        catch_exceptions=False,
    )
    return result.exit_code, result.output


def read_env(path: Path) -> dict[str, str]:
    """The ``export NAME=value`` lines the demo wrote, as a shell would read them."""
    env = {}
    for line in filter(None, path.read_text().splitlines()):
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0]
    return env


def test_demo_settles_publishes_verifies_and_reports(tmp_path: Path) -> None:
    code, output = run_demo(tmp_path, "--no-serve")
    assert code == 0, output
    assert "verification: OK" in output
    summary = json.loads((tmp_path / "coalition-demo.summary.json").read_text())
    db = Database.connect(f"sqlite:///{tmp_path / 'coalition-demo.db'}")
    try:
        with db.engine.connect() as conn:
            # The file was created with the demo's page size, in WAL mode.
            assert conn.exec_driver_sql("PRAGMA page_size").scalar() == demo_module.PAGE_SIZE
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            # One month (January) completed in 40 days; it went through the whole workflow.
            assert [p["period"] for p in summary["periods"]] == ["2026-01"]
            run = service.statement_run(conn, "2026-01")
            steps = {
                row.step: row.actor
                for row in conn.execute(
                    sa.select(st.settlement_steps.c.step, st.settlement_steps.c.actor)
                )
            }
            assert steps["PREPARED"] == "finance-anne"
            assert steps["APPROVED"] == steps["POSTED"] == "finance-bruno"
            assert "SETTLED" in steps
            # Per partner: the net printed is the prepared statement's; issued and redeemed are
            # the partner accounts' balances.
            store, kernel = SqlLedgerStore(conn), Ledger()
            statements = {s.partner: s for s in run.settlement.statements}
            assert set(summary["partners"]) == set(statements)
            for code_, figures in summary["partners"].items():
                assert figures["net_cents"] == statements[code_].net_cents
                assert figures["net_cents_by_period"] == {"2026-01": statements[code_].net_cents}
                assert figures["issued_points"] == -kernel.balance(store, f"partner:{code_}:issued")
                assert figures["redeemed_points"] == kernel.balance(
                    store, f"partner:{code_}:redeemed"
                )
                net = f"{statements[code_].net_cents / 100:.2f}"
                assert net in output
            outstanding = conn.scalar(
                sa.text("SELECT sum(balance) FROM balances WHERE account LIKE 'member:%'")
            )
            assert summary["outstanding_points"] == outstanding
            assert summary["breakage_points"] == kernel.balance(store, "program:breakage")
            assert sum(summary["tiers"].values()) == summary["members"] == 20
            # The latest checkpoint is published with both witnesses' valid cosignatures.
            log = SqlLogStore(conn).current_log()
            latest = SqlLogStore(conn).checkpoint(log)
            row = conn.execute(
                sa.text("SELECT size, note FROM cosigned_checkpoints ORDER BY size DESC LIMIT 1")
            ).one()
            assert row.size == latest.size
            note = parse_note(row.note)
            cosigned = 0
            for vkey in summary["witnesses"].values():
                verifier = CosignatureVerifier.from_vkey(vkey)
                lines = [s.line() for s in note.signatures if s.name == verifier.name]
                assert len(lines) == 1
                verify_cosignature(lines[0].rstrip("\n"), note.text, verifier)
                cosigned += 1
            assert cosigned == 2
    finally:
        db.dispose()

    # Files: the payment file validates against the official XSD and pays exactly the payouts.
    payouts = [s for s in run.settlement.statements if s.payable_cents < 0]
    assert payouts, "the rail operator redeemed points: the operator pays it"
    pain = Path(summary["periods"][0]["payment_file"])
    assert pain.exists()
    assert pain.name.endswith("pain.001.001.09.xml")
    schema = xmlschema.XMLSchema(str(payments.schema_path("pain.001.001.09")))
    assert schema.is_valid(pain.read_text(encoding="utf-8"))
    transfers, cents = payments.check_control_sum(pain.read_bytes(), "pain.001.001.09")
    assert (transfers, cents) == (len(payouts), -sum(s.payable_cents for s in payouts))
    for partner in statements:
        for suffix in ("json", "csv", "pdf"):
            assert (
                str(tmp_path / "coalition-demo-files" / "2026-01" / f"2026-01-{partner}.{suffix}")
                in summary["files"]
            )
    for path in summary["files"]:
        assert Path(path).stat().st_size > 0
        assert path in output.replace("\n", "") or Path(path).name in output
    assert (tmp_path / "coalition-demo-files" / "2026-01" / "2026-01-RAIL.pdf").read_bytes()[
        :5
    ] == b"%PDF-"
    assert summary["verification"]["ok"] is True
    assert summary["verification"]["periods"] == {"2026-01": []}

    # The environment file holds working settings and tokens, readable only by its owner.
    env_file = tmp_path / "coalition-demo.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    env = read_env(env_file)
    assert env["PERIOD"] == "2026-01"
    assert {"SUPER_TOKEN", "RAIL_TOKEN", "FINANCE_TOKEN", "AUDITOR_TOKEN", "VKEY"} <= set(env)

    # The receipt it saved verifies offline with the printed key; a tampered one does not.
    receipt = tmp_path / "coalition-demo.receipt.json"
    checked = CliRunner().invoke(
        main, ["audit", "check-receipt", str(receipt), "--key", env["VKEY"]]
    )
    assert checked.exit_code == 0, checked.output
    assert checked.output.startswith("OK: entry ")
    data = json.loads(receipt.read_text())
    data["inclusion_proof"][0] = "00" * 32
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data))
    refused = CliRunner().invoke(
        main, ["audit", "check-receipt", str(tampered), "--key", env["VKEY"]]
    )
    assert refused.exit_code == 1
    assert "Error:" in refused.output
    assert "Traceback" not in refused.output


def test_demo_expires_the_points_of_inactive_members(tmp_path: Path) -> None:
    """The demo's programme expires every point of a member inactive for two months; within 80
    days some members earned once early and never again, and the summary reports the breakage."""
    result = CliRunner().invoke(
        main,
        ["demo", "--members", "120", "--days", "80", "--dir", str(tmp_path), "--no-serve"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "verification: OK" in result.output
    summary = json.loads((tmp_path / "coalition-demo.summary.json").read_text())
    db = Database.connect(f"sqlite:///{tmp_path / 'coalition-demo.db'}")
    try:
        with db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(lt.entries.c.id, lt.entries.c.business_time, lt.entries.c.reason).where(
                    lt.entries.c.kind == EntryKind.EXPIRE.value
                )
            ).all()
            assert len(rows) > 0
            assert summary["entries_by_kind"]["EXPIRE"] == len(rows)
            assert summary["entries"] == conn.scalar(
                sa.select(sa.func.count()).select_from(lt.entries)
            )
            breakage = Ledger().balance(SqlLedgerStore(conn), "program:breakage")
            assert summary["breakage_points"] == breakage > 0
            for entry_id, at, reason in rows:
                assert reason.startswith("inactivity since ")
                member = conn.scalar(
                    sa.select(lt.lots.c.member)
                    .join(lt.lot_moves, lt.lot_moves.c.lot_id == lt.lots.c.id)
                    .where(lt.lot_moves.c.entry_id == entry_id)
                    .limit(1)
                )
                # Its last earn or spend before the expiry is at least two months old.
                last = expiry.last_activity(conn, [member], until=at).get(member)
                assert last is not None
                assert expiry.add_months(last, demo_module.INACTIVITY_MONTHS) <= at
    finally:
        db.dispose()
    assert f"in {len(rows)} EXPIRE entries" in result.output.replace("\n", " ")


def test_demo_refuses_to_overwrite_without_fresh(tmp_path: Path) -> None:
    database = tmp_path / "coalition-demo.db"
    database.write_bytes(b"not a demo")
    code, output = run_demo(tmp_path, "--no-serve")
    assert code != 0
    assert "use --fresh" in output
    assert database.read_bytes() == b"not a demo"


def test_demo_serves_the_api_with_the_credentials_it_prints(tmp_path: Path) -> None:
    """Without --no-serve the demo ends by serving the API on the port asked for."""
    port = free_port()
    argv = [
        sys.executable,
        "-c",
        "from api.cli import main; main()",
        "demo",
        "--members",
        "8",
        "--days",
        "3",
        "--dir",
        str(tmp_path),
        "--port",
        str(port),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COALITION_")}
    demo = Service(argv, env, tmp_path / "demo.log")
    demo.start()
    try:
        wait_ready(port, demo, timeout=120)
        anonymous = Http(port)
        assert anonymous.get("/healthz").status == 200
        anonymous.close()
        shell = read_env(tmp_path / "coalition-demo.env")
        assert shell["API"] == f"http://127.0.0.1:{port}"
        printed = demo.log_tail(200)
        assert f"export AUDITOR_TOKEN={shell['AUDITOR_TOKEN']}" in printed
        auditor, partner = Http(port, shell["AUDITOR_TOKEN"]), Http(port, shell["SUPER_TOKEN"])
        cosigned = auditor.get("/v1/checkpoints/cosigned")
        assert cosigned.status == 200, cosigned.body
        assert len(cosigned.body["witnesses"]) == 2
        # A partner token authenticates (403, not 401) but may not list partners.
        assert partner.get("/v1/partners").status == 403
        auditor.close()
        partner.close()
    finally:
        demo.stop()
