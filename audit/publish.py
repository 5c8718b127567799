"""The operator's side of witnessing: publish a checkpoint once a quorum of witnesses cosigned it.

The operator configures a list of witnesses (submission URL and ``cosignature/v1`` verifier key)
and a quorum k of n. :func:`publish_checkpoint` sends the log's latest signed checkpoint to every
witness with C2SP tlog-witness ``add-checkpoint``, with a consistency proof from the size that
witness last cosigned (tracked in ``witness_heads``). On a 409 it retries once from the size the
witness reports. Each returned cosignature is verified with the witness's key; lines from other
keys are ignored. Only when k distinct witnesses have cosigned is the checkpoint stored in
``cosigned_checkpoints``: the log's note with the cosignature lines appended, which a log verifier
still accepts (it ignores unknown keys) and a witness verifier checks with the witness vkeys.
Without quorum nothing is published.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

import ledger.tables  # noqa: F401  (the checkpoints the published rows point at)
from audit.errors import AuditError
from audit.tables import cosigned_checkpoints, witness_heads
from audit.witness import SIZE_CONTENT_TYPE, build_request
from ledger import merkle
from ledger.errors import LedgerError, SignatureError
from ledger.logstore import SqlLogStore
from ledger.note import Checkpoint, CosignatureVerifier, parse_note, verify_cosignature

__all__ = [
    "HttpPost",
    "Publication",
    "WitnessEndpoint",
    "WitnessOutcome",
    "cosigned_checkpoints",
    "latest_cosigned",
    "parse_witness",
    "publish_checkpoint",
    "witness_heads",
]

#: ``http_post(url, body)`` → (status, content type, body). Network failures raise OSError.
HttpPost = Callable[[str, bytes], tuple[int, str, bytes]]


@dataclass(frozen=True)
class WitnessEndpoint:
    """A witness the operator asks: its submission URL prefix and its cosignature key."""

    url: str
    verifier: CosignatureVerifier

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def add_checkpoint_url(self) -> str:
        return self.url.rstrip("/") + "/add-checkpoint"


def parse_witness(spec: str) -> WitnessEndpoint:
    """``URL=VKEY`` (a vkey has no ``=``: its base64 encodes 33 bytes, so no padding)."""
    url, sep, vkey = spec.rpartition("=")
    if not sep or not url or not vkey:
        raise AuditError(f"a witness is given as URL=VKEY, not {spec!r}")
    if not url.startswith(("http://", "https://")):
        raise AuditError(f"a witness URL must be http:// or https://, not {url!r}")
    return WitnessEndpoint(url, CosignatureVerifier.from_vkey(vkey))


@dataclass(frozen=True)
class WitnessOutcome:
    """What one witness answered."""

    witness: str
    url: str
    ok: bool
    status: int | None
    detail: str
    size: int | None = None
    """The size the witness now holds, when known."""


@dataclass
class Publication:
    """The result of one publication attempt."""

    log: str
    size: int
    quorum: int
    published: bool
    note: str | None = None
    """The cosigned note, when published."""
    witnesses: list[str] = field(default_factory=list)
    """Names of the witnesses whose cosignature verified."""
    outcomes: list[WitnessOutcome] = field(default_factory=list)
    already: bool = False
    """True when this size was published before (no witness was asked)."""


def _check_policy(witnesses: Sequence[WitnessEndpoint], quorum: int) -> None:
    if not witnesses:
        raise AuditError("no witness configured")
    keys = [(w.verifier.name, w.verifier.key_id) for w in witnesses]
    if len(set(keys)) != len(keys):
        raise AuditError("a witness key is listed twice; each witness counts once")
    if isinstance(quorum, bool) or not isinstance(quorum, int) or not 1 <= quorum <= len(keys):
        raise AuditError(f"quorum must be between 1 and {len(keys)} witnesses, not {quorum!r}")


def publish_checkpoint(
    conn: Connection,
    log: str | None,
    witnesses: Sequence[WitnessEndpoint],
    quorum: int,
    http_post: HttpPost,
    now: datetime | None = None,
) -> Publication:
    """Collect cosignatures of ``log``'s latest checkpoint; store it only if ``quorum`` is met.

    Run in a transaction: the witness heads learnt are stored even when the quorum is not met
    (they describe the witnesses, not the publication), the checkpoint only when it is.
    """
    _check_policy(witnesses, quorum)
    store = SqlLogStore(conn)
    log = log or store.current_log()
    if log is None:
        raise AuditError("the ledger has no log yet: run coalition init")
    latest = store.checkpoint(log)
    if latest is None:
        raise AuditError(f"log {log!r} has no signed checkpoint")
    at = now or datetime.now(UTC)
    existing = conn.execute(
        sa.select(cosigned_checkpoints).where(
            cosigned_checkpoints.c.log == log, cosigned_checkpoints.c.size == latest.size
        )
    ).first()
    if existing is not None:
        return Publication(
            log,
            latest.size,
            existing.quorum,
            True,
            existing.note,
            list(existing.witnesses),
            already=True,
        )
    text = parse_note(latest.note).text
    lines: list[str] = []
    result = Publication(log, latest.size, quorum, False)
    for witness in witnesses:
        outcome, line = _ask(conn, store, witness, log, latest.size, latest.note, text, http_post)
        result.outcomes.append(outcome)
        if outcome.size is not None:
            _set_head(conn, witness, log, outcome.size, at)
        if line is not None:
            lines.append(line)
            result.witnesses.append(witness.name)
    if len(result.witnesses) < quorum:
        return result
    note = latest.note + "".join(lines)
    conn.execute(
        cosigned_checkpoints.insert().values(
            log=log,
            size=latest.size,
            note=note,
            witnesses=result.witnesses,
            quorum=quorum,
            published_at=at,
        )
    )
    result.published, result.note = True, note
    return result


def _ask(
    conn: Connection,
    store: SqlLogStore,
    witness: WitnessEndpoint,
    log: str,
    size: int,
    note: str,
    text: str,
    http_post: HttpPost,
) -> tuple[WitnessOutcome, str | None]:
    """Send add-checkpoint (retrying once after a 409); the outcome and the verified line."""
    old = _head(conn, witness, log)
    for attempt in (1, 2):
        if old > size:
            return _failed(witness, None, f"witness holds size {old}, above ours {size}", old), None
        try:
            body = build_request(old, _proof(store, log, old, size), note)
        except LedgerError as exc:
            return _failed(witness, None, f"no proof from size {old}: {exc.message}", old), None
        try:
            status, content_type, answer = http_post(witness.add_checkpoint_url, body)
        except OSError as exc:
            return _failed(witness, None, f"unreachable: {exc}"), None
        reply = answer.decode("utf-8", "replace")
        if status == 409 and attempt == 1:
            reported = _reported_size(content_type, reply)
            if reported is not None and reported != old:
                old = reported
                continue
            return _failed(witness, status, f"conflict: {reply.strip()[:200]}", reported), None
        if status != 200:
            reported = _reported_size(content_type, reply) if status == 409 else None
            return _failed(witness, status, reply.strip()[:200], reported), None
        line = _cosignature(reply, text, witness.verifier)
        if line is None:
            return _failed(witness, status, "no valid cosignature from the witness's key"), None
        return WitnessOutcome(witness.name, witness.url, True, status, "cosigned", size), line
    raise AssertionError("unreachable")  # pragma: no cover


def _failed(
    witness: WitnessEndpoint, status: int | None, detail: str, size: int | None = None
) -> WitnessOutcome:
    return WitnessOutcome(witness.name, witness.url, False, status, detail, size)


def _reported_size(content_type: str, reply: str) -> int | None:
    if content_type.split(";")[0].strip() != SIZE_CONTENT_TYPE:
        return None
    value = reply.removesuffix("\n")
    if not value.isascii() or not value.isdigit() or (len(value) > 1 and value[0] == "0"):
        return None
    return int(value)


def _proof(store: SqlLogStore, log: str, old: int, size: int) -> list[bytes]:
    if old in (0, size):
        return []
    return merkle.consistency_proof(
        old, size, store.nodes(log, merkle.consistency_addresses(old, size))
    )


def _cosignature(reply: str, text: str, verifier: CosignatureVerifier) -> str | None:
    """The first reply line that is ``verifier``'s valid cosignature of ``text``."""
    for line in reply.splitlines():
        if not line.startswith("\u2014 " + verifier.name + " "):
            continue  # another key's line: ignored (tlog-witness)
        try:
            verify_cosignature(line, text, verifier)
        except SignatureError:
            continue
        return line + "\n"
    return None


def _head(conn: Connection, witness: WitnessEndpoint, log: str) -> int:
    size = conn.scalar(
        sa.select(witness_heads.c.size).where(
            witness_heads.c.witness == witness.verifier.vkey, witness_heads.c.log == log
        )
    )
    return int(size) if size is not None else 0


def _set_head(
    conn: Connection, witness: WitnessEndpoint, log: str, size: int, at: datetime
) -> None:
    key = (witness_heads.c.witness == witness.verifier.vkey) & (witness_heads.c.log == log)
    updated = conn.execute(witness_heads.update().where(key).values(size=size, updated_at=at))
    if updated.rowcount == 0:
        conn.execute(
            witness_heads.insert().values(
                witness=witness.verifier.vkey, log=log, size=size, updated_at=at
            )
        )


def latest_cosigned(conn: Connection, log: str | None = None) -> dict | None:
    """The latest published cosigned checkpoint of ``log`` (default: the current log)."""
    log = log or SqlLogStore(conn).current_log()
    if log is None:
        return None
    row = conn.execute(
        sa.select(cosigned_checkpoints)
        .where(cosigned_checkpoints.c.log == log)
        .order_by(cosigned_checkpoints.c.size.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    witnesses = row.witnesses if isinstance(row.witnesses, list) else json.loads(row.witnesses)
    return {
        "log": row.log,
        "size": row.size,
        "root": Checkpoint.parse(parse_note(row.note).text).root.hex(),
        "note": row.note,
        "witnesses": witnesses,
        "quorum": row.quorum,
        "published_at": row.published_at,
    }
