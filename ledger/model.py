"""Immutable records of the ledger: books, accounts, postings, lots and entries.

The shape follows beancount's ``core/data.py``: plain frozen dataclasses, one docstring line per
field, invariants checked in the constructor. An :class:`Entry` that exists is balanced (each book
sums to zero), has at least two postings, names only well-formed accounts and is stamped with aware
UTC times. Nothing in this module touches a database.

Sign convention: a posting's amount is signed and an account's balance is the sum of its postings.
Money and points flow from a *source* (negative posting) to a *destination* (positive posting), so
``partner:P:issued`` grows more negative as P issues, and a member's ``available`` balance is the
points the member holds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from uuid import UUID

from ledger.errors import InvalidEntry, InvalidRequest
from ledger.numbers import MAX_AMOUNT


class Book(StrEnum):
    """The two books kept on one engine; each entry balances within each book separately."""

    POINTS = "POINTS"
    EUR = "EUR"


class AccountKind(StrEnum):
    """What an account is for; the kind fixes its book and its balance rule."""

    MEMBER_AVAILABLE = "member:available"
    MEMBER_PENDING = "member:pending"
    MEMBER_HELD = "member:held"
    PARTNER_ISSUED = "partner:issued"
    PARTNER_REDEEMED = "partner:redeemed"
    PARTNER_SETTLEMENT = "partner:settlement"
    PROGRAM_BREAKAGE = "program:breakage"
    PROGRAM_FUNDED = "program:funded"
    PROGRAM_ADJUSTMENTS = "program:adjustments"
    OPERATOR_BANK = "operator:bank"
    OPERATOR_INCOME = "operator:income"
    OPERATOR_EXPENSE = "operator:expense"
    OPERATOR_ROUNDING = "operator:rounding"

    @property
    def book(self) -> Book:
        return Book.EUR if self in _EUR_KINDS else Book.POINTS

    @property
    def never_negative(self) -> bool:
        """Member accounts may never go below zero: a member cannot spend points it lacks."""
        return self.value.startswith("member:")


_EUR_KINDS = frozenset(
    {
        AccountKind.PARTNER_SETTLEMENT,
        AccountKind.OPERATOR_BANK,
        AccountKind.OPERATOR_INCOME,
        AccountKind.OPERATOR_EXPENSE,
        AccountKind.OPERATOR_ROUNDING,
    }
)

#: Owners appear inside account codes, so they may not contain ':' and must be plain ASCII.
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: The single program funder of points the operator gives away (welcome bonus, adjustments).
PROGRAM = "program"


#: Accounts already read from their codes (an Account is immutable, so one object serves every
#: reader): a booking parses each code of its postings several times. Bounded: cleared when full.
_PARSED: dict[str, Account] = {}
_PARSED_MAX = 100_000


@dataclass(frozen=True, slots=True)
class Account:
    """A ledger account, named by a code that spells out its kind and owner."""

    code: str
    """``member:{id}:available``, ``partner:{code}:issued``, ``program:breakage``, ..."""
    kind: AccountKind
    """What the account is for; fixes the book and the balance rule."""
    owner: str | None
    """The member id or partner code; ``None`` for program and operator accounts."""

    @property
    def book(self) -> Book:
        return self.kind.book

    @property
    def never_negative(self) -> bool:
        return self.kind.never_negative

    @classmethod
    def parse(cls, code: str) -> Account:
        """Read an account from its code, refusing anything outside the chart of accounts."""
        if isinstance(code, str):
            known = _PARSED.get(code)
            if known is not None:
                return known
        account = cls._parse(code)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[code] = account
        return account

    @classmethod
    def _parse(cls, code: str) -> Account:
        parts = code.split(":") if isinstance(code, str) else []
        if len(parts) == 3 and parts[0] in ("member", "partner"):
            scope, owner, role = parts
            kind_text = f"{scope}:{role}"
        elif len(parts) == 2 and parts[0] not in ("member", "partner"):
            owner, kind_text = None, code
        else:
            raise InvalidEntry(f"{code!r} is not an account code")
        try:
            kind = AccountKind(kind_text)
        except ValueError:
            raise InvalidEntry(f"{code!r} is not in the chart of accounts") from None
        if owner is not None and not _OWNER.fullmatch(owner):
            raise InvalidEntry(f"{code!r} has a malformed owner")
        return cls(code=code, kind=kind, owner=owner)


def member_account(member: str, role: str) -> str:
    """Code of a member's ``available``, ``pending`` or ``held`` account."""
    return Account.parse(f"member:{member}:{role}").code


def partner_account(partner: str, role: str) -> str:
    """Code of a partner's ``issued``, ``redeemed`` or ``settlement`` account."""
    return Account.parse(f"partner:{partner}:{role}").code


def check_owner(value: str, what: str) -> str:
    """Validate a member id or partner code before it is used inside account codes."""
    if not isinstance(value, str) or not _OWNER.fullmatch(value):
        raise InvalidRequest(f"{what} {value!r} must be 1–64 letters, digits, '_', '.' or '-'")
    return value


MEMBER_ROLES = ("available", "pending", "held")
PARTNER_ROLES = ("issued", "redeemed", "settlement")
SYSTEM_ACCOUNTS = (
    "program:breakage",
    "program:funded",
    "program:adjustments",
    "operator:bank",
    "operator:income",
    "operator:expense",
    "operator:rounding",
)


class EntryKind(StrEnum):
    """Every kind of journal entry (PRODUCT.md §3)."""

    EARN = "EARN"
    ENGAGE = "ENGAGE"
    RELEASE = "RELEASE"
    BURN = "BURN"
    HOLD = "HOLD"
    CAPTURE = "CAPTURE"
    VOID = "VOID"
    EARN_REVERSAL = "EARN_REVERSAL"
    BURN_REVERSAL = "BURN_REVERSAL"
    EXPIRE = "EXPIRE"
    TRANSFER = "TRANSFER"
    ADJUSTMENT = "ADJUSTMENT"
    SETTLEMENT = "SETTLEMENT"
    PAYMENT = "PAYMENT"


@dataclass(frozen=True, slots=True)
class Posting:
    """One leg of an entry: a signed amount on one account."""

    account: str
    """Account code; its kind fixes the book."""
    amount: int
    """Signed integer points or cents; negative leaves the account, positive enters it."""

    def __post_init__(self) -> None:
        Account.parse(self.account)
        if isinstance(self.amount, bool) or not isinstance(self.amount, int):
            raise InvalidEntry(f"posting amount on {self.account} must be an integer")
        if self.amount == 0 or abs(self.amount) > MAX_AMOUNT:
            raise InvalidEntry(f"posting amount on {self.account} must be non-zero and ≤ 2^53−1")

    @property
    def book(self) -> Book:
        return Account.parse(self.account).book


@dataclass(frozen=True, slots=True)
class Lot:
    """A parcel of points credited to a member, tracked until spent, reversed or expired."""

    id: UUID
    """Lot identifier, chosen by the entry that opens it."""
    member: str
    """The member who holds the points."""
    funder: str
    """Partner code that funded (and pays for) the points, or ``program``."""
    amount: int
    """Points credited when the lot was opened."""
    earned_at: datetime
    """Business time of the credit."""
    expires_at: datetime | None
    """When what is left of the lot expires; ``None`` never."""
    pending_until: datetime | None
    """End of the partner's return window: until released the lot sits in ``member:pending``."""
    price_version: str | None = None
    """Contract or rule version that priced the lot, so settlement can find its price."""

    def __post_init__(self) -> None:
        if isinstance(self.amount, bool) or not isinstance(self.amount, int) or self.amount <= 0:
            raise InvalidEntry("a lot opens with a positive integer amount")
        _require_aware(self.earned_at, "lot earned_at")
        for moment, name in (
            (self.expires_at, "expires_at"),
            (self.pending_until, "pending_until"),
        ):
            if moment is not None:
                _require_aware(moment, f"lot {name}")


@dataclass(frozen=True, slots=True)
class LotMove:
    """A change to an existing lot: negative consumes points, positive restores them."""

    lot_id: UUID
    """The lot changed."""
    delta: int
    """Signed points; never zero."""

    def __post_init__(self) -> None:
        if isinstance(self.delta, bool) or not isinstance(self.delta, int) or self.delta == 0:
            raise InvalidEntry("a lot move changes a lot by a non-zero integer")


@dataclass(frozen=True, slots=True)
class Entry:
    """A balanced journal entry, as booked. Immutable: corrections are new entries."""

    id: UUID
    """Entry identifier (UUID, chosen before booking so a caller can wait for its receipt)."""
    kind: EntryKind
    """What happened."""
    postings: tuple[Posting, ...]
    """At least two legs; each book sums to zero."""
    business_time: datetime
    """When it happened at the partner (prices the entry)."""
    booked_at: datetime
    """Ledger time: when the ledger booked it (assigns the settlement period)."""
    partner: str | None = None
    """Partner on whose behalf the entry was booked; ``None`` for operator jobs."""
    credential: str | None = None
    """Credential (partner API key or staff account) that asked for it."""
    idempotency_key: str | None = None
    """The caller's idempotency key; a retry with the same key returns this entry."""
    refers_to: UUID | None = None
    """The entry this one reverses, captures or voids."""
    reason: str | None = None
    """Human reason; required for adjustments."""
    opened_lots: tuple[Lot, ...] = ()
    """Lots this entry credits to members."""
    lot_moves: tuple[LotMove, ...] = ()
    """Changes to existing lots (consumption, restoration)."""
    released_lots: tuple[UUID, ...] = ()
    """Pending lots this entry makes available (RELEASE)."""
    attributes: Mapping[str, str | int | bool | None] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Kind-specific facts: rule versions, human explanation, hold expiry, request signature."""

    def __post_init__(self) -> None:
        if not isinstance(self.kind, EntryKind):
            raise InvalidEntry(f"unknown entry kind {self.kind!r}")
        if len(self.postings) < 2:
            raise InvalidEntry(f"{self.kind} entry needs at least two postings")
        totals: dict[Book, int] = {}
        for posting in self.postings:
            totals[posting.book] = totals.get(posting.book, 0) + posting.amount
        unbalanced = {book.value: total for book, total in totals.items() if total != 0}
        if unbalanced:
            raise InvalidEntry(f"{self.kind} entry does not balance: {unbalanced}")
        _require_aware(self.business_time, "business_time")
        _require_aware(self.booked_at, "booked_at")
        if self.kind is EntryKind.ADJUSTMENT and not (self.reason and self.reason.strip()):
            raise InvalidEntry("an adjustment needs a human reason")
        for key, value in self.attributes.items():
            if not isinstance(key, str) or isinstance(value, float):
                raise InvalidEntry(f"attribute {key!r} must be a str key with a non-float value")
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))

    def amount_on(self, account: str) -> int:
        """Net amount this entry posts to ``account``."""
        return sum(p.amount for p in self.postings if p.account == account)


def _require_aware(moment: datetime, name: str) -> None:
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise InvalidEntry(f"{name} must be a timezone-aware datetime")
