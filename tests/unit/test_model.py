"""The ledger's records refuse to exist when they break double entry, and its errors round-trip."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any
from uuid import uuid4

import pytest

from ledger.errors import (
    BusinessRefusal,
    CaptureExceedsHold,
    HoldNotOpen,
    InsufficientPoints,
    InvalidEntry,
    InvalidRequest,
    NotReversible,
    ReversalExceedsOriginal,
)
from ledger.model import (
    MEMBER_ROLES,
    PARTNER_ROLES,
    SYSTEM_ACCOUNTS,
    Account,
    AccountKind,
    Book,
    Entry,
    EntryKind,
    Lot,
    LotMove,
    Posting,
    check_owner,
    member_account,
    partner_account,
)
from ledger.numbers import MAX_AMOUNT

NOW = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)


def entry(*postings: Posting, kind: EntryKind = EntryKind.EARN, **fields: Any) -> Entry:
    """An entry with sensible defaults, so each test names only what it is about."""
    values: dict[str, Any] = {"business_time": NOW, "booked_at": NOW, **fields}
    return Entry(id=uuid4(), kind=kind, postings=tuple(postings), **values)


def earn_postings(points: int = 100) -> tuple[Posting, Posting]:
    return Posting("partner:SUPER:issued", -points), Posting("member:m1:available", points)


# -- Entry ----------------------------------------------------------------------------------------


def test_balanced_entry_is_built() -> None:
    """A two-legged entry that sums to zero exists, with its amounts readable per account."""
    built = entry(*earn_postings(100))
    assert built.amount_on("member:m1:available") == 100
    assert built.amount_on("partner:SUPER:issued") == -100
    assert built.amount_on("partner:RAIL:issued") == 0


def test_unbalanced_entry_cannot_be_built() -> None:
    """An entry whose postings do not sum to zero is refused, naming the book that is off."""
    with pytest.raises(InvalidEntry, match="POINTS"):
        entry(Posting("partner:SUPER:issued", -100), Posting("member:m1:available", 99))


def test_each_book_must_balance_on_its_own() -> None:
    """Points and cents never offset each other: each book sums to zero separately."""
    with pytest.raises(InvalidEntry, match="does not balance"):
        entry(
            Posting("partner:SUPER:issued", -100),
            Posting("operator:bank", 100),
            kind=EntryKind.SETTLEMENT,
        )


def test_entry_balanced_in_both_books_is_built() -> None:
    """An entry may touch both books as long as each one balances."""
    built = entry(
        Posting("partner:SUPER:issued", -5),
        Posting("program:funded", 5),
        Posting("partner:SUPER:settlement", -700),
        Posting("operator:income", 700),
        kind=EntryKind.SETTLEMENT,
    )
    assert {p.book for p in built.postings} == {Book.POINTS, Book.EUR}


@pytest.mark.parametrize("count", [0, 1])
def test_entry_needs_at_least_two_postings(count: int) -> None:
    """An entry with fewer than two postings is refused (a single posting cannot balance)."""
    postings = earn_postings()[:count]
    with pytest.raises(InvalidEntry, match="two postings"):
        entry(*postings)


def test_three_legged_joint_earn_is_built() -> None:
    """A joint promotion's entry has one leg per funder plus the member's leg."""
    built = entry(
        Posting("partner:SUPER:issued", -60),
        Posting("partner:DEPT:issued", -40),
        Posting("member:m1:available", 100),
    )
    assert len(built.postings) == 3


@pytest.mark.parametrize(
    "amount", [0, 1.0, 100.0, True, False, "100", None, MAX_AMOUNT + 1, -(MAX_AMOUNT + 1)], ids=repr
)
def test_posting_amount_must_be_a_nonzero_integer_within_range(amount: object) -> None:
    """Zero, float, bool, text and out-of-range amounts never make a posting."""
    with pytest.raises(InvalidEntry):
        Posting("member:m1:available", amount)  # type: ignore[arg-type]


@pytest.mark.parametrize("amount", [1, -1, MAX_AMOUNT, -MAX_AMOUNT])
def test_posting_accepts_signed_integers_up_to_the_json_limit(amount: int) -> None:
    """Any non-zero integer of magnitude ≤ 2^53−1 is a posting amount, in either direction."""
    assert Posting("partner:SUPER:issued", amount).amount == amount


@pytest.mark.parametrize(
    "account",
    ["member:m1:spent", "partner:SUPER:held", "program:bonus", "bank", "member:m1", ""],
)
def test_posting_on_an_unknown_account_cannot_be_built(account: str) -> None:
    """A posting names an account of the chart; anything else is refused."""
    with pytest.raises(InvalidEntry):
        Posting(account, 10)


@pytest.mark.parametrize("kind", ["EARN", "REFUND", None])
def test_entry_kind_must_be_an_entry_kind(kind: object) -> None:
    """An entry's kind is an :class:`EntryKind`, not a look-alike string."""
    with pytest.raises(InvalidEntry, match="unknown entry kind"):
        entry(*earn_postings(), kind=kind)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["business_time", "booked_at"])
def test_entry_times_must_be_timezone_aware(field: str) -> None:
    """A naive datetime is refused: its zone, and so its period, is unknowable."""
    with pytest.raises(InvalidEntry, match=field):
        entry(*earn_postings(), **{field: datetime(2026, 3, 14, 9, 30)})


def test_entry_accepts_any_aware_timezone() -> None:
    """Aware times in any zone are accepted; they denote the same instant as their UTC form."""
    paris = timezone(timedelta(hours=1))
    built = entry(*earn_postings(), business_time=NOW.astimezone(paris))
    assert built.business_time == NOW


@pytest.mark.parametrize("reason", [None, "", "   \n"])
def test_adjustment_needs_a_reason(reason: str | None) -> None:
    """A manual adjustment without a human reason cannot exist."""
    postings = (Posting("member:m1:available", 5), Posting("program:adjustments", -5))
    with pytest.raises(InvalidEntry, match="reason"):
        entry(*postings, kind=EntryKind.ADJUSTMENT, reason=reason)


def test_adjustment_with_reason_is_built() -> None:
    """An adjustment with a reason is an ordinary balanced entry."""
    postings = (Posting("member:m1:available", 5), Posting("program:adjustments", -5))
    built = entry(*postings, kind=EntryKind.ADJUSTMENT, reason="goodwill: late delivery")
    assert built.reason == "goodwill: late delivery"


def test_entry_attributes_refuse_floats() -> None:
    """No float reaches an entry, not even through its free-form attributes."""
    with pytest.raises(InvalidEntry, match="non-float"):
        entry(*earn_postings(), attributes={"rate": 0.01})


def test_entry_is_immutable_and_keeps_a_private_copy_of_attributes() -> None:
    """An entry cannot be changed after it is built, not even through the caller's dict."""
    attributes = {"rule": "earn-v3"}
    built = entry(*earn_postings(), attributes=attributes)
    attributes["rule"] = "tampered"
    assert built.attributes["rule"] == "earn-v3"
    assert isinstance(built.attributes, MappingProxyType)
    with pytest.raises(TypeError):
        built.attributes["rule"] = "x"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.kind = EntryKind.BURN  # type: ignore[misc]


# -- Lot and LotMove ------------------------------------------------------------------------------


def make_lot(**fields: Any) -> Lot:
    values: dict[str, Any] = {
        "id": uuid4(),
        "member": "m1",
        "funder": "SUPER",
        "amount": 100,
        "earned_at": NOW,
        "expires_at": NOW + timedelta(days=3 * 365),
        "pending_until": None,
        **fields,
    }
    return Lot(**values)


@pytest.mark.parametrize("amount", [0, -1, 1.0, True])
def test_lot_opens_with_a_positive_integer(amount: object) -> None:
    """A lot credits a positive integer number of points."""
    with pytest.raises(InvalidEntry):
        make_lot(amount=amount)


@pytest.mark.parametrize("field", ["earned_at", "expires_at", "pending_until"])
def test_lot_times_must_be_aware(field: str) -> None:
    """Every time on a lot is timezone-aware."""
    with pytest.raises(InvalidEntry, match=field):
        make_lot(**{field: datetime(2026, 3, 14)})


def test_lot_may_never_expire_and_need_no_return_window() -> None:
    """``expires_at`` and ``pending_until`` are optional."""
    lot = make_lot(expires_at=None, pending_until=None)
    assert lot.expires_at is None
    assert lot.pending_until is None


@pytest.mark.parametrize("delta", [0, 1.0, True])
def test_lot_move_is_a_nonzero_integer(delta: object) -> None:
    """A lot move changes a lot by a non-zero integer."""
    with pytest.raises(InvalidEntry):
        LotMove(uuid4(), delta)  # type: ignore[arg-type]


# -- Accounts -------------------------------------------------------------------------------------


CHART = [
    *(f"member:m-1_x.9:{role}" for role in MEMBER_ROLES),
    *(f"partner:SUPER:{role}" for role in PARTNER_ROLES),
    *SYSTEM_ACCOUNTS,
]


@pytest.mark.parametrize("code", CHART)
def test_account_parse_accepts_the_chart_of_accounts(code: str) -> None:
    """Every member, partner, program and operator account of the chart parses to itself."""
    account = Account.parse(code)
    assert account.code == code
    assert account.kind.value == (
        f"{code.split(':')[0]}:{code.split(':')[2]}" if code.count(":") == 2 else code
    )


def test_account_parse_reads_kind_owner_and_book() -> None:
    """An account code spells its kind, its owner and therefore its book."""
    member = Account.parse("member:m1:held")
    assert (member.kind, member.owner, member.book) == (
        AccountKind.MEMBER_HELD,
        "m1",
        Book.POINTS,
    )
    settlement = Account.parse("partner:RAIL:settlement")
    assert (settlement.owner, settlement.book) == ("RAIL", Book.EUR)
    bank = Account.parse("operator:bank")
    assert (bank.owner, bank.book) == (None, Book.EUR)
    assert Account.parse("program:breakage").book is Book.POINTS


@pytest.mark.parametrize(
    "code",
    [
        "",
        "member",
        "member:m1",
        "member::available",
        "member:m1:spent",
        "member:m1:available:extra",
        "member:m 1:available",
        "member:mé:available",
        "member:-m1:available",
        "member:m1\n:available",
        f"member:{'a' * 65}:available",
        "partner:SUPER:held",
        "partner:SUPER",
        "program:bonus",
        "program:breakage:x",
        "operator:cash",
        "operator:bank:SUPER",
        "issued:partner:SUPER",
        "program:available",
        "member:available",
        "partner:issued",
        "MEMBER:m1:available",
    ],
)
def test_account_parse_refuses_codes_outside_the_chart(code: str) -> None:
    """Unknown kinds, malformed owners and wrong shapes are not accounts."""
    with pytest.raises(InvalidEntry):
        Account.parse(code)


@pytest.mark.parametrize("code", [None, 42, b"program:funded"])
def test_account_parse_refuses_non_text(code: object) -> None:
    """An account code is text."""
    with pytest.raises(InvalidEntry):
        Account.parse(code)  # type: ignore[arg-type]


def test_only_member_accounts_are_floored_at_zero() -> None:
    """Member accounts can never go negative; partner, program and operator accounts can."""
    floored = {kind for kind in AccountKind if kind.never_negative}
    assert floored == {
        AccountKind.MEMBER_AVAILABLE,
        AccountKind.MEMBER_PENDING,
        AccountKind.MEMBER_HELD,
    }


def test_euro_accounts_are_settlement_and_operator_accounts() -> None:
    """Settlement and operator accounts keep the EUR book; all others keep points."""
    eur = {kind for kind in AccountKind if kind.book is Book.EUR}
    assert eur == {
        AccountKind.PARTNER_SETTLEMENT,
        AccountKind.OPERATOR_BANK,
        AccountKind.OPERATOR_INCOME,
        AccountKind.OPERATOR_EXPENSE,
        AccountKind.OPERATOR_ROUNDING,
    }


def test_account_code_helpers_build_valid_codes() -> None:
    """``member_account`` and ``partner_account`` build chart codes and refuse bad roles."""
    assert member_account("m1", "pending") == "member:m1:pending"
    assert partner_account("SUPER", "redeemed") == "partner:SUPER:redeemed"
    with pytest.raises(InvalidEntry):
        member_account("m1", "issued")
    with pytest.raises(InvalidEntry):
        partner_account("SUPER", "available")


@pytest.mark.parametrize("value", ["", "a:b", "é", "x" * 65, "m1\n", None, 7, "_lead"])
def test_check_owner_refuses_ids_that_cannot_live_in_account_codes(value: object) -> None:
    """Member ids and partner codes are 1–64 ASCII letters, digits, '_', '.' or '-'."""
    with pytest.raises(InvalidRequest):
        check_owner(value, "member id")  # type: ignore[arg-type]


# -- Errors ---------------------------------------------------------------------------------------


REFUSAL_SAMPLES: list[BusinessRefusal] = [
    InsufficientPoints("member:m1:available", 40, 100),
    HoldNotOpen(uuid4(), "captured"),
    CaptureExceedsHold(uuid4(), 70, 80),
    ReversalExceedsOriginal(uuid4(), 30, 31),
    NotReversible(uuid4(), "HOLD"),
]


def _all_subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


def test_refusal_samples_cover_every_kernel_business_refusal() -> None:
    """Each BusinessRefusal of the kernel has a sample here, so the round trip below covers it."""
    kernel = {sub for sub in _all_subclasses(BusinessRefusal) if sub.__module__ == "ledger.errors"}
    assert {type(sample) for sample in REFUSAL_SAMPLES} == kernel


def test_refusal_codes_are_unique_across_packages() -> None:
    """No two refusal classes share a code, so a recorded refusal replays as exactly one class."""
    import partners.earning
    import partners.errors
    import partners.rules  # noqa: F401

    classes = _all_subclasses(BusinessRefusal)
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), sorted(codes)


@pytest.mark.parametrize("refusal", REFUSAL_SAMPLES, ids=lambda r: type(r).__name__)
def test_business_refusal_round_trips_through_its_record(refusal: BusinessRefusal) -> None:
    """A refusal stored as (code, message, fields) JSON comes back as the same class and fields."""
    stored = json.loads(
        json.dumps({"code": refusal.code, "message": refusal.message, "fields": refusal.fields()})
    )
    rebuilt = BusinessRefusal.from_record(stored["code"], stored["message"], stored["fields"])
    assert type(rebuilt) is type(refusal)
    assert rebuilt.code == refusal.code
    assert rebuilt.fields() == refusal.fields()
    assert rebuilt.message == refusal.message
    assert str(rebuilt) == str(refusal)


def test_unknown_refusal_code_comes_back_as_a_plain_refusal() -> None:
    """A record whose code no class claims still rebuilds, as a generic BusinessRefusal."""
    rebuilt = BusinessRefusal.from_record("no-such-code", "refused", {"why": "retired rule"})
    assert type(rebuilt) is BusinessRefusal
    assert rebuilt.fields() == {"why": "retired rule"}


def test_refusal_fields_name_the_machine_details() -> None:
    """Each refusal carries the machine fields an API client needs."""
    assert InsufficientPoints("member:m1:available", 40, 100).fields() == {
        "account": "member:m1:available",
        "balance": 40,
        "requested": 100,
    }
    hold = uuid4()
    assert CaptureExceedsHold(hold, 70, 80).fields() == {
        "hold_id": str(hold),
        "held": 70,
        "requested": 80,
    }
