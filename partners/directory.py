"""The coalition's directory of partners: who they are, the contracts they signed, how they sign in.

Four records live here (PRODUCT.md §6, §9):

- **Partners**: code, legal name, bank details (IBAN and BIC checked by ``schwifty``), a status
  and a ``version`` that grows on every change (the API's ETag). Only an *active* partner issues
  points; members keep spending at a suspended or exiting partner unless its redemptions are
  blocked too.
- **Contracts**: the terms a partner's events are priced with, as numbered versions over half-open
  periods ``[valid_from, valid_to)``. A version is never edited, so the periods are a chain: each
  new version starts exactly where the previous one ends. An open-ended version therefore ends the
  chain — nothing can follow it, because closing it would mean editing it. Give a version an end
  when its successor is foreseeable. Because no period is ever reopened or shortened, adding a
  version never reprices an event already priced.
- **Credentials**: API keys for partners and for the operator's staff. The token
  ``ck_<id>.<secret>`` is shown once; only a domain-separated SHA-256 of the secret is stored. A
  slow hash would add nothing to a 256-bit random secret that nobody can guess.
- **Partner keys**: Ed25519 public keys, each valid over ``[valid_from, valid_to)``. A signature is
  checked against the key that was valid at the time the signature claims, so after a rotation the
  old key keeps verifying what it signed while it was valid.

Every function works inside the caller's transaction (``Database.transaction``) and takes the time
explicitly. SQL lives in :class:`SqlDirectory`; the rules are the plain functions beside it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple, NewType

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException
from sqlalchemy.engine import Connection

from ledger.errors import InvalidRequest, SignatureError
from ledger.model import check_owner
from ledger.numbers import ROUNDING_MODES, parse_amount, parse_rate
from ledger.repository import SqlLedgerStore
from ledger.service import Actor, Ledger
from partners import tables as t
from partners.errors import (
    AuthenticationFailed,
    ContractGap,
    ContractOverlap,
    CredentialRevoked,
    InvalidField,
    NoContract,
    PartnerExists,
    PartnerKeyExists,
    PartnerSuspended,
    RedemptionBlocked,
    UnknownCredential,
    UnknownPartner,
    UnknownPartnerKey,
    VersionMismatch,
)

PartnerKeyId = NewType("PartnerKeyId", str)
"""First 16 hex digits of the SHA-256 of a partner's raw 32-byte Ed25519 public key."""

#: Longest decimal text the ``contracts`` price columns hold.
_RATE_TEXT_MAX = 20

#: ``last_used_at`` is written at most once per this interval, so authenticating every request does
#: not turn one credential row into a write hot spot; the time is for spotting unused keys.
LAST_USED_RESOLUTION = timedelta(minutes=1)

#: Prefix of every credential token, so leaked tokens are recognisable by secret scanners.
TOKEN_PREFIX = "ck_"  # noqa: S105  (a public prefix, not a secret)

#: Domain separation of stored credential hashes (STYLE.md §8): a credential hash can never be
#: confused with any other SHA-256 the system computes, and is bound to its credential id.
_CREDENTIAL_HASH_DOMAIN = b"coalition-ledger credential v1\x00"


class PartnerStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    EXITING = "exiting"


class Role(StrEnum):
    """Who a credential acts as (PRODUCT.md §9)."""

    PARTNER = "partner"
    FINANCE = "finance"
    AUDITOR = "auditor"
    ADMIN = "admin"
    PRIVACY = "privacy"


# -- records ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Partner:
    """A member of the coalition that issues points, accepts them, or both."""

    code: str
    """Stable identifier, also the owner part of the partner's ledger account codes."""
    legal_name: str
    """Name of the legal entity the coalition contracts with and pays."""
    iban: str
    """Settlement account, compact upper-case form, checksum verified."""
    bic: str
    """Bank identifier of the settlement account, compact upper-case form."""
    status: PartnerStatus
    """active, suspended or exiting; only active partners issue points."""
    redemption_blocked: bool
    """Members cannot spend points at this partner (never set while active)."""
    created_at: datetime
    """When the partner was onboarded."""
    version: int
    """1 at onboarding, +1 on every change: the API's ETag."""

    @property
    def can_issue(self) -> bool:
        return self.status is PartnerStatus.ACTIVE

    @property
    def can_redeem(self) -> bool:
        return not self.redemption_blocked


@dataclass(frozen=True, slots=True)
class ContractTerms:
    """The economic terms of one contract version; built only from exact values.

    Prices and rates are ``Decimal`` (or decimal strings) with at most six places, never floats;
    amounts of money are integer cents. The constructor normalises and checks every field.
    """

    issue_price: Decimal
    """``p``: euros the partner pays the programme per point it issues."""
    reimbursement_price: Decimal
    """``q``: euros the programme pays the partner per point redeemed there."""
    breakage_rebate: Decimal
    """``b``: euros returned to the funding partner per point it funded that expires."""
    monthly_fee_cents: int
    """The partner's monthly membership fee, in cents."""
    pending_days: int
    """Return window: earned points stay pending this many days before they are spendable."""
    earn_rate: Decimal
    """Base earn rate, points per euro of the cash part of a basket."""
    rounding_mode: str
    """How statement lines round to cents; a key of :data:`ledger.numbers.ROUNDING_MODES`."""
    carry_forward_threshold_cents: int
    """Statement balances below this many cents are carried to the next period, not paid."""
    signing_required: bool = False
    """Whether the partner must sign its requests with one of its Ed25519 keys."""
    category_multipliers: Mapping[str, Decimal] = field(default_factory=dict)
    """Earn-rate multiplier per basket category; categories not listed earn ×1."""

    def __post_init__(self) -> None:
        for name in ("issue_price", "reimbursement_price", "breakage_rebate", "earn_rate"):
            object.__setattr__(self, name, _rate(getattr(self, name), name))
        for name in ("monthly_fee_cents", "pending_days", "carry_forward_threshold_cents"):
            object.__setattr__(self, name, _count(getattr(self, name), name))
        if self.rounding_mode not in ROUNDING_MODES:
            raise InvalidField("rounding_mode", f"must be one of {', '.join(ROUNDING_MODES)}")
        if not isinstance(self.signing_required, bool):
            raise InvalidField("signing_required", "must be true or false")
        object.__setattr__(self, "category_multipliers", _multipliers(self.category_multipliers))

    def multiplier(self, category: str) -> Decimal:
        """The earn-rate multiplier of a basket category (×1 when the contract names none)."""
        return self.category_multipliers.get(category, Decimal(1))


@dataclass(frozen=True, slots=True)
class Contract:
    """One version of a partner's contract, in force over ``[valid_from, valid_to)``."""

    partner: str
    """The partner code."""
    version: int
    """1, 2, 3, … in order of validity."""
    valid_from: datetime
    """First business instant the version prices (inclusive)."""
    valid_to: datetime | None
    """First business instant it no longer prices (exclusive); ``None``: open-ended."""
    terms: ContractTerms
    """The prices, rates and settings of this version."""
    created_at: datetime
    """When the version was recorded."""
    created_by: str | None
    """Who recorded it (credential id or staff account)."""

    def in_force_at(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.valid_to is None or at < self.valid_to)

    @property
    def price_version(self) -> str:
        """Reference stored on the entries this version priced, e.g. ``SUPER/v3``."""
        return f"{self.partner}/v{self.version}"


@dataclass(frozen=True, slots=True)
class Credential:
    """An API key of a partner or of a member of the operator's staff (never its secret)."""

    id: str
    """Public part of the token ``ck_<id>.<secret>``."""
    role: Role
    """What the holder may do (PRODUCT.md §9)."""
    partner: str | None
    """The partner a ``partner`` credential acts for; ``None`` for staff."""
    staff: str | None
    """The staff account a staff credential belongs to; ``None`` for partners."""
    label: str | None
    """A human note ("till system, store 12")."""
    created_at: datetime
    """When it was issued."""
    revoked_at: datetime | None
    """From when it no longer authenticates; may lie ahead during a rotation's grace period."""
    last_used_at: datetime | None
    """Last successful authentication, to a resolution of :data:`LAST_USED_RESOLUTION`."""

    def revoked(self, now: datetime) -> bool:
        return self.revoked_at is not None and self.revoked_at <= now

    @property
    def actor(self) -> Actor:
        """The ledger actor this credential acts as.

        Idempotency keys are scoped to the principal (the partner, or the staff account), not to
        the credential id: a request retried after a key rotation must still be recognised.
        """
        if self.partner is not None:
            return Actor(self.id, partner=self.partner, principal=f"partner:{self.partner}")
        return Actor(self.id, principal=f"staff:{self.staff}")


class IssuedCredential(NamedTuple):
    """A new credential and its token; the token is shown once and never stored."""

    credential_id: str
    token: str


@dataclass(frozen=True, slots=True)
class PartnerKey:
    """A partner's Ed25519 public key, valid for signatures made over ``[valid_from, valid_to)``."""

    key_id: PartnerKeyId
    """First 16 hex digits of SHA-256 of the raw key."""
    partner: str
    """The partner that holds the private key."""
    public_key: bytes
    """The raw 32-byte Ed25519 public key."""
    valid_from: datetime
    """First instant a signature by this key is accepted for (inclusive)."""
    valid_to: datetime | None
    """Retirement: signatures made at or after it are refused; ``None`` while in service."""
    created_at: datetime
    """When the key was registered."""

    def covers(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.valid_to is None or at < self.valid_to)


# -- SQL -------------------------------------------------------------------------------------------


class SqlDirectory:
    """Rows of the directory tables over a connection inside the caller's transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # partners

    def insert_partner(self, partner: Partner) -> bool:
        """Insert a new partner; ``False`` if the code is taken (also under a concurrent insert)."""
        if self.partner(partner.code) is not None:
            return False
        try:
            with self.conn.begin_nested():
                self.conn.execute(
                    t.partners.insert().values(
                        code=partner.code,
                        legal_name=partner.legal_name,
                        iban=partner.iban,
                        bic=partner.bic,
                        status=partner.status.value,
                        redemption_blocked=partner.redemption_blocked,
                        created_at=partner.created_at,
                        version=partner.version,
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    def partner(self, code: str, *, lock: bool = False) -> Partner | None:
        query = sa.select(t.partners).where(t.partners.c.code == code)
        row = self.conn.execute(query.with_for_update() if lock else query).one_or_none()
        return None if row is None else _partner(row)

    def update_partner(self, before: Partner, after: Partner) -> None:
        """Write ``after`` over ``before``; the caller has locked the row and bumped the version."""
        c = t.partners.c
        self.conn.execute(
            t.partners.update()
            .where(c.code == before.code, c.version == before.version)
            .values(
                status=after.status.value,
                redemption_blocked=after.redemption_blocked,
                version=after.version,
            )
        )

    # contracts

    def contracts(self, partner: str) -> list[Contract]:
        rows = self.conn.execute(
            sa.select(t.contracts)
            .where(t.contracts.c.partner == partner)
            .order_by(t.contracts.c.version)
        )
        return [_contract(row) for row in rows]

    def latest_contract(self, partner: str) -> Contract | None:
        row = self.conn.execute(
            sa.select(t.contracts)
            .where(t.contracts.c.partner == partner)
            .order_by(t.contracts.c.version.desc())
            .limit(1)
        ).one_or_none()
        return None if row is None else _contract(row)

    def contract_at(self, partner: str, at: datetime) -> Contract | None:
        c = t.contracts.c
        row = self.conn.execute(
            sa.select(t.contracts)
            .where(
                c.partner == partner,
                c.valid_from <= at,
                sa.or_(c.valid_to.is_(None), c.valid_to > at),
            )
            .order_by(c.version.desc())
            .limit(1)
        ).one_or_none()
        return None if row is None else _contract(row)

    def insert_contract(self, contract: Contract) -> None:
        terms = contract.terms
        self.conn.execute(
            t.contracts.insert().values(
                partner=contract.partner,
                version=contract.version,
                valid_from=contract.valid_from,
                valid_to=contract.valid_to,
                issue_price=_rate_text(terms.issue_price),
                reimbursement_price=_rate_text(terms.reimbursement_price),
                breakage_rebate=_rate_text(terms.breakage_rebate),
                monthly_fee_cents=terms.monthly_fee_cents,
                pending_days=terms.pending_days,
                earn_rate=_rate_text(terms.earn_rate),
                category_multipliers={
                    category: _rate_text(rate)
                    for category, rate in sorted(terms.category_multipliers.items())
                },
                rounding_mode=terms.rounding_mode,
                carry_forward_threshold_cents=terms.carry_forward_threshold_cents,
                signing_required=terms.signing_required,
                created_at=contract.created_at,
                created_by=contract.created_by,
            )
        )

    # credentials

    def insert_credential(self, credential: Credential, secret_hash: bytes) -> None:
        self.conn.execute(
            t.credentials.insert().values(
                id=credential.id,
                partner=credential.partner,
                staff=credential.staff,
                role=credential.role.value,
                secret_hash=secret_hash,
                label=credential.label,
                created_at=credential.created_at,
                revoked_at=credential.revoked_at,
                last_used_at=credential.last_used_at,
            )
        )

    def credential(self, credential_id: str) -> tuple[Credential, bytes] | None:
        """The credential and its stored hash."""
        row = self.conn.execute(
            sa.select(t.credentials).where(t.credentials.c.id == credential_id)
        ).one_or_none()
        return None if row is None else (_credential(row), bytes(row.secret_hash))

    def set_revoked_at(self, credential_id: str, revoked_at: datetime) -> None:
        self.conn.execute(
            t.credentials.update()
            .where(t.credentials.c.id == credential_id)
            .values(revoked_at=revoked_at)
        )

    def set_last_used_at(self, credential_id: str, now: datetime) -> None:
        self.conn.execute(
            t.credentials.update()
            .where(t.credentials.c.id == credential_id)
            .values(last_used_at=now)
        )

    # partner keys

    def insert_key(self, key: PartnerKey) -> bool:
        """Insert a key; ``False`` if its key id is registered already."""
        if self.key(key.key_id) is not None:
            return False
        try:
            with self.conn.begin_nested():
                self.conn.execute(
                    t.partner_keys.insert().values(
                        key_id=key.key_id,
                        partner=key.partner,
                        public_key=key.public_key,
                        valid_from=key.valid_from,
                        valid_to=key.valid_to,
                        created_at=key.created_at,
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    def key(self, key_id: str) -> PartnerKey | None:
        row = self.conn.execute(
            sa.select(t.partner_keys).where(t.partner_keys.c.key_id == key_id)
        ).one_or_none()
        return None if row is None else _partner_key(row)

    def keys(self, partner: str) -> list[PartnerKey]:
        rows = self.conn.execute(
            sa.select(t.partner_keys)
            .where(t.partner_keys.c.partner == partner)
            .order_by(t.partner_keys.c.valid_from, t.partner_keys.c.key_id)
        )
        return [_partner_key(row) for row in rows]

    def set_key_valid_to(self, key_id: str, valid_to: datetime) -> None:
        self.conn.execute(
            t.partner_keys.update()
            .where(t.partner_keys.c.key_id == key_id)
            .values(valid_to=valid_to)
        )


def _partner(row: Any) -> Partner:
    return Partner(
        code=row.code,
        legal_name=row.legal_name,
        iban=row.iban,
        bic=row.bic,
        status=PartnerStatus(row.status),
        redemption_blocked=bool(row.redemption_blocked),
        created_at=row.created_at,
        version=row.version,
    )


def _contract(row: Any) -> Contract:
    terms = ContractTerms(
        issue_price=Decimal(row.issue_price),
        reimbursement_price=Decimal(row.reimbursement_price),
        breakage_rebate=Decimal(row.breakage_rebate),
        monthly_fee_cents=row.monthly_fee_cents,
        pending_days=row.pending_days,
        earn_rate=Decimal(row.earn_rate),
        rounding_mode=row.rounding_mode,
        carry_forward_threshold_cents=row.carry_forward_threshold_cents,
        signing_required=bool(row.signing_required),
        category_multipliers={k: Decimal(v) for k, v in row.category_multipliers.items()},
    )
    return Contract(
        partner=row.partner,
        version=row.version,
        valid_from=row.valid_from,
        valid_to=row.valid_to,
        terms=terms,
        created_at=row.created_at,
        created_by=row.created_by,
    )


def _credential(row: Any) -> Credential:
    return Credential(
        id=row.id,
        role=Role(row.role),
        partner=row.partner,
        staff=row.staff,
        label=row.label,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def _partner_key(row: Any) -> PartnerKey:
    return PartnerKey(
        key_id=PartnerKeyId(row.key_id),
        partner=row.partner,
        public_key=bytes(row.public_key),
        valid_from=row.valid_from,
        valid_to=row.valid_to,
        created_at=row.created_at,
    )


# -- partners --------------------------------------------------------------------------------------


def onboard_partner(
    conn: Connection, code: str, legal_name: str, iban: str, bic: str, now: datetime
) -> Partner:
    """Register an active partner with checked bank details and open its ledger accounts."""
    _aware(now, "now")
    try:
        check_owner(code, "partner code")
    except InvalidRequest as exc:
        raise InvalidField("code", exc.message) from None
    partner = Partner(
        code=code,
        legal_name=_text(legal_name, "legal_name", 200),
        iban=normalise_iban(iban),
        bic=normalise_bic(bic),
        status=PartnerStatus.ACTIVE,
        redemption_blocked=False,
        created_at=now,
        version=1,
    )
    if not SqlDirectory(conn).insert_partner(partner):
        raise PartnerExists(code)
    Ledger(clock=lambda: now).open_partner(SqlLedgerStore(conn), code)
    return partner


def normalise_iban(iban: str) -> str:
    """The compact form of a valid IBAN (checksum, length and national format checked)."""
    try:
        return str(IBAN(_text(iban, "iban", 64)).compact)
    except SchwiftyException as exc:
        raise InvalidField("iban", f"{iban!r} is not a valid IBAN ({exc})") from None


def normalise_bic(bic: str) -> str:
    """The compact form of a valid BIC (length, structure and country checked)."""
    try:
        return str(BIC(_text(bic, "bic", 16)).compact)
    except SchwiftyException as exc:
        raise InvalidField("bic", f"{bic!r} is not a valid BIC ({exc})") from None


def partner(conn: Connection, code: str) -> Partner:
    """The partner ``code``, with its current version."""
    found = SqlDirectory(conn).partner(code)
    if found is None:
        raise UnknownPartner(code)
    return found


def set_status(
    conn: Connection,
    code: str,
    status: PartnerStatus | str,
    now: datetime,
    *,
    redemption_blocked: bool = False,
    expected_version: int | None = None,
) -> Partner:
    """Set a partner's status and whether its redemptions are blocked; bumps the version.

    ``expected_version`` (the API's ``If-Match``) refuses a change made against a stale read.
    A change that changes nothing returns the partner as it is, version unchanged.
    """
    _aware(now, "now")
    after_status = _status(status)
    check_status(after_status, redemption_blocked)
    store = SqlDirectory(conn)
    before = store.partner(code, lock=True)
    if before is None:
        raise UnknownPartner(code)
    if expected_version is not None and expected_version != before.version:
        raise VersionMismatch(f"partner {code}", expected_version, before.version)
    if (before.status, before.redemption_blocked) == (after_status, redemption_blocked):
        return before
    after = replace(
        before,
        status=after_status,
        redemption_blocked=redemption_blocked,
        version=before.version + 1,
    )
    store.update_partner(before, after)
    return after


def check_status(status: PartnerStatus, redemption_blocked: bool) -> None:
    """An active partner accepts its members' points: blocking redemptions needs a suspension."""
    if not isinstance(redemption_blocked, bool):
        raise InvalidField("redemption_blocked", "must be true or false")
    if status is PartnerStatus.ACTIVE and redemption_blocked:
        raise InvalidField(
            "redemption_blocked", "an active partner cannot block redemptions; suspend it first"
        )


def require_can_issue(conn: Connection, code: str) -> Partner:
    """The partner, if it may issue points now; else :class:`PartnerSuspended`."""
    found = partner(conn, code)
    if not found.can_issue:
        raise PartnerSuspended(code, found.status.value)
    return found


def require_can_redeem(conn: Connection, code: str) -> Partner:
    """The partner, if members may spend points there now; else :class:`RedemptionBlocked`."""
    found = partner(conn, code)
    if not found.can_redeem:
        raise RedemptionBlocked(code, found.status.value)
    return found


def _status(value: PartnerStatus | str) -> PartnerStatus:
    try:
        return PartnerStatus(value)
    except ValueError:
        choices = ", ".join(s.value for s in PartnerStatus)
        raise InvalidField("status", f"{value!r} is not one of {choices}") from None


# -- contracts -------------------------------------------------------------------------------------


def add_contract(
    conn: Connection,
    partner: str,
    terms: ContractTerms,
    valid_from: datetime,
    valid_to: datetime | None,
    now: datetime,
    actor: str | None,
) -> Contract:
    """Record the partner's next contract version.

    After a version with an end, the next starts exactly there (:class:`ContractOverlap` if
    earlier, :class:`ContractGap` if later). An open-ended version is superseded, never edited:
    the next version starts later and not in the past, so no event already priced is repriced.
    """
    _aware(now, "now")
    _period(valid_from, valid_to)
    store = SqlDirectory(conn)
    # Lock the partner so two concurrent additions cannot both take the same version number.
    if store.partner(partner, lock=True) is None:
        raise UnknownPartner(partner)
    previous = store.latest_contract(partner)
    check_succession(partner, previous, valid_from, now)
    contract = Contract(
        partner=partner,
        version=1 if previous is None else previous.version + 1,
        valid_from=valid_from,
        valid_to=valid_to,
        terms=terms,
        created_at=now,
        created_by=actor,
    )
    store.insert_contract(contract)
    return contract


def check_succession(
    partner: str, previous: Contract | None, valid_from: datetime, now: datetime
) -> None:
    """A version begins where the previous one ends, or supersedes an open-ended one from now on.

    Periods are half-open. The version in force at a time is the latest one that has started and
    not ended, so an open-ended version implicitly ends where its successor starts.
    """
    if previous is None:
        return
    context: dict[str, Any] = {
        "partner": partner,
        "previous_version": previous.version,
        "previous_valid_to": previous.valid_to,
        "valid_from": valid_from,
    }
    if previous.valid_to is None:
        if valid_from <= previous.valid_from or valid_from < now:
            raise ContractOverlap(
                f"{previous.price_version} is open-ended: a successor must start after it "
                "started and not in the past, so no event already priced is repriced",
                **context,
            )
        return
    if valid_from < previous.valid_to:
        raise ContractOverlap(
            f"a version starting {valid_from.isoformat()} overlaps {previous.price_version}, "
            f"in force until {previous.valid_to.isoformat()}",
            **context,
        )
    if valid_from > previous.valid_to:
        raise ContractGap(
            f"a version starting {valid_from.isoformat()} leaves a gap after "
            f"{previous.price_version}, which ends {previous.valid_to.isoformat()}",
            **context,
        )


def contract_at(conn: Connection, partner: str, at: datetime) -> Contract:
    """The contract version in force for ``partner`` at business time ``at``."""
    _aware(at, "at")
    found = SqlDirectory(conn).contract_at(partner, at)
    if found is None:
        raise NoContract(partner, at)
    return found


def contracts(conn: Connection, partner: str) -> list[Contract]:
    """Every version of the partner's contract, oldest first."""
    return SqlDirectory(conn).contracts(partner)


def _period(valid_from: datetime, valid_to: datetime | None) -> None:
    _aware(valid_from, "valid_from")
    if valid_to is not None:
        _aware(valid_to, "valid_to")
        if valid_to <= valid_from:
            raise InvalidField("valid_to", "must be later than valid_from")


def _rate(value: Any, name: str) -> Decimal:
    try:
        rate = parse_rate(value, name="value")
    except InvalidRequest as exc:
        raise InvalidField(name, exc.message) from None
    if len(_rate_text(rate)) > _RATE_TEXT_MAX:
        raise InvalidField(name, f"{value!r} is too large")
    return rate


def _count(value: object, name: str) -> int:
    try:
        return parse_amount(value, name="value", allow_zero=True)
    except InvalidRequest as exc:
        raise InvalidField(name, exc.message) from None


def _multipliers(value: Mapping[str, Any]) -> Mapping[str, Decimal]:
    if not isinstance(value, Mapping):
        raise InvalidField("category_multipliers", "must map categories to decimal multipliers")
    parsed = {}
    for category, rate in value.items():
        if not isinstance(category, str) or not category.strip():
            raise InvalidField("category_multipliers", f"category {category!r} must be a name")
        parsed[category] = _rate(rate, f"category_multipliers.{category}")
    return MappingProxyType(dict(sorted(parsed.items())))


def _rate_text(rate: Decimal) -> str:
    """Fixed-point text, never exponent notation, so the stored form is plain to any reader."""
    return format(rate, "f")


# -- credentials -----------------------------------------------------------------------------------


def issue_credential(
    conn: Connection,
    *,
    partner: str | None = None,
    staff: str | None = None,
    role: Role | str,
    label: str | None,
    now: datetime,
) -> IssuedCredential:
    """Create a credential and return its id and token; the token cannot be recovered later."""
    _aware(now, "now")
    parsed_role = _role(role)
    check_credential_owner(parsed_role, partner, staff)
    store = SqlDirectory(conn)
    if partner is not None and store.partner(partner) is None:
        raise UnknownPartner(partner)
    credential = Credential(
        id=secrets.token_hex(10),
        role=parsed_role,
        partner=partner,
        staff=staff,
        label=None if label is None else _text(label, "label", 100),
        created_at=now,
        revoked_at=None,
        last_used_at=None,
    )
    secret = secrets.token_urlsafe(32)
    store.insert_credential(credential, credential_hash(credential.id, secret))
    return IssuedCredential(credential.id, f"{TOKEN_PREFIX}{credential.id}.{secret}")


def check_credential_owner(role: Role, partner: str | None, staff: str | None) -> None:
    """A partner credential names its partner and no staff; a staff credential the reverse."""
    if role is Role.PARTNER:
        if partner is None or staff is not None:
            raise InvalidField("partner", "a partner credential names a partner and no staff")
    elif partner is not None or staff is None:
        raise InvalidField("staff", f"a {role.value} credential names a staff account, no partner")
    if staff is not None:
        _text(staff, "staff", 64)


def credential_hash(credential_id: str, secret: str) -> bytes:
    """The stored SHA-256 of a secret, bound to its credential id (domain-separated)."""
    return hashlib.sha256(
        _CREDENTIAL_HASH_DOMAIN + credential_id.encode("ascii") + b"\x00" + secret.encode("ascii")
    ).digest()


def authenticate(conn: Connection, token: str, now: datetime) -> Credential:
    """The credential a token proves, if it is not revoked at ``now``; records the use."""
    _aware(now, "now")
    credential_id, secret = _split_token(token)
    store = SqlDirectory(conn)
    found = store.credential(credential_id)
    # Hash and compare even for an unknown id, so timing does not reveal which ids exist.
    stored = found[1] if found is not None else bytes(32)
    matches = hmac.compare_digest(credential_hash(credential_id, secret), stored)
    if found is None:
        raise AuthenticationFailed(f"unknown credential {credential_id}")
    credential = found[0]
    if not matches:
        raise AuthenticationFailed(f"wrong secret for credential {credential_id}")
    if credential.revoked(now):
        raise AuthenticationFailed(f"credential {credential_id} is revoked")
    last = credential.last_used_at
    if last is None or now - last >= LAST_USED_RESOLUTION:
        store.set_last_used_at(credential_id, now)
        credential = replace(credential, last_used_at=now)
    return credential


def credential(conn: Connection, credential_id: str) -> Credential:
    """The credential ``credential_id`` (never its secret, which is not kept)."""
    found = SqlDirectory(conn).credential(credential_id)
    if found is None:
        raise UnknownCredential(credential_id)
    return found[0]


def rotate_credential(
    conn: Connection, credential_id: str, now: datetime, *, grace: timedelta = timedelta(0)
) -> IssuedCredential:
    """Issue a successor with the same role, owner and label; revoke the old one after ``grace``.

    A grace period lets the holder deploy the new token before the old one stops working.
    """
    _aware(now, "now")
    if grace < timedelta(0):
        raise InvalidField("grace", "must not be negative")
    old = credential(conn, credential_id)
    if old.revoked_at is not None and old.revoked_at <= now:
        raise CredentialRevoked(credential_id, old.revoked_at)
    issued = issue_credential(
        conn, partner=old.partner, staff=old.staff, role=old.role, label=old.label, now=now
    )
    ends = now + grace
    # A rotation during another's grace period never extends the old token's life.
    SqlDirectory(conn).set_revoked_at(credential_id, min(ends, old.revoked_at or ends))
    return issued


def revoke_credential(conn: Connection, credential_id: str, now: datetime) -> Credential:
    """Stop a credential from authenticating from ``now`` on (ends a rotation's grace, too)."""
    _aware(now, "now")
    old = credential(conn, credential_id)
    if old.revoked_at is not None and old.revoked_at <= now:
        return old
    SqlDirectory(conn).set_revoked_at(credential_id, now)
    return replace(old, revoked_at=now)


def _split_token(token: str) -> tuple[str, str]:
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or "." not in token:
        raise AuthenticationFailed("malformed token")
    credential_id, _, secret = token[len(TOKEN_PREFIX) :].partition(".")
    if not credential_id or not secret or not (credential_id + secret).isascii():
        raise AuthenticationFailed("malformed token")
    return credential_id, secret


def _role(value: Role | str) -> Role:
    try:
        return Role(value)
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise InvalidField("role", f"{value!r} is not one of {choices}") from None


# -- partner keys ----------------------------------------------------------------------------------


def add_partner_key(
    conn: Connection,
    partner: str,
    public_key: bytes | str,
    valid_from: datetime,
    now: datetime,
) -> PartnerKeyId:
    """Register a partner's Ed25519 public key (32 raw bytes or base64) from ``valid_from`` on."""
    _aware(now, "now")
    _aware(valid_from, "valid_from")
    raw = parse_public_key(public_key)
    store = SqlDirectory(conn)
    if store.partner(partner) is None:
        raise UnknownPartner(partner)
    key = PartnerKey(
        key_id=partner_key_id(raw),
        partner=partner,
        public_key=raw,
        valid_from=valid_from,
        valid_to=None,
        created_at=now,
    )
    if not store.insert_key(key):
        raise PartnerKeyExists(key.key_id)
    return key.key_id


def retire_partner_key(conn: Connection, key_id: str, valid_to: datetime) -> PartnerKey:
    """End a key's validity at ``valid_to``: signatures dated from then on are refused.

    A retirement may be brought forward (a compromised key) but never pushed back: a key that
    stopped being trusted does not become trusted again.
    """
    _aware(valid_to, "valid_to")
    store = SqlDirectory(conn)
    key = store.key(key_id)
    if key is None:
        raise UnknownPartnerKey(key_id)
    if valid_to <= key.valid_from:
        raise InvalidField("valid_to", "must be later than the key's valid_from")
    if key.valid_to is not None and valid_to > key.valid_to:
        raise InvalidField(
            "valid_to", f"key {key_id} is retired from {key.valid_to.isoformat()} already"
        )
    store.set_key_valid_to(key_id, valid_to)
    return replace(key, valid_to=valid_to)


def partner_keys(conn: Connection, partner: str) -> list[PartnerKey]:
    """The partner's keys, retired ones included, in order of validity."""
    return SqlDirectory(conn).keys(partner)


def verify_partner_signature(
    conn: Connection,
    partner: str,
    key_id: str,
    message: bytes,
    signature: bytes,
    at: datetime,
) -> PartnerKey:
    """Check a partner's Ed25519 signature over ``message``, made at ``at``; the key that verified.

    ``at`` is the time the signature claims: the caller must take it from the signed message
    itself (and bound it by its own clock), or a holder of a retired key could backdate.
    Raises :class:`~ledger.errors.SignatureError` for an unknown key, another partner's key, a
    key not valid at ``at``, or a signature that does not verify.
    """
    _aware(at, "at")
    key = SqlDirectory(conn).key(key_id)
    if key is None or key.partner != partner:
        raise SignatureError(f"partner {partner} has no key {key_id}", expected=key_id)
    if not key.covers(at):
        until = "on" if key.valid_to is None else f"to {key.valid_to.isoformat()}"
        raise SignatureError(
            f"key {key_id} is valid from {key.valid_from.isoformat()} {until}, "
            f"not at {at.isoformat()}",
            computed=at.isoformat(),
        )
    try:
        Ed25519PublicKey.from_public_bytes(key.public_key).verify(signature, message)
    except InvalidSignature:
        raise SignatureError(
            f"signature does not verify under key {key_id}", computed=signature
        ) from None
    return key


def parse_public_key(value: bytes | str) -> bytes:
    """The raw 32 bytes of an Ed25519 public key given raw or base64-encoded."""
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidField("public_key", "is not valid base64") from None
    if not isinstance(value, bytes) or len(value) != 32:
        raise InvalidField("public_key", "an Ed25519 public key is 32 bytes")
    try:
        Ed25519PublicKey.from_public_bytes(value)
    except ValueError:
        raise InvalidField("public_key", "is not an Ed25519 public key") from None
    return value


def partner_key_id(public_key: bytes) -> PartnerKeyId:
    """First 16 hex digits of SHA-256 of the raw public key."""
    return PartnerKeyId(hashlib.sha256(public_key).hexdigest()[:16])


# -- shared checks ---------------------------------------------------------------------------------


def _aware(moment: datetime, name: str) -> datetime:
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise InvalidField(name, "must be a timezone-aware datetime")
    return moment


def _text(value: str, name: str, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(name, "must not be empty")
    value = value.strip()
    if len(value) > max_length:
        raise InvalidField(name, f"must be at most {max_length} characters")
    return value
