"""The audit log: every administrative, finance and privacy action, and every staff read of
personal data — who (actor, role, credential), what (action, subject, before/after), when, from
where (source address, request id) and why (reason). PRODUCT.md §8.

Write path: :func:`record` runs inside the transaction of the action it records, so the event
exists exactly when the action committed. It writes one ``audit_events`` row and one
``audit_queue`` row; the integrator (given :class:`AuditQueue`) appends the event to the verifiable
log as an ``AUDIT`` leaf in commit order, chained to the leaf before it and covered by the next
signed checkpoint, then links the event to its leaf in ``audit_leaves``. So the audit log is
append-only (PostgreSQL guard rails), chained and gapless like the journal, and an auditor checks it
with the same keys and the same verifier (docs/AUDITING.md, docs/VERIFYING.md §10).

Leaves are immutable and travel to partners and auditors, so an event never carries a secret or
a personal value: :func:`record` refuses a ``before``/``after`` holding a key that names one
(``token``, ``secret``, ``email``, ``name``, ``phone``, ``birth_date``, ...), and :func:`redact`
replaces such values by ``"[redacted]"`` so the event still says *which* field changed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from audit import tables as at
from audit.errors import AuditError, UnsafeAuditValue
from ledger.canonical import canonical_bytes, format_decimal, format_timestamp, format_uuid
from ledger.integrator import Integrator, QueuedRecord
from ledger.journal import AUDIT
from ledger.note import NoteSigner

#: What a redacted value is replaced by: the event keeps the key, so it says what changed.
REDACTED = "[redacted]"

#: Substrings of a key that name a secret.
_SECRET_WORDS = (
    "secret",
    "token",
    "password",
    "passphrase",
    "private",
    "skey",
    "api_key",
    "apikey",
    "master_key",
    "signing_key",
)
#: Substrings of a key that name a personal value (PRODUCT.md §5: name, e-mail, birth date, phone).
_PERSONAL_WORDS = ("email", "e_mail", "phone", "mobile", "birth", "address", "street", "postcode")
#: Whole words (between underscores) of a key that name a personal value.
_PERSONAL_TOKENS = frozenset({"name", "firstname", "lastname", "surname", "dob", "city", "zip"})
#: Whole words of a key that name a secret.
_SECRET_TOKENS = frozenset({"pin", "seed"})

_ACTION = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audited action, exactly as its leaf records it."""

    id: UUID
    at: datetime
    """When the action happened (the time of its transaction)."""
    actor: str
    """Who acted: a staff account, a partner code or a job name (never a person's name)."""
    role: str
    """The role the actor acted in (admin, finance, privacy, auditor, partner, system)."""
    credential: str | None
    """The id of the credential used (never its token)."""
    request_id: str | None
    """The API request id, to join the event with access logs."""
    source: str | None
    """Where the request came from: the client address as the API saw it, or ``cli``."""
    action: str
    """What was done, as ``noun.verb`` (``partner.status``, ``member.read``)."""
    subject: str | None
    """What it was done to (a partner code, a member id, a credential id)."""
    before: dict[str, Any] | None
    """The subject's relevant fields before the action, redacted."""
    after: dict[str, Any] | None
    """The same fields after the action, redacted."""
    reason: str | None
    """Why: the ticket, the legal basis, the request."""

    def record(self) -> dict[str, Any]:
        """The leaf's ``entry`` member (docs/VERIFYING.md §10)."""
        return {
            "kind": AUDIT,
            "id": format_uuid(self.id),
            "at": format_timestamp(self.at),
            "actor": self.actor,
            "role": self.role,
            "credential": self.credential,
            "request_id": self.request_id,
            "source": self.source,
            "action": self.action,
            "subject": self.subject,
            "before": self.before,
            "after": self.after,
            "reason": self.reason,
        }


def redact(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A copy of ``values`` fit for the audit log: secret and personal values replaced by
    :data:`REDACTED` (recursively), datetimes, UUIDs, decimals and enums written in their profile
    form. Floats are kept and then refused by :func:`record`: money is never a float."""
    if values is None:
        return None
    return {str(key): _redacted(str(key), value) for key, value in values.items()}


def unsafe_paths(values: Mapping[str, Any] | None, path: str = "$") -> list[str]:
    """Where ``values`` holds a secret or personal value that was not redacted."""
    found: list[str] = []
    for key, value in (values or {}).items():
        here = f"{path}.{key}"
        if is_sensitive(str(key)) and value not in (None, REDACTED):
            found.append(here)
        elif isinstance(value, Mapping):
            found += unsafe_paths(value, here)
        elif isinstance(value, list | tuple):
            for n, item in enumerate(value):
                if isinstance(item, Mapping):
                    found += unsafe_paths(item, f"{here}[{n}]")
    return found


def is_sensitive(key: str) -> bool:
    """Whether a key names a secret or a personal value."""
    lowered = key.lower()
    if any(word in lowered for word in (*_SECRET_WORDS, *_PERSONAL_WORDS)):
        return True
    tokens = set(re.split(r"[^a-z0-9]+", lowered))
    return bool(tokens & (_PERSONAL_TOKENS | _SECRET_TOKENS))


def record(
    conn: Connection,
    *,
    actor: str,
    role: str,
    action: str,
    now: datetime,
    credential: str | None = None,
    request_id: str | None = None,
    source: str | None = None,
    subject: str | None = None,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    reason: str | None = None,
) -> AuditEvent:
    """Record one audited action in the caller's transaction; it reaches the log with the next
    integrator batch. Refuses an event that would carry a secret or a personal value."""
    if not actor or not role:
        raise AuditError("an audit event needs an actor and a role")
    if not _ACTION.fullmatch(action):
        raise AuditError(f"action {action!r} is not of the form noun.verb (lowercase)")
    unsafe = unsafe_paths(before, "before") + unsafe_paths(after, "after")
    if unsafe:
        raise UnsafeAuditValue(unsafe)
    event = AuditEvent(
        id=uuid.uuid4(),
        at=now,
        actor=actor,
        role=role,
        credential=credential,
        request_id=request_id,
        source=source,
        action=action,
        subject=subject,
        before=dict(before) if before is not None else None,
        after=dict(after) if after is not None else None,
        reason=reason,
    )
    canonical_bytes(event.record())  # refuses, before anything is written, what cannot be hashed
    conn.execute(at.audit_events.insert().values(_row(event)))
    conn.execute(at.audit_queue.insert().values(event_id=event.id))
    return event


def event_from_row(row: Any) -> AuditEvent:
    """The event an ``audit_events`` row holds."""
    return AuditEvent(
        id=row.id,
        at=row.at,
        actor=row.actor,
        role=row.role,
        credential=row.credential,
        request_id=row.request_id,
        source=row.source,
        action=row.action,
        subject=row.subject,
        before=row.before,
        after=row.after,
        reason=row.reason,
    )


def events(conn: Connection, *, subject: str | None = None, limit: int = 100) -> list[AuditEvent]:
    """The latest events, newest first, optionally about one subject."""
    query = sa.select(at.audit_events).order_by(at.audit_events.c.seq.desc()).limit(limit)
    if subject is not None:
        query = query.where(at.audit_events.c.subject == subject)
    return [event_from_row(row) for row in conn.execute(query)]


class AuditQueue:
    """The audit log's queue, as the integrator takes it (:class:`ledger.integrator.RecordQueue`).

    Pass it to every integrator: ``Integrator(signer, queues=[AuditQueue()])``.
    """

    def queued(self, conn: Connection, limit: int) -> list[QueuedRecord]:
        query = (
            sa.select(at.audit_queue.c.seq, at.audit_events)
            .join(at.audit_events, at.audit_events.c.id == at.audit_queue.c.event_id)
            .order_by(at.audit_queue.c.seq)
            .limit(limit)
        )
        return [
            QueuedRecord(row.seq, AUDIT, event_from_row(row).record())
            for row in conn.execute(query)
        ]

    def integrated(self, conn: Connection, placed: Sequence[tuple[QueuedRecord, str, int]]) -> None:
        conn.execute(
            at.audit_leaves.insert(),
            [
                {"event_id": UUID(record.body["id"]), "log": log, "idx": index}
                for record, log, index in placed
            ],
        )
        conn.execute(
            at.audit_queue.delete().where(
                at.audit_queue.c.seq.in_([record.key for record, _, _ in placed])
            )
        )


def _row(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at,
        "actor": event.actor,
        "role": event.role,
        "credential": event.credential,
        "request_id": event.request_id,
        "source": event.source,
        "action": event.action,
        "subject": event.subject,
        "before": event.before,
        "after": event.after,
        "reason": event.reason,
    }


def _redacted(key: str, value: Any) -> Any:
    if is_sensitive(key) and value is not None:
        return REDACTED
    if isinstance(value, Mapping):
        return redact(value)
    if isinstance(value, list | tuple):
        return [_redacted("", item) for item in value]
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, UUID):
        return format_uuid(value)
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, Enum):
        return value.value
    return value


def log_integrator(signer: NoteSigner, batch_size: int = 1000) -> Integrator:
    """The integrator every process should run: journal entries and audit events, one log."""
    return Integrator(signer, batch_size, queues=[AuditQueue()])
