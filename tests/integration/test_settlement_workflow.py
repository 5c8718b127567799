"""The four-eyes settlement workflow over the golden March 2026 example, on SQLite and PostgreSQL.

Ann prepares, Ann approving is refused, Ben approves (the SETTLEMENT entries are posted and
balanced), the pain.001 file of the one payout (RAIL, 3,200.00 €) validates against the XSD and its
control sum adds up, marking paid books PAYMENT entries and the period is settled.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date
from typing import Any

import pytest
import sqlalchemy as sa

import api.cli
from api.cli import main as cli_main
from api.resources.settlement import close_period
from audit.log import events as audit_events
from audit.publish import cosigned_checkpoints
from ledger import merkle
from ledger.consistency import check_consistency
from ledger.errors import InvalidRequest, SignatureError
from ledger.keys import load_key
from ledger.model import EntryKind
from ledger.note import open_checkpoint, open_note, verify_cosignature
from ledger.repository import SqlLedgerStore
from settlement import disputes, notes, outputs, payments, service, workflow
from settlement import tables as st
from settlement.errors import PeriodNotClosed
from settlement.payments import Debtor, PaymentFileError
from settlement.service import WitnessPolicy, WitnessQuorumNotMet
from settlement.workflow import FourEyesViolation, Step, StepOutOfOrder
from tests.integration.test_cli import cli, initialised, key_file  # noqa: F401  (fixtures)
from tests.integration.test_publish import Partners
from tests.integration.test_settlement import (  # noqa: F401  (golden is a fixture)
    APRIL,
    MARCH,
    ORIGIN,
    Coalition,
    golden,
    nets,
    paris,
)

OPERATOR = Debtor("Coalition Operator SAS", "FR14 2004 1010 0505 0001 3M02 606", "PSSTFRPPXXX")
EXECUTION = date(2026, 4, 3)
NETS = {"SUPER": 758_000, "DEPT": 469_500, "RAIL": -320_000, "BANK": 1_415_000}


def step(world: Coalition, name: str, *args: Any, **kwargs: Any) -> Any:
    function = getattr(workflow, name)
    kwargs.setdefault("now", world.clock.now)
    if name in ("approve", "mark_paid"):
        kwargs.setdefault("ledger", world.ledger)
    return world.run(lambda conn: function(conn, *args, **kwargs))


@pytest.fixture
def closed(golden: Coalition) -> Coalition:  # noqa: F811
    """March closed on its checkpoint; the clock on 2 April."""
    golden.after(MARCH).close("2026-03")
    golden.at(paris(4, 2))
    return golden


def test_the_four_eyes_workflow_from_prepare_to_settled(closed: Coalition) -> None:
    world = closed
    with pytest.raises(StepOutOfOrder):
        step(world, "approve", "2026-03", by="ben")
    prepared = step(world, "prepare", "2026-03", by="ann")
    assert (prepared.step, prepared.actor) == (Step.PREPARED, "ann")
    assert step(world, "prepare", "2026-03", by="ann") == prepared  # a retry is harmless
    with pytest.raises(StepOutOfOrder):
        step(world, "payment_file", "2026-03", by="ben", execution_date=EXECUTION, debtor=OPERATOR)

    with pytest.raises(FourEyesViolation) as refused:
        step(world, "approve", "2026-03", by="ann")
    assert refused.value.code == "four-eyes-violation"
    assert "another finance user" in refused.value.message
    assert refused.value.fields() == {"period": "2026-03", "user": "ann"}
    assert world.balance("partner:RAIL:settlement") == 0  # nothing was posted

    posted = step(world, "approve", "2026-03", by="ben")
    assert (posted.step, posted.actor, len(posted.detail["entries"])) == (Step.POSTED, "ben", 14)
    assert step(world, "approve", "2026-03", by="cyd") == posted  # a retry replays
    for code, net in NETS.items():
        assert world.balance(f"partner:{code}:settlement") == net
    with world.db.engine.connect() as conn:
        assert check_consistency(conn) == []

    with pytest.raises(StepOutOfOrder):
        step(world, "mark_paid", "2026-03", "BANKREF-1", by="ben")
    built = step(
        world, "payment_file", "2026-03", by="ben", execution_date=EXECUTION, debtor=OPERATOR
    )
    assert (built.schema, built.transactions, built.control_sum_cents) == (
        "pain.001.001.09",
        1,
        320_000,
    )
    payments.validate_payment_file(built.document, built.schema)
    assert payments.check_control_sum(built.document, built.schema) == (1, 320_000)
    run = world.run(lambda conn: service.statement_run(conn, "2026-03"))
    rail = run.settlement.statement("RAIL")
    text = built.document.decode()
    assert f"<EndToEndId>{rail.id}</EndToEndId>" in text
    assert '<InstdAmt Ccy="EUR">3200.00</InstdAmt>' in text
    assert "<IBAN>GB29NWBK60161331926819</IBAN>" in text
    assert "<IBAN>FR1420041010050500013M02606</IBAN>" in text
    again = step(
        world, "payment_file", "2026-03", by="ann", execution_date=EXECUTION, debtor=OPERATOR
    )
    assert again == built  # stored once

    partial = step(world, "mark_paid", "2026-03", "SCT-20260403-RAIL", by="ben", partners=["RAIL"])
    assert partial.status == "payment_file"
    assert partial.outstanding == ("BANK", "DEPT", "SUPER")
    settled = step(world, "mark_paid", "2026-03", "SCT-20260410-IN", by="ann")
    assert settled.status == "settled"
    assert settled.outstanding == ()
    assert {p.partner: (p.amount_cents, p.bank_reference) for p in settled.payments} == {
        "BANK": (1_415_000, "SCT-20260410-IN"),
        "DEPT": (469_500, "SCT-20260410-IN"),
        "RAIL": (-320_000, "SCT-20260403-RAIL"),
        "SUPER": (758_000, "SCT-20260410-IN"),
    }
    for code in NETS:
        assert world.balance(f"partner:{code}:settlement") == 0
    assert world.balance("operator:bank") == sum(NETS.values()) == 2_322_500
    entries = world.run(
        lambda conn: [
            SqlLedgerStore(conn).load_entry(p.entry_id) for p in workflow.payments(conn, "2026-03")
        ]
    )
    assert {e.kind for e in entries} == {EntryKind.PAYMENT}
    assert entries[0].attributes["bank_reference"] == "SCT-20260410-IN"
    # Paying again books nothing more; the steps are on record, in order, with who took them.
    step(world, "mark_paid", "2026-03", "SCT-AGAIN", by="ben")
    assert world.balance("operator:bank") == 2_322_500
    state = world.run(lambda conn: workflow.workflow_state(conn, "2026-03"))
    assert [(s.step, s.actor) for s in state.steps] == [
        (Step.PREPARED, "ann"),
        (Step.APPROVED, "ben"),
        (Step.POSTED, "ben"),
        (Step.PAYMENT_FILE, "ben"),
        (Step.SETTLED, "ann"),
    ]
    with world.db.engine.connect() as conn:
        assert check_consistency(conn) == []
    world.integrator.integrate_all(world.db)
    assert world.verify("2026-03") == []


def test_the_pain_001_file_validates_and_a_tampered_one_does_not(closed: Coalition) -> None:
    world = closed
    step(world, "prepare", "2026-03", by="ann")
    step(world, "approve", "2026-03", by="ben")
    built = step(
        world, "payment_file", "2026-03", by="ben", execution_date=EXECUTION, debtor=OPERATOR
    )
    payments.validate_payment_file(built.document, "pain.001.001.09")
    # An IBAN a bank would reject: the XSD's pattern refuses it.
    broken = built.document.replace(b"<IBAN>GB29", b"<IBAN>gb-29")
    with pytest.raises(PaymentFileError, match="does not validate"):
        payments.validate_payment_file(broken, "pain.001.001.09")
    # An amount raised behind the header's back: valid XML, but the control sum does not add up.
    padded = built.document.replace(b">3200.00</InstdAmt>", b">3900.00</InstdAmt>")
    payments.validate_payment_file(padded, "pain.001.001.09")
    with pytest.raises(PaymentFileError, match="CtrlSum"):
        payments.check_control_sum(padded, "pain.001.001.09")
    # The .03 variant for banks that still want it, from the same payouts.
    legacy = step(
        world,
        "payment_file",
        "2026-03",
        by="ben",
        execution_date=EXECUTION,
        debtor=OPERATOR,
        schema="pain.001.001.03",
    )
    assert (legacy.transactions, legacy.control_sum_cents) == (1, 320_000)
    payments.validate_payment_file(legacy.document, "pain.001.001.03")
    assert b"urn:iso:std:iso:20022:tech:xsd:pain.001.001.03" in legacy.document


def test_the_operator_account_is_a_programme_setting(closed: Coalition) -> None:
    world = closed
    step(world, "prepare", "2026-03", by="ann")
    step(world, "approve", "2026-03", by="ben")
    with pytest.raises(Exception, match="bank account is not set"):
        step(world, "payment_file", "2026-03", by="ben", execution_date=EXECUTION)
    world.run(lambda conn: payments.set_operator_debtor(conn, OPERATOR, world.clock.now))
    built = step(world, "payment_file", "2026-03", by="ben", execution_date=EXECUTION)
    assert built.transactions == 1


# -- outputs ---------------------------------------------------------------------------------------


def test_outputs_are_hashed_recorded_and_reproducible(closed: Coalition) -> None:
    """JSON is the run's statement (same hash); CSV lines then the net; PDF; invoices for payers."""
    world = closed
    step(world, "prepare", "2026-03", by="ann")
    produced = world.run(
        lambda conn: outputs.statement_outputs(conn, "2026-03", now=world.clock.now)
    )
    by_key = {(o.partner, o.format): o for o in produced}
    assert {fmt for partner, fmt in by_key if partner == "RAIL"} == {"json", "csv", "pdf"}
    assert {fmt for partner, fmt in by_key if partner == "SUPER"} == {
        "json",
        "csv",
        "pdf",
        "invoice",
    }
    run = world.run(lambda conn: service.statement_run(conn, "2026-03"))
    summary = json.loads(run.document)
    cited = {s["partner"]: s["sha256"] for s in summary["statements"]}
    for code in NETS:
        assert by_key[code, "json"].document == dict(run.statement_documents)[code]
        assert by_key[code, "json"].sha256.hex() == cited[code]
    rows = list(csv.DictReader(io.StringIO(by_key["SUPER", "csv"].document.decode())))
    assert [r["flow"] for r in rows if r["row"] == "line"] == [
        "ISSUANCE",
        "REIMBURSEMENT",
        "BREAKAGE",
        "FEE",
    ]
    assert [r["signed_amount"] for r in rows if r["row"] == "line"] == [
        "21780.00",
        "-14250.00",
        "-450.00",
        "500.00",
    ]
    assert {r["row"]: r["signed_amount"] for r in rows if r["row"] != "line"} == {
        "carried_in": "0.00",
        "net": "7580.00",
        "carried_out": "0.00",
        "payable": "7580.00",
    }
    assert by_key["SUPER", "pdf"].document.startswith(b"%PDF-")
    invoice = json.loads(by_key["BANK", "invoice"].document)
    assert (invoice["total_due"], invoice["statement_sha256"]) == ("14150.00", cited["BANK"])
    again = world.run(lambda conn: outputs.statement_outputs(conn, "2026-03", now=world.clock.now))
    assert again == produced  # recorded once, read back byte for byte
    # Rendering afresh from the stored run gives the same CSV bytes.
    assert outputs.render_csv(run, run.settlement.statement("SUPER")) == (
        by_key["SUPER", "csv"].document
    )
    assert outputs.render_pdf(run, run.settlement.statement("SUPER"), "SUPER SA") == (
        by_key["SUPER", "pdf"].document
    )


# -- disputes --------------------------------------------------------------------------------------


def test_a_partner_disputes_its_own_entries_and_finance_decides(closed: Coalition) -> None:
    world = closed
    world.at(paris(3, 5))  # entries of SUPER and RAIL, booked in March
    super_entry = world.earn("SUPER", "alice", 100)
    rail_entry = world.earn("RAIL", "bob", 100)
    world.at(paris(4, 2))

    def open_(partner: str, *ids: Any) -> Any:
        return world.run(
            lambda conn: disputes.open_dispute(
                conn,
                partner,
                list(ids),
                "basket counted twice",
                now=world.clock.now,
                by=f"partner:{partner}",
                period="2026-03",
            )
        )

    with pytest.raises(Exception, match="does not exist"):
        open_("SUPER", rail_entry.id)  # another partner's entry is unknown to SUPER
    dispute = open_("SUPER", super_entry.id)
    assert (dispute.status, dispute.entry_ids) == ("open", (str(super_entry.id),))
    accepted = world.run(
        lambda conn: disputes.accept(
            conn, dispute.id, -2_500, "refund the double count", now=world.clock.now, by="ben"
        )
    )
    assert accepted.status == "accepted"
    assert accepted.decision is not None
    assert accepted.decision.amount_cents == -2_500
    with pytest.raises(disputes.DisputeDecided):
        world.run(
            lambda conn: disputes.reject(conn, dispute.id, "no", now=world.clock.now, by="ben")
        )
    other = open_("RAIL", rail_entry.id)
    rejected = world.run(
        lambda conn: disputes.reject(
            conn, other.id, "the basket was scanned twice", now=world.clock.now, by="ben"
        )
    )
    assert (rejected.status, rejected.decision.reason) == (  # type: ignore[union-attr]
        "rejected",
        "the basket was scanned twice",
    )
    assert [d.id for d in world.run(lambda conn: disputes.disputes(conn, partner="RAIL"))] == [
        other.id
    ]
    # The accepted dispute is April's adjustment line for SUPER.
    step(world, "prepare", "2026-03", by="ann")
    world.after(APRIL).close("2026-04")
    super_ = world.prepare("2026-04").settlement.statement("SUPER")
    assert ("ADJUSTMENT", -2_500) in [(line.flow.value, line.amount_cents) for line in super_.lines]


# -- the statement as a signed note ----------------------------------------------------------------


def test_the_statement_note_cites_the_checkpoint_and_the_partner_countersigns(
    closed: Coalition,
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from partners import directory

    world = closed
    step(world, "prepare", "2026-03", by="ann")
    signer = world.integrator.signer
    note = world.run(
        lambda conn: notes.statement_note(
            conn, "2026-03", "RAIL", signer=signer, now=world.clock.now
        )
    )
    close = world.run(lambda conn: service.period_close(conn, "2026-03"))
    assert close is not None
    opened = open_note(note.note, [signer.verifier])
    assert opened.text == note.text
    assert f"checkpoint {close.checkpoint.log}\n{close.checkpoint.size}\n" in note.text
    assert "net -3200.00 EUR\n" in note.text
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    key_id = world.run(
        lambda conn: directory.add_partner_key(conn, "RAIL", public, paris(3, 1), world.clock.now)
    )
    with pytest.raises(SignatureError):
        world.run(
            lambda conn: notes.countersign(
                conn,
                "2026-03",
                "RAIL",
                key_id,
                private.sign(b"something else"),
                world.clock.now,
                now=world.clock.now,
            )
        )
    signed = world.run(
        lambda conn: notes.countersign(
            conn,
            "2026-03",
            "RAIL",
            key_id,
            private.sign(note.text.encode()),
            world.clock.now,
            now=world.clock.now,
        )
    )
    assert [c.key_id for c in signed.countersignatures] == [key_id]
    again = world.run(lambda conn: notes.statement_note(conn, "2026-03", "RAIL"))
    assert again.note == note.note
    assert len(again.countersignatures) == 1


def test_postgres_refuses_to_change_workflow_facts(closed: Coalition, postgres_only: None) -> None:
    """Steps are never edited nor deleted; no workflow table can be truncated."""
    world = closed
    step(world, "prepare", "2026-03", by="ann")
    step(world, "approve", "2026-03", by="ben")
    for change in (
        st.settlement_steps.delete(),
        st.settlement_steps.update().values(actor="ann"),
        sa.text("TRUNCATE settlement_outputs"),
        sa.text("TRUNCATE settlement_payments"),
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), world.db.transaction() as conn:
            conn.execute(change)


# -- the command line ------------------------------------------------------------------------------


def test_coalition_settle_runs_the_workflow(
    initialised: Any,  # noqa: F811
    golden: Coalition,  # noqa: F811
    cli: Any,  # noqa: F811
    tmp_path: Any,
) -> None:
    """close, prepare, approve (Ann refused), pay-file, mark-paid, statements, verify."""
    ok = lambda *args: run_cli(cli, *args)  # noqa: E731
    assert "closed by ann" in ok("settle", "close", "2026-03", "--as", "ann").output
    assert "4 statements" in ok("settle", "prepare", "2026-03", "--as", "ann").output
    refused = run_cli(cli, "settle", "approve", "2026-03", "--as", "ann", code=1)
    assert "four-eyes-violation" in refused.output
    assert "Traceback" not in refused.output
    assert "14 entries posted" in ok("settle", "approve", "2026-03", "--as", "ben").output
    out = tmp_path / "march.xml"
    made = ok(
        "settle",
        "pay-file",
        "2026-03",
        "--as",
        "ben",
        "--execution-date",
        "2026-04-03",
        "--debtor-name",
        OPERATOR.name,
        "--debtor-iban",
        OPERATOR.iban,
        "--debtor-bic",
        OPERATOR.bic,
        "--out",
        str(out),
    )
    assert "1 transfers, control sum 3200.00 EUR" in made.output
    payments.validate_payment_file(out.read_bytes(), "pain.001.001.09")
    paid = ok("settle", "mark-paid", "2026-03", "--as", "ben", "--reference", "SCT-1")
    assert "2026-03: settled; outstanding: none" in paid.output
    listed = ok("settle", "statements", "2026-03", "--out", str(tmp_path / "out"))
    assert "RAIL: net -3200.00 EUR, payable -3200.00 EUR (operator-pays)" in listed.output
    assert (tmp_path / "out" / "2026-03-SUPER.invoice.json").exists()
    assert (tmp_path / "out" / "2026-03-RAIL.csv").exists()
    assert "reproduce byte for byte" in ok("settle", "verify", "2026-03").output
    with golden.db.engine.connect() as conn:
        audited = audit_events(conn, subject="settlement:2026-03")
    assert sorted((e.action, e.actor) for e in audited) == [
        ("settlement.approve", "ben"),
        ("settlement.close", "ann"),
        ("settlement.mark_paid", "ben"),
        ("settlement.payment_file", "ben"),
        ("settlement.prepare", "ann"),
    ]


def run_cli(runner: Any, *args: str, code: int = 0) -> Any:
    result = runner.invoke(cli_main, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


# -- the witness quorum at close -------------------------------------------------------------------


def specs(partners: Partners) -> tuple[str, ...]:
    """The witnesses as the operator configures them: URL=VKEY."""
    return tuple(f"{e.url}={e.verifier.vkey}" for e in partners.endpoints)


def witnessed_close(
    world: Coalition, partners: Partners, quorum: int, http_post: Any = None
) -> Any:
    """Close March as the API and the CLI do, waiting for ``quorum`` of the two witnesses."""
    return close_period(
        world.db.transaction,
        "2026-03",
        now=world.clock.now,
        by="ann",
        integrator=world.integrator,
        policy=WitnessPolicy(specs(partners), quorum),
        http_post=http_post or partners.http_post,
        record=lambda conn, close: None,  # the API and CLI record the audit event
    )


def published(world: Coalition) -> list[Any]:
    with world.db.engine.connect() as conn:
        return conn.execute(sa.select(cosigned_checkpoints)).all()


def test_a_witnessed_close_rests_on_the_checkpoint_its_quorum_cosigned(
    golden: Coalition,  # noqa: F811
    tmp_path: Any,
) -> None:
    world = golden.after(MARCH)
    partners = Partners(tmp_path, world.integrator.signer)
    close = witnessed_close(world, partners, 2)
    note = close.checkpoint.note
    checkpoint, signed = open_checkpoint(note, [world.integrator.signer.verifier], origin=ORIGIN)
    assert (checkpoint.size, checkpoint.root) == (close.checkpoint.size, close.checkpoint.root)
    lines = note.split("\n\n", 1)[1].splitlines()
    for endpoint in partners.endpoints:
        (line,) = [x for x in lines if x.startswith(f"\u2014 {endpoint.name} ")]
        verify_cosignature(line, signed.text, endpoint.verifier)
    assert sorted(service.close_cosigners(close)) == sorted(e.name for e in partners.endpoints)
    (row,) = published(world)
    assert (row.log, row.size, row.note, row.quorum) == (ORIGIN, checkpoint.size, note, 2)
    stored = world.run(lambda conn: service.period_close(conn, "2026-03"))
    assert stored == close
    calls = len(partners.calls)
    assert witnessed_close(world, partners, 2) == close  # closing twice asks no witness
    assert len(partners.calls) == calls
    world.prepare("2026-03")
    assert world.verify("2026-03") == []


def test_without_the_quorum_the_close_is_refused_and_nothing_is_written(
    golden: Coalition,  # noqa: F811
    tmp_path: Any,
) -> None:
    world = golden.after(MARCH)
    partners = Partners(tmp_path, world.integrator.signer)
    down = partners.endpoints[1].url

    def one_down(url: str, body: bytes) -> tuple[int, str, bytes]:
        if url.startswith(down):
            raise OSError("connection refused")
        return partners.http_post(url, body)

    with pytest.raises(WitnessQuorumNotMet) as refused:
        witnessed_close(world, partners, 2, one_down)
    assert refused.value.code == "witness-quorum-not-met"
    assert "1 of the 2 witness cosignatures" in refused.value.message
    assert "connection refused" in refused.value.message
    assert refused.value.fields()["cosigned_by"] == [partners.endpoints[0].name]
    assert world.run(lambda conn: service.period_close(conn, "2026-03")) is None
    assert published(world) == []
    with pytest.raises(PeriodNotClosed):
        world.prepare("2026-03")
    # Once both witnesses answer, the same close goes through, on the same prefix of the log.
    close = witnessed_close(world, partners, 2)
    assert len(service.close_cosigners(close)) == 2
    # A quorum of one is met by the witness that answers.
    assert witnessed_close(world, partners, 1, one_down) == close


def test_a_witnessed_close_does_not_integrate_in_its_own_transaction(
    golden: Coalition,  # noqa: F811
    tmp_path: Any,
) -> None:
    """A checkpoint must be committed before a witness sees it: the service refuses otherwise."""
    world = golden.after(MARCH)
    partners = Partners(tmp_path, world.integrator.signer)

    def never(conn: Any, checkpoint: Any) -> Any:
        raise AssertionError("no witness may be asked")

    with pytest.raises(InvalidRequest):
        world.run(
            lambda conn: service.close_period(
                conn,
                "2026-03",
                now=world.clock.now,
                integrator=world.integrator,
                cosign=never,
            )
        )
    assert partners.calls == []


def test_coalition_settle_close_waits_for_the_saved_witnesses(
    initialised: Any,  # noqa: F811
    golden: Coalition,  # noqa: F811
    cli: Any,  # noqa: F811
    key_file: Any,  # noqa: F811
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    partners = Partners(tmp_path, load_key(key_file))
    up = {"ok": False}

    def post(url: str, body: bytes) -> tuple[int, str, bytes]:
        if not up["ok"]:
            raise OSError("witness down")
        return partners.http_post(url, body)

    monkeypatch.setattr(api.cli, "_http_post", lambda timeout: post)
    args = [x for spec in specs(partners) for x in ("--witness", spec)]
    assert "no witnesses" in run_cli(cli, "settle", "witnesses").output
    refused = run_cli(cli, "settle", "witnesses", *args, code=2)  # --quorum missing
    assert "--quorum" in refused.output
    bad = run_cli(cli, "settle", "witnesses", *args, "--quorum", "3", code=1)
    assert "quorum must be between 1 and 2" in bad.output
    saved = run_cli(cli, "settle", "witnesses", *args, "--quorum", "2").output
    assert "closes wait for 2 of 2 witnesses" in saved

    missed = run_cli(cli, "settle", "close", "2026-03", "--as", "ann", code=1)
    assert "witness-quorum-not-met" in missed.output
    assert "0 of the 2 witness cosignatures" in missed.output
    assert "Traceback" not in missed.output
    assert golden.run(lambda conn: service.period_close(conn, "2026-03")) is None
    with golden.db.engine.connect() as conn:
        assert audit_events(conn, subject="settlement:2026-03") == []

    up["ok"] = True
    closed = run_cli(cli, "settle", "close", "2026-03", "--as", "ann").output
    assert "cosigned by partner-w1.example/witness, partner-w2.example/witness" in closed
    with golden.db.engine.connect() as conn:
        (event,) = audit_events(conn, subject="settlement:2026-03")
    assert sorted(event.after["witnesses"]) == sorted(e.name for e in partners.endpoints)
    assert "no witnesses" in run_cli(cli, "settle", "witnesses", "--clear").output


def test_coalition_settle_proofs_writes_every_entry_of_a_line(
    initialised: Any,  # noqa: F811
    golden: Coalition,  # noqa: F811
    cli: Any,  # noqa: F811
    key_file: Any,  # noqa: F811
    tmp_path: Any,
) -> None:
    run_cli(cli, "settle", "close", "2026-03", "--as", "ann")
    run_cli(cli, "settle", "prepare", "2026-03", "--as", "ann")
    out = tmp_path / "proofs.jsonl"
    done = run_cli(
        cli, "settle", "proofs", "2026-03", "--partner", "SUPER", "--line", "1", "--out", str(out)
    )
    assert "3 entries, 1980000 points; the line counts 1980000" in done.output
    header, *entries = [json.loads(line) for line in out.read_text().splitlines()]
    assert (header["flow"], header["points"], header["sums_entries"]) == (
        "ISSUANCE",
        1_980_000,
        True,
    )
    checkpoint, _ = open_checkpoint(
        header["checkpoint"]["note"],
        [load_key(key_file).verifier],
        origin=header["checkpoint"]["log"],
    )
    for entry in entries:
        merkle.verify_inclusion(
            bytes.fromhex(entry["leaf_hash"]),
            entry["index"],
            checkpoint.size,
            [bytes.fromhex(h) for h in entry["inclusion_proof"]],
            checkpoint.root,
        )
    assert sum(entry["points"] for entry in entries) == 1_980_000
    fee = run_cli(cli, "settle", "proofs", "2026-03", "--partner", "SUPER", "--line", "4")
    assert "0 entries, 0 points" in fee.output
    assert '"sums_entries": false' in fee.output
    missing = run_cli(
        cli, "settle", "proofs", "2026-03", "--partner", "SUPER", "--line", "9", code=1
    )
    assert "unknown-statement-line" in missing.output
