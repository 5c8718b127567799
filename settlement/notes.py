"""A statement as a signed note citing its checkpoint, and the partner's countersignature of it.

The operator signs each statement with the log key (a C2SP signed note, like the checkpoints): the
note's text names the period, the partner, the statement id, the SHA-256 of its canonical JSON,
the net and what is payable, and the checkpoint (origin, size, root hash) the statements were
computed over. Anyone with the log's public key can check that the operator stands by these
numbers, and that they come from a signed prefix of the journal.

The partner countersigns the same text (its UTF-8 bytes) with one of its registered Ed25519 keys;
:func:`countersign` checks the signature with
:func:`partners.directory.verify_partner_signature` and records it. A countersignature says the
partner agrees with the statement; a partner who disagrees opens a dispute instead.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.errors import InvalidRequest
from ledger.note import NoteSigner, parse_note
from ledger.numbers import format_cents
from partners import directory
from settlement import service
from settlement import tables as t
from settlement.model import Statement, StatementRun
from settlement.periods import Period, parse_period
from settlement.statements import digest

#: How far a countersignature's claimed time may lie ahead of the clock.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Countersignature:
    statement_id: str
    key_id: str
    signature: bytes
    signed_at: datetime
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class StatementNote:
    """A statement's signed note and the countersignatures recorded for it."""

    statement_id: str
    partner: str
    note: str
    """The signed note: text, a blank line, the log key's signature line."""
    countersignatures: tuple[Countersignature, ...]

    @property
    def text(self) -> str:
        """What the operator signed and the partner countersigns (ends with a newline)."""
        return parse_note(self.note).text


def note_text(run: StatementRun, statement: Statement, document: bytes) -> str:
    """The text of a statement's note: what it says and the checkpoint it was computed over."""
    checkpoint = run.settlement.checkpoint
    return (
        "coalition settlement statement\n"
        f"period {run.period.label}\n"
        f"partner {statement.partner}\n"
        f"statement {statement.id}\n"
        f"sha256 {base64.b64encode(digest(document)).decode()}\n"
        f"net {format_cents(statement.net_cents)} EUR\n"
        f"payable {format_cents(statement.payable_cents)} EUR\n"
        f"checkpoint {checkpoint.log}\n"
        f"{checkpoint.size}\n"
        f"{base64.b64encode(checkpoint.root).decode()}\n"
    )


def statement_note(
    conn: Connection,
    period: Period | str,
    partner: str,
    *,
    signer: NoteSigner | None = None,
    now: datetime | None = None,
) -> StatementNote:
    """The signed note of a partner's statement; signed and recorded on first request.

    Needs ``signer`` (the log key) and ``now`` the first time; afterwards returns the recorded
    note, whichever key the log uses by then.
    """
    label = _label(period)
    run = service.statement_run(conn, label)
    statement = _statement(run, partner)
    stored = _stored_note(conn, statement.id)
    if stored is None:
        if signer is None or now is None:
            raise InvalidRequest("the statement is not signed yet and no log key is available")
        document = dict(run.statement_documents)[partner]
        note = signer.sign(note_text(run, statement, document))
        conn.execute(
            t.settlement_notes.insert().values(statement_id=statement.id, note=note, created_at=now)
        )
        stored = note
    return StatementNote(statement.id, partner, stored, _countersignatures(conn, statement.id))


def countersign(
    conn: Connection,
    period: Period | str,
    partner: str,
    key_id: str,
    signature: bytes,
    signed_at: datetime,
    *,
    now: datetime,
) -> StatementNote:
    """Check and record a partner's Ed25519 signature of its statement note's text.

    ``signed_at`` is when the partner says it signed: its key must be valid then, and it may not
    lie in the future (beyond :data:`CLOCK_SKEW`) nor before the note existed.
    """
    note = statement_note(conn, period, partner)
    created = conn.scalar(
        sa.select(t.settlement_notes.c.created_at).where(
            t.settlement_notes.c.statement_id == note.statement_id
        )
    )
    if signed_at > now + CLOCK_SKEW or signed_at < created - CLOCK_SKEW:
        raise InvalidRequest("signed_at must lie between the note's signing and now")
    key = directory.verify_partner_signature(
        conn, partner, key_id, note.text.encode("utf-8"), signature, signed_at
    )
    if not any(c.key_id == key.key_id for c in note.countersignatures):
        conn.execute(
            t.settlement_countersignatures.insert().values(
                statement_id=note.statement_id,
                key_id=key.key_id,
                signature=signature,
                signed_at=signed_at,
                recorded_at=now,
            )
        )
    return statement_note(conn, period, partner)


def _statement(run: StatementRun, partner: str) -> Statement:
    try:
        return run.settlement.statement(partner)
    except KeyError:
        raise InvalidRequest(f"{run.period.label} has no statement for {partner}") from None


def _stored_note(conn: Connection, statement_id: str) -> str | None:
    n = t.settlement_notes.c
    return conn.scalar(sa.select(n.note).where(n.statement_id == statement_id))


def _countersignatures(conn: Connection, statement_id: str) -> tuple[Countersignature, ...]:
    c = t.settlement_countersignatures.c
    rows = conn.execute(
        sa.select(t.settlement_countersignatures)
        .where(c.statement_id == statement_id)
        .order_by(c.recorded_at, c.key_id)
    ).all()
    return tuple(
        Countersignature(
            row.statement_id, row.key_id, bytes(row.signature), row.signed_at, row.recorded_at
        )
        for row in rows
    )


def _label(period: Period | str) -> str:
    return (period if isinstance(period, Period) else parse_period(period)).label
