"""Members: enrollment, coalition cards, customer references, consents, access and erasure.

A member is a pseudonymous id (``m_`` + 24 random hex digits) and a 16-digit coalition card number
whose last digit is a Luhn check digit (PRODUCT.md §5). Nothing else about the member lives outside
the vault: the journal, lots, holds, consents and erasure records carry only the pseudonymous id.
Personal data (name, e-mail, birth date, phone — all optional) is sealed per member by
:mod:`partners.vault` and stored in ``member_vault``; the master key is passed in by the caller.

Rules kept here (docs/PRIVACY.md explains them):

- Consents are appended, never edited: the latest row per purpose is in force, the history stays.
- A partner sees a member's personal data only if the member accepted the terms and either enrolled
  with that partner, or consented to ``sharing`` and the partner serves the member (has linked a
  customer reference). A closed member is visible to no partner.
- Erasure is refused, with the reason recorded in ``erasures``, where the policy requires keeping
  data (open holds at a till, a blocked member under investigation, ...). Otherwise the remaining
  points are forfeited to ``program:breakage`` by one journal entry, the member's data key is
  destroyed (crypto-shredding), customer references are deleted, consents are withdrawn and the
  member is closed. The journal still verifies: it never held anything but the pseudonymous id.

Every function works inside the caller's transaction (``Database.transaction``) and commits
nothing itself. Reads of personal data are to be written to the audit log by the caller (``api``),
which knows who reads and why; this layer cannot import ``audit``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger import tables as lt
from ledger.errors import LedgerError
from ledger.model import MEMBER_ROLES, member_account
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Ledger
from partners import tables as t
from partners import vault
from partners.errors import (
    CustomerRefTaken,
    ErasureRefused,
    InvalidField,
    MemberClosed,
    PartnerSuspended,
    UnknownMember,
    UnknownPartner,
)
from partners.vault import MasterKeys, Sealed

MEMBER_STATUSES = ("active", "blocked", "closed")
CONSENT_PURPOSES = ("terms", "marketing", "profiling", "sharing")

#: Coalition cards: an issuer prefix, an 11-digit serial and a Luhn check digit, 16 digits in all.
CARD_PREFIX = "9250"
CARD_LENGTH = 16
_SERIAL_DIGITS = CARD_LENGTH - len(CARD_PREFIX) - 1

#: The journal's reason on the entry that forfeits an erased member's points.
ERASURE_REASON = "erasure"


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """A member as the coalition knows it: no personal data, only identifiers and state."""

    id: str
    """Pseudonymous id, the owner in the member's ledger account codes."""
    card_number: str
    """16-digit coalition card number; the last digit is a Luhn check digit."""
    status: str
    """``active``, ``blocked`` (cannot be changed by partners, kept for investigation) or
    ``closed`` (final)."""
    enrolled_by: str | None
    """Partner code that enrolled the member; ``None``: the operator."""
    enrolled_at: datetime
    """When the member was enrolled."""
    last_activity_at: datetime | None
    """Last earn or spend, for inactivity expiry and KPIs; ``None`` until the first."""
    version: int
    """Row version, bumped on every change (the API's ETag)."""


@dataclass(frozen=True, slots=True)
class Consent:
    """One recorded consent decision; the latest per purpose is in force."""

    purpose: str
    """``terms``, ``marketing``, ``profiling`` or ``sharing`` (across brands)."""
    granted: bool
    """Given (True) or refused / withdrawn (False)."""
    terms_version: str
    """Version of the text the member saw."""
    recorded_at: datetime
    """When it was recorded."""
    recorded_by: str | None
    """Partner code or staff credential that recorded it."""


@dataclass(frozen=True, slots=True)
class CustomerRef:
    """A partner's own customer reference linked to a member."""

    partner: str
    customer_ref: str
    linked_at: datetime


class Blocker(StrEnum):
    """Reasons an erasure policy may require keeping a member's data for now."""

    OPEN_HOLDS = "open holds"
    """Points are held at a till: the sale in progress must be captured or voided first."""
    PENDING_POINTS = "pending points"
    """Points still inside a partner's return window (a refund may still reverse them)."""
    BLOCKED_MEMBER = "member blocked"
    """The member is blocked, e.g. under a fraud investigation (GDPR Art. 17(3)(e))."""


@dataclass(frozen=True, slots=True)
class ErasurePolicy:
    """What an erasure does with the balance and what makes it refuse (a programme setting)."""

    balance: Literal["forfeit", "refuse_if_positive"] = "forfeit"
    """``forfeit``: remaining points go to breakage; ``refuse_if_positive``: spend them first."""
    blockers: frozenset[Blocker] = field(
        default_factory=lambda: frozenset({Blocker.OPEN_HOLDS, Blocker.BLOCKED_MEMBER})
    )
    """Conditions under which erasure is refused; pending points are forfeited unless listed."""


@dataclass(frozen=True, slots=True)
class Erasure:
    """The outcome of an erasure request, as recorded in ``erasures``."""

    member_id: str
    outcome: str
    """``done`` or ``refused``."""
    reason: str
    """The request's reason when done; why it was refused otherwise."""
    forfeit_entry: UUID | None
    """The EXPIRE entry that moved the remaining points to breakage, if any."""
    decided_at: datetime
    decided_by: str | None
    notify_partners: tuple[str, ...] = ()
    """Partners that held the member's data, to be told of the erasure (GDPR Art. 19)."""


# -- card numbers -------------------------------------------------------------------------------


def luhn_check_digit(payload: str) -> str:
    """The Luhn (mod 10) check digit to append to the digits of ``payload``."""
    total = 0
    for position, char in enumerate(reversed(payload)):
        digit = int(char)
        if position % 2 == 0:  # doubled: these sit at odd positions once the check digit follows
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return str(-total % 10)


def luhn_valid(card: str) -> bool:
    """Whether ``card`` is all digits (at least two) and ends in its Luhn check digit."""
    if not isinstance(card, str) or len(card) < 2 or not card.isascii() or not card.isdigit():
        return False
    return luhn_check_digit(card[:-1]) == card[-1]


def card_number(serial: int) -> str:
    """The coalition card for a serial number: prefix, zero-padded serial, check digit."""
    if not 0 <= serial < 10**_SERIAL_DIGITS:
        raise InvalidField("serial", f"0 ≤ serial < 10^{_SERIAL_DIGITS}")
    payload = f"{CARD_PREFIX}{serial:0{_SERIAL_DIGITS}d}"
    return payload + luhn_check_digit(payload)


def new_card_number() -> str:
    """A random coalition card number (random serials give nothing away about enrollment order)."""
    return card_number(secrets.randbelow(10**_SERIAL_DIGITS))


def normalise_card(card: str) -> str:
    """A card number as typed (spaces or dashes allowed), checked: 16 digits, valid check digit."""
    digits = card.replace(" ", "").replace("-", "") if isinstance(card, str) else ""
    if len(digits) != CARD_LENGTH or not digits.isascii() or not digits.isdigit():
        raise InvalidField("card_number", f"a card number has {CARD_LENGTH} digits")
    if not luhn_valid(digits):
        raise InvalidField("card_number", "the check digit does not match")
    return digits


def new_member_id() -> str:
    """A pseudonymous member id: random, so it reveals nothing (not even enrollment order)."""
    return "m_" + secrets.token_hex(12)


# -- enrollment and lookups ---------------------------------------------------------------------


def enroll(
    conn: Connection,
    *,
    by: str | None,
    personal: Mapping[str, Any] | None,
    customer_ref: str | None,
    now: datetime,
    master_key: MasterKeys,
    terms_version: str | None = None,
    consents: Mapping[str, bool] | None = None,
    ledger: Ledger | None = None,
) -> Member:
    """Enroll a member for partner ``by`` (``None``: the operator) and open its ledger accounts.

    Personal data, if any, is sealed in the vault; ``customer_ref`` links the enrolling partner's
    own reference. With ``terms_version`` the member's acceptance of the terms is recorded, with
    any other ``consents`` given at sign-up under that version.
    """
    if by is not None:
        _require_active_partner(conn, by)
    elif customer_ref is not None:
        raise InvalidField("customer_ref", "only a partner links its own customer reference")
    if consents and terms_version is None:
        raise InvalidField("terms_version", "consents are recorded against a terms version")
    checked = vault.check_personal(personal or {})
    # Every refusal comes before the first write: a business refusal commits the transaction.
    if customer_ref is not None and by is not None:
        _check_customer_ref(customer_ref)
        if _linked_member(conn, by, customer_ref) is not None:
            raise CustomerRefTaken(by, customer_ref)
    for purpose in consents or {}:
        _check_purpose(purpose)
    member_id = new_member_id()
    conn.execute(
        t.members.insert().values(
            id=member_id,
            card_number=_unused_card_number(conn),
            status="active",
            enrolled_by=by,
            enrolled_at=now,
            last_activity_at=None,
            version=1,
        )
    )
    (ledger or Ledger(clock=lambda: now)).open_member(SqlLedgerStore(conn), member_id)
    if checked:
        _store_sealed(conn, member_id, vault.seal(member_id, checked, master_key), now)
    if customer_ref is not None and by is not None:
        link_customer_ref(conn, member_id, partner=by, customer_ref=customer_ref, now=now)
    if terms_version is not None:
        decisions = {"terms": True, **(consents or {})}
        for purpose, granted in decisions.items():
            record_consent(
                conn,
                member_id,
                purpose=purpose,
                granted=granted,
                terms_version=terms_version,
                now=now,
                by=by,
            )
    return member(conn, member_id)


@dataclass(frozen=True, slots=True)
class Enrolment:
    """One enrolment for :func:`enroll_many`: the arguments of :func:`enroll` that vary."""

    by: str | None
    personal: Mapping[str, Any] | None = None
    customer_ref: str | None = None
    terms_version: str | None = None
    consents: Mapping[str, bool] | None = None


def enroll_many(
    conn: Connection,
    enrolments: Sequence[Enrolment],
    *,
    now: datetime,
    master_key: MasterKeys,
    ledger: Ledger | None = None,
) -> list[Member | LedgerError]:
    """Enroll many members in the caller's one transaction, each exactly as :func:`enroll`.

    Per enrolment: the :class:`Member`, or the error that refused it (it then writes nothing, as
    alone, where every refusal comes before the first write or rolls its transaction back). The
    checks are the same and run in list order — a customer reference linked by an earlier
    enrolment of the list is taken — but the partners, references and card numbers are read in a
    few queries, and the members, their ledger accounts, sealed data, references and consents
    are written in one statement per table.
    """
    partner_status: dict[str, LedgerError | None] = {}
    wanted_refs = {
        (e.by, e.customer_ref)
        for e in enrolments
        if e.by is not None and isinstance(e.customer_ref, str)
    }
    taken = _linked_refs(conn, wanted_refs)
    results: list[Member | LedgerError | None] = []
    accepted: list[tuple[int, Enrolment, dict[str, str]]] = []
    for enrolment in enrolments:
        try:
            checked = _check_enrolment(conn, enrolment, partner_status, taken)
        except LedgerError as error:
            results.append(error)
            continue
        if enrolment.customer_ref is not None and enrolment.by is not None:
            taken.add((enrolment.by, enrolment.customer_ref))
        accepted.append((len(results), enrolment, checked))
        results.append(None)  # the member, once written
    if not accepted:
        return [r for r in results if r is not None]
    ids = [new_member_id() for _ in accepted]
    cards = _unused_card_numbers(conn, len(accepted))
    conn.execute(
        t.members.insert(),
        [
            {
                "id": member_id,
                "card_number": card,
                "status": "active",
                "enrolled_by": enrolment.by,
                "enrolled_at": now,
                "last_activity_at": None,
                "version": 1,
            }
            for member_id, card, (_, enrolment, _) in zip(ids, cards, accepted, strict=True)
        ],
    )
    kernel = ledger or Ledger(clock=lambda: now)
    kernel.open_members(SqlLedgerStore(conn), ids)
    sealed, refs, consents = [], [], []
    for member_id, (_, enrolment, checked) in zip(ids, accepted, strict=True):
        if checked:
            box = vault.seal(member_id, checked, master_key)
            sealed.append(
                {
                    "member_id": member_id,
                    "wrapped_key": box.wrapped_key,
                    "master_key_id": box.master_key_id,
                    "ciphertext": box.ciphertext,
                    "updated_at": now,
                }
            )
        if enrolment.customer_ref is not None and enrolment.by is not None:
            refs.append(
                {
                    "partner": enrolment.by,
                    "customer_ref": enrolment.customer_ref,
                    "member_id": member_id,
                    "linked_at": now,
                }
            )
        if enrolment.terms_version is not None:
            for purpose, granted in {"terms": True, **(enrolment.consents or {})}.items():
                consents.append(
                    {
                        "member_id": member_id,
                        "purpose": purpose,
                        "granted": granted,
                        "terms_version": enrolment.terms_version,
                        "recorded_at": now,
                        "recorded_by": enrolment.by,
                    }
                )
    for table, rows in ((t.member_vault, sealed), (t.member_refs, refs), (t.consents, consents)):
        if rows:
            conn.execute(table.insert(), rows)
    enrolled_at = now.astimezone(UTC)
    for member_id, card, (at, enrolment, _) in zip(ids, cards, accepted, strict=True):
        results[at] = Member(member_id, card, "active", enrolment.by, enrolled_at, None, 1)
    return [r for r in results if r is not None]


def _check_enrolment(
    conn: Connection,
    enrolment: Enrolment,
    partner_status: dict[str, LedgerError | None],
    taken: set[tuple[str, str]],
) -> dict[str, str]:
    """:func:`enroll`'s checks, in its order, with the partners and references read in bulk."""
    by, customer_ref, consents = enrolment.by, enrolment.customer_ref, enrolment.consents
    if by is not None:
        if by not in partner_status:
            try:
                _require_active_partner(conn, by)
                partner_status[by] = None
            except LedgerError as error:
                partner_status[by] = error
        refusal = partner_status[by]
        if refusal is not None:
            raise refusal
    elif customer_ref is not None:
        raise InvalidField("customer_ref", "only a partner links its own customer reference")
    if consents and enrolment.terms_version is None:
        raise InvalidField("terms_version", "consents are recorded against a terms version")
    checked = vault.check_personal(enrolment.personal or {})
    if customer_ref is not None and by is not None:
        _check_customer_ref(customer_ref)
        if (by, customer_ref) in taken:
            raise CustomerRefTaken(by, customer_ref)
    for purpose in consents or {}:
        _check_purpose(purpose)
    if enrolment.terms_version is not None:
        # What record_consent checks after the member is written (alone, that rolls back).
        version = enrolment.terms_version
        for granted in {"terms": True, **(consents or {})}.values():  # record_consent's order
            if not isinstance(granted, bool):
                raise InvalidField("granted", "true or false")
            if not isinstance(version, str) or not 1 <= len(version) <= 20:
                raise InvalidField("terms_version", "1–20 characters")
    return checked


def _linked_refs(conn: Connection, refs: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (partner, customer reference) pairs among ``refs`` already linked to a member."""
    r = t.member_refs.c
    found: set[tuple[str, str]] = set()
    by_partner: dict[str, list[str]] = {}
    for partner, ref in refs:
        by_partner.setdefault(partner, []).append(ref)
    for partner, names in by_partner.items():
        for start in range(0, len(names), 900):
            chunk = names[start : start + 900]
            query = sa.select(r.customer_ref).where(r.partner == partner, r.customer_ref.in_(chunk))
            found.update((partner, ref) for ref in conn.scalars(query))
    return found


def _unused_card_numbers(conn: Connection, count: int) -> list[str]:
    """``count`` distinct random card numbers no member holds (:func:`_unused_card_number`)."""
    cards: dict[str, None] = {}
    c = t.members.c
    for _ in range(10):
        drawn = list(dict.fromkeys(new_card_number() for _ in range(count - len(cards))))
        drawn = [card for card in drawn if card not in cards]
        for start in range(0, len(drawn), 900):
            chunk = drawn[start : start + 900]
            held = set(conn.scalars(sa.select(c.card_number).where(c.card_number.in_(chunk))))
            cards.update((card, None) for card in chunk if card not in held)
        if len(cards) == count:
            return list(cards)
    raise RuntimeError("no free card number in 10 draws: is the card space exhausted?")


def member(conn: Connection, member_id: str) -> Member:
    """The member with this id, or :class:`UnknownMember`."""
    row = conn.execute(sa.select(t.members).where(t.members.c.id == member_id)).first()
    if row is None:
        raise UnknownMember(member_id)
    return _member(row)


def member_by_card(conn: Connection, card: str) -> Member:
    """The member holding a card; a mistyped number fails its check digit before any lookup."""
    digits = normalise_card(card)
    row = conn.execute(sa.select(t.members).where(t.members.c.card_number == digits)).first()
    if row is None:
        raise UnknownMember()
    return _member(row)


def member_by_customer_ref(conn: Connection, partner: str, customer_ref: str) -> Member:
    """The member a partner knows under its own customer reference."""
    member_id = _linked_member(conn, partner, customer_ref)
    if member_id is None:
        raise UnknownMember()
    return member(conn, member_id)


def customer_refs(conn: Connection, member_id: str) -> list[CustomerRef]:
    """Every partner reference linked to the member, by partner."""
    rows = conn.execute(
        sa.select(t.member_refs)
        .where(t.member_refs.c.member_id == member_id)
        .order_by(t.member_refs.c.partner, t.member_refs.c.customer_ref)
    )
    return [CustomerRef(r.partner, r.customer_ref, r.linked_at) for r in rows]


def link_customer_ref(
    conn: Connection, member_id: str, *, partner: str, customer_ref: str, now: datetime
) -> CustomerRef:
    """Link a partner's customer reference to a member (idempotent for the same member)."""
    _check_customer_ref(customer_ref)
    _require_open(member(conn, member_id))
    _require_partner(conn, partner)
    existing = conn.execute(
        sa.select(t.member_refs).where(
            t.member_refs.c.partner == partner, t.member_refs.c.customer_ref == customer_ref
        )
    ).first()
    if existing is not None:
        if existing.member_id != member_id:
            raise CustomerRefTaken(partner, customer_ref)
        return CustomerRef(partner, customer_ref, existing.linked_at)
    conn.execute(
        t.member_refs.insert().values(
            partner=partner, customer_ref=customer_ref, member_id=member_id, linked_at=now
        )
    )
    return CustomerRef(partner, customer_ref, now)


def set_status(conn: Connection, member_id: str, status: str) -> Member:
    """Set a member's status; ``closed`` is final (points stay until expiry or erasure)."""
    if status not in MEMBER_STATUSES:
        raise InvalidField("status", f"one of {', '.join(MEMBER_STATUSES)}")
    current = _require_open(_lock_member(conn, member_id))
    if current.status != status:
        _update_member(conn, current, status=status)
    return member(conn, member_id)


# -- consents -----------------------------------------------------------------------------------


def record_consent(
    conn: Connection,
    member_id: str,
    *,
    purpose: str,
    granted: bool,
    terms_version: str,
    now: datetime,
    by: str | None,
) -> Consent:
    """Append a consent decision; earlier decisions stay as history."""
    _check_purpose(purpose)
    if not isinstance(granted, bool):
        raise InvalidField("granted", "true or false")
    if not isinstance(terms_version, str) or not 1 <= len(terms_version) <= 20:
        raise InvalidField("terms_version", "1–20 characters")
    _require_open(member(conn, member_id))
    return _append_consent(conn, member_id, purpose, granted, terms_version, now, by)


def consent_history(conn: Connection, member_id: str) -> list[Consent]:
    """Every consent decision of the member, oldest first."""
    rows = conn.execute(
        sa.select(t.consents)
        .where(t.consents.c.member_id == member_id)
        .order_by(t.consents.c.recorded_at, t.consents.c.id)
    )
    return [
        Consent(r.purpose, r.granted, r.terms_version, r.recorded_at, r.recorded_by) for r in rows
    ]


def current_consents(conn: Connection, member_id: str) -> dict[str, Consent]:
    """The decision in force per purpose (purposes never decided are absent: not granted)."""
    return {consent.purpose: consent for consent in consent_history(conn, member_id)}


def visible_to_partner(conn: Connection, member_id: str, partner: str) -> bool:
    """Whether ``partner`` may see the member's personal data (docs/PRIVACY.md, partners).

    Only with the terms accepted, and then for the partner the member enrolled with, or for a
    partner that serves the member (a linked customer reference) if the member consented to
    ``sharing`` across brands. A closed member is visible to nobody.
    """
    found = member(conn, member_id)
    consents = current_consents(conn, member_id)
    if found.status == "closed" or not _granted(consents, "terms"):
        return False
    if found.enrolled_by == partner:
        return True
    serves = conn.scalar(
        sa.select(sa.func.count())
        .select_from(t.member_refs)
        .where(t.member_refs.c.member_id == member_id, t.member_refs.c.partner == partner)
    )
    return bool(serves) and _granted(consents, "sharing")


# -- personal data ------------------------------------------------------------------------------


def set_personal_data(
    conn: Connection,
    member_id: str,
    personal: Mapping[str, Any],
    *,
    now: datetime,
    master_key: MasterKeys,
) -> None:
    """Replace the member's personal data, sealed under a fresh data key."""
    _require_open(member(conn, member_id))
    _store_sealed(conn, member_id, vault.seal(member_id, personal, master_key), now)


def personal_data(conn: Connection, member_id: str, master_key: MasterKeys) -> dict[str, str]:
    """The member's personal data in clear (``{}`` if none was given).

    Raises :class:`PersonalDataErased` after erasure. The caller writes the read to the audit log.
    """
    member(conn, member_id)
    sealed = _load_sealed(conn, member_id)
    return {} if sealed is None else vault.unseal(member_id, sealed, master_key)


def rotate_master_key(
    conn: Connection, master_key: vault.Keyring, *, now: datetime, limit: int | None = None
) -> int:
    """Re-wrap data keys under the keyring's current key; returns how many were re-wrapped.

    Ciphertexts are untouched. Run until it returns 0, then retire the old key for good.
    """
    current = master_key.current.key_id
    query = (
        sa.select(t.member_vault)
        .where(t.member_vault.c.wrapped_key.is_not(None), t.member_vault.c.master_key_id != current)
        .order_by(t.member_vault.c.member_id)
        .limit(limit)
    )
    rows = conn.execute(query).all()
    for row in rows:
        sealed = vault.rewrap(row.member_id, _sealed(row), master_key)
        _store_sealed(conn, row.member_id, sealed, now)
    return len(rows)


# -- the right of access ------------------------------------------------------------------------


def export_member(conn: Connection, member_id: str, master_key: MasterKeys) -> dict[str, Any]:
    """Everything the coalition holds about one member, JSON-ready (GDPR Art. 15 and 20).

    Profile, personal data, consent history, customer references, balances, lots, the member's
    side of every journal entry and any erasure decisions. Other members appear nowhere: entries
    show only the amounts on this member's own accounts.
    """
    found = member(conn, member_id)
    sealed = _load_sealed(conn, member_id)
    if sealed is None:
        personal, state = None, "none"
    elif sealed.shredded:
        personal, state = None, "erased"
    else:
        personal, state = vault.unseal(member_id, sealed, master_key), "present"
    return {
        "format": "coalition/member-export/v1",
        "member": _member_json(found),
        "personal_data": personal,
        "personal_data_state": state,
        "consents": [_consent_json(c) for c in consent_history(conn, member_id)],
        "customer_refs": [
            {"partner": r.partner, "customer_ref": r.customer_ref, "linked_at": _iso(r.linked_at)}
            for r in customer_refs(conn, member_id)
        ],
        "balances": _balances(conn, member_id),
        "lots": _lots_json(conn, member_id),
        "entries": _entries_json(conn, member_id),
        "erasures": _erasures_json(conn, member_id),
    }


# -- erasure ------------------------------------------------------------------------------------


def erase(
    conn: Connection,
    member_id: str,
    *,
    now: datetime,
    by: str,
    reason: str,
    policy: ErasurePolicy | None = None,
    ledger: Ledger | None = None,
) -> Erasure:
    """Erase a member (GDPR Art. 17), or refuse with the reason recorded.

    A refusal writes an ``erasures`` row and raises :class:`ErasureRefused` (a business refusal,
    so the edge's transaction commits the record). Otherwise, in this transaction: the remaining
    available and pending points are forfeited to ``program:breakage`` by one EXPIRE entry, the
    data key is destroyed, customer references are deleted, granted consents are withdrawn, the
    member is closed and the erasure is recorded. Erasing an erased member returns the first
    outcome. No master key is needed: destroying a wrapped key does not require reading it.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidField("reason", "an erasure needs a reason")
    policy = policy or ErasurePolicy()
    found = _lock_member(conn, member_id)
    earlier = _erasure_done(conn, member_id)
    if earlier is not None:
        return earlier
    store = SqlLedgerStore(conn)
    balances = store.lock_accounts([member_account(member_id, role) for role in MEMBER_ROLES])
    points = {role: balances[member_account(member_id, role)] for role in MEMBER_ROLES}
    refusals = _refusals(conn, policy, found, points)
    if refusals:
        _record_erasure(conn, member_id, "refused", "; ".join(refusals), None, now, by)
        raise ErasureRefused(member_id, refusals)
    forfeit_entry = None
    if points["available"] + points["pending"]:
        booking = (ledger or Ledger(clock=lambda: now)).forfeit(
            store,
            Actor(credential=by),
            f"erasure:{member_id}",
            member=member_id,
            business_time=now,
            reason=ERASURE_REASON,
        )
        forfeit_entry = booking.entry.id
    notify = _partners_holding_data(conn, found)
    _shred(conn, member_id, now)
    conn.execute(t.member_refs.delete().where(t.member_refs.c.member_id == member_id))
    _withdraw_consents(conn, member_id, now, by)
    _update_member(conn, found, status="closed")
    _record_erasure(conn, member_id, "done", reason, forfeit_entry, now, by)
    return Erasure(member_id, "done", reason, forfeit_entry, now, by, notify)


def _refusals(
    conn: Connection, policy: ErasurePolicy, found: Member, points: Mapping[str, int]
) -> list[str]:
    """Every reason the policy gives to keep the member's data now (empty: erase)."""
    reasons = []
    if Blocker.OPEN_HOLDS in policy.blockers:
        holds = conn.scalar(
            sa.select(sa.func.count())
            .select_from(lt.holds)
            .where(lt.holds.c.member == found.id, lt.holds.c.status == "open")
        )
        if holds:
            reasons.append(f"{Blocker.OPEN_HOLDS}: {holds} hold(s) at a till")
    if Blocker.PENDING_POINTS in policy.blockers and points["pending"]:
        reasons.append(f"{Blocker.PENDING_POINTS}: {points['pending']} points")
    if Blocker.BLOCKED_MEMBER in policy.blockers and found.status == "blocked":
        reasons.append(str(Blocker.BLOCKED_MEMBER))
    if policy.balance == "refuse_if_positive" and sum(points.values()):
        reasons.append(f"positive balance: {sum(points.values())} points")
    return reasons


def _shred(conn: Connection, member_id: str, now: datetime) -> None:
    conn.execute(
        t.member_vault.update()
        .where(t.member_vault.c.member_id == member_id)
        .values(wrapped_key=None, updated_at=now)
    )


def _withdraw_consents(conn: Connection, member_id: str, now: datetime, by: str) -> None:
    for consent in current_consents(conn, member_id).values():
        if consent.granted:
            _append_consent(conn, member_id, consent.purpose, False, consent.terms_version, now, by)


def _partners_holding_data(conn: Connection, found: Member) -> tuple[str, ...]:
    linked = {ref.partner for ref in customer_refs(conn, found.id)}
    if found.enrolled_by is not None:
        linked.add(found.enrolled_by)
    return tuple(sorted(linked))


def _erasure_done(conn: Connection, member_id: str) -> Erasure | None:
    row = conn.execute(
        sa.select(t.erasures)
        .where(t.erasures.c.member_id == member_id, t.erasures.c.outcome == "done")
        .order_by(t.erasures.c.id)
    ).first()
    if row is None:
        return None
    return Erasure(member_id, "done", row.reason, row.forfeit_entry, row.decided_at, row.decided_by)


def _record_erasure(
    conn: Connection,
    member_id: str,
    outcome: str,
    reason: str,
    forfeit_entry: UUID | None,
    now: datetime,
    by: str,
) -> None:
    conn.execute(
        t.erasures.insert().values(
            member_id=member_id,
            outcome=outcome,
            reason=reason,
            forfeit_entry=forfeit_entry,
            decided_at=now,
            decided_by=by,
        )
    )


# -- internals ----------------------------------------------------------------------------------


def _member(row: Any) -> Member:
    return Member(
        row.id,
        row.card_number,
        row.status,
        row.enrolled_by,
        row.enrolled_at,
        row.last_activity_at,
        row.version,
    )


def _lock_member(conn: Connection, member_id: str) -> Member:
    """The member row, locked until the transaction ends (PostgreSQL; SQLite locks the file)."""
    row = conn.execute(
        sa.select(t.members).where(t.members.c.id == member_id).with_for_update()
    ).first()
    if row is None:
        raise UnknownMember(member_id)
    return _member(row)


def _require_open(found: Member) -> Member:
    if found.status == "closed":
        raise MemberClosed(found.id)
    return found


def _update_member(conn: Connection, found: Member, **values: Any) -> None:
    conn.execute(
        t.members.update()
        .where(t.members.c.id == found.id)
        .values(**values, version=t.members.c.version + 1)
    )


def _require_partner(conn: Connection, partner: str) -> str:
    status = conn.scalar(sa.select(t.partners.c.status).where(t.partners.c.code == partner))
    if status is None:
        raise UnknownPartner(partner)
    return str(status)


def _require_active_partner(conn: Connection, partner: str) -> None:
    status = _require_partner(conn, partner)
    if status != "active":
        raise PartnerSuspended(partner, status)


def _check_customer_ref(customer_ref: str) -> None:
    if not isinstance(customer_ref, str) or not 1 <= len(customer_ref.strip()) <= 100:
        raise InvalidField("customer_ref", "1–100 characters")


def _check_purpose(purpose: str) -> None:
    if purpose not in CONSENT_PURPOSES:
        raise InvalidField("purpose", f"one of {', '.join(CONSENT_PURPOSES)}")


def _linked_member(conn: Connection, partner: str, customer_ref: str) -> str | None:
    member_id = conn.scalar(
        sa.select(t.member_refs.c.member_id).where(
            t.member_refs.c.partner == partner, t.member_refs.c.customer_ref == customer_ref
        )
    )
    return None if member_id is None else str(member_id)


def _unused_card_number(conn: Connection) -> str:
    # 10^11 serials: a clash is rare, and the unique constraint catches a concurrent one.
    for _ in range(10):
        card = new_card_number()
        taken = conn.scalar(sa.select(t.members.c.id).where(t.members.c.card_number == card))
        if taken is None:
            return card
    raise RuntimeError("no free card number in 10 draws: is the card space exhausted?")


def _append_consent(
    conn: Connection,
    member_id: str,
    purpose: str,
    granted: bool,
    terms_version: str,
    now: datetime,
    by: str | None,
) -> Consent:
    conn.execute(
        t.consents.insert().values(
            member_id=member_id,
            purpose=purpose,
            granted=granted,
            terms_version=terms_version,
            recorded_at=now,
            recorded_by=by,
        )
    )
    return Consent(purpose, granted, terms_version, now, by)


def _granted(consents: Mapping[str, Consent], purpose: str) -> bool:
    consent = consents.get(purpose)
    return consent is not None and consent.granted


def _sealed(row: Any) -> Sealed:
    return Sealed(
        None if row.wrapped_key is None else bytes(row.wrapped_key),
        row.master_key_id,
        bytes(row.ciphertext),
    )


def _load_sealed(conn: Connection, member_id: str) -> Sealed | None:
    row = conn.execute(
        sa.select(t.member_vault).where(t.member_vault.c.member_id == member_id)
    ).first()
    return None if row is None else _sealed(row)


def _store_sealed(conn: Connection, member_id: str, sealed: Sealed, now: datetime) -> None:
    values = {
        "wrapped_key": sealed.wrapped_key,
        "master_key_id": sealed.master_key_id,
        "ciphertext": sealed.ciphertext,
        "updated_at": now,
    }
    updated = conn.execute(
        t.member_vault.update()
        .where(t.member_vault.c.member_id == member_id)
        .values(**values)
        .returning(t.member_vault.c.member_id)
    ).first()
    if updated is None:
        conn.execute(t.member_vault.insert().values(member_id=member_id, **values))


def _balances(conn: Connection, member_id: str) -> dict[str, int]:
    store, ledger = SqlLedgerStore(conn), Ledger()
    return {role: ledger.balance(store, member_account(member_id, role)) for role in MEMBER_ROLES}


def _lots_json(conn: Connection, member_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.select(lt.lots)
        .where(lt.lots.c.member == member_id)
        .order_by(lt.lots.c.earned_at, lt.lots.c.id)
    )
    return [
        {
            "id": str(r.id),
            "funder": r.funder,
            "amount": r.amount,
            "remaining": r.remaining,
            "pending": bool(r.pending),
            "earned_at": _iso(r.earned_at),
            "expires_at": _iso(r.expires_at),
            "pending_until": _iso(r.pending_until),
        }
        for r in rows
    ]


def _entries_json(conn: Connection, member_id: str) -> list[dict[str, Any]]:
    """The member's side of each entry: only the amounts on the member's own accounts.

    ``log_index`` is the entry's leaf in the verifiable log (``None`` until integrated), so the
    member, or a partner on its behalf, can ask for an inclusion proof.
    """
    accounts = {member_account(member_id, role): role for role in MEMBER_ROLES}
    rows = conn.execute(
        sa.select(
            lt.entries.c.id,
            lt.entries.c.kind,
            lt.entries.c.business_time,
            lt.entries.c.booked_at,
            lt.entries.c.partner,
            lt.entries.c.reason,
            lt.leaves.c.idx,
            lt.postings.c.account,
            lt.postings.c.amount,
        )
        .select_from(
            lt.postings.join(lt.entries, lt.entries.c.id == lt.postings.c.entry_id).outerjoin(
                lt.leaves, lt.leaves.c.entry_id == lt.entries.c.id
            )
        )
        .where(lt.postings.c.account.in_(list(accounts)))
        .order_by(
            lt.entries.c.booked_at,
            lt.leaves.c.idx.is_(None),
            lt.leaves.c.idx,
            lt.entries.c.id,
            lt.postings.c.line,
        )
    )
    entries: dict[UUID, dict[str, Any]] = {}
    for r in rows:
        entry = entries.setdefault(
            r.id,
            {
                "id": str(r.id),
                "kind": r.kind,
                "business_time": _iso(r.business_time),
                "booked_at": _iso(r.booked_at),
                "partner": r.partner,
                "reason": r.reason,
                "log_index": r.idx,
                "points": {},
            },
        )
        role = accounts[r.account]
        entry["points"][role] = entry["points"].get(role, 0) + r.amount
    return list(entries.values())


def _erasures_json(conn: Connection, member_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.select(t.erasures).where(t.erasures.c.member_id == member_id).order_by(t.erasures.c.id)
    )
    return [
        {
            "outcome": r.outcome,
            "reason": r.reason,
            "forfeit_entry": None if r.forfeit_entry is None else str(r.forfeit_entry),
            "decided_at": _iso(r.decided_at),
            "decided_by": r.decided_by,
        }
        for r in rows
    ]


def _member_json(found: Member) -> dict[str, Any]:
    return {
        "id": found.id,
        "card_number": found.card_number,
        "status": found.status,
        "enrolled_by": found.enrolled_by,
        "enrolled_at": _iso(found.enrolled_at),
        "last_activity_at": _iso(found.last_activity_at),
    }


def _consent_json(consent: Consent) -> dict[str, Any]:
    return {
        "purpose": consent.purpose,
        "granted": consent.granted,
        "terms_version": consent.terms_version,
        "recorded_at": _iso(consent.recorded_at),
        "recorded_by": consent.recorded_by,
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
