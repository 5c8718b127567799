"""The partner directory on the real store: partners, contracts, credentials and partner keys.

Each call runs in its own transaction, as the API runs it, so a refused change is rolled back (or,
for a business refusal, commits nothing but what it wrote) exactly as in production.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger import tables as lt
from ledger.db import Database
from ledger.errors import BusinessRefusal, InvalidRequest, SignatureError
from partners import directory
from partners import tables as t
from partners.directory import ContractTerms, PartnerStatus, Role
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
    UnknownPartner,
    VersionMismatch,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
JAN, FEB, MAR, APR = (datetime(2026, month, 1, tzinfo=UTC) for month in (1, 2, 3, 4))
IBAN = "DE89370400440532013000"
BIC = "COBADEFFXXX"


class Directory:
    """``partners.directory`` over one database: each call runs in a fresh transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def __getattr__(self, name: str) -> Callable[..., Any]:
        function = getattr(directory, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self.db.transaction() as conn:
                return function(conn, *args, **kwargs)

        return call

    def rows(self, table: sa.Table) -> list[dict[str, Any]]:
        with self.db.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(sa.select(table))]


@pytest.fixture
def d(db: Database) -> Directory:
    return Directory(db)


@pytest.fixture
def super_(d: Directory) -> str:
    """Partner SUPER, onboarded and active."""
    d.onboard_partner("SUPER", "Supermarché SA", IBAN, BIC, T0)
    return "SUPER"


def terms(**changes: Any) -> ContractTerms:
    values: dict[str, Any] = {
        "issue_price": Decimal("0.010000"),
        "reimbursement_price": Decimal("0.0085"),
        "breakage_rebate": Decimal("0.002"),
        "monthly_fee_cents": 50_000,
        "pending_days": 14,
        "earn_rate": Decimal("0.5"),
        "rounding_mode": "ROUND_HALF_EVEN",
        "carry_forward_threshold_cents": 1_000,
        "signing_required": False,
        "category_multipliers": {"fresh": Decimal("2"), "wine": Decimal("0.5")},
    }
    values.update(changes)
    return ContractTerms(**values)


# -- partners --------------------------------------------------------------------------------------


def test_onboarding_records_an_active_partner_and_opens_its_ledger_accounts(d: Directory) -> None:
    """Onboarding stores the partner active at version 1 and opens its ledger accounts."""
    partner = d.onboard_partner("SUPER", "Supermarché SA", "de89 3704 0044 0532 0130 00", BIC, T0)
    assert partner == d.partner("SUPER")
    assert (partner.status, partner.redemption_blocked, partner.version) == ("active", False, 1)
    assert partner.iban == IBAN
    accounts = {row["code"] for row in d.rows(lt.accounts)}
    assert {
        "partner:SUPER:issued",
        "partner:SUPER:redeemed",
        "partner:SUPER:settlement",
    } <= accounts


@pytest.mark.parametrize(
    ("iban", "bic"),
    [
        (IBAN, "COBADEFFXXX"),
        ("FR1420041010050500013M02606", "BNPAFRPP"),
        ("NL91ABNA0417164300", "ABNANL2A"),
    ],
)
def test_valid_iban_and_bic_accepted(d: Directory, iban: str, bic: str) -> None:
    """IBANs and 8- or 11-character BICs of several countries are accepted."""
    assert d.onboard_partner("P1", "Partner One", iban, bic, T0).bic == bic


@pytest.mark.parametrize(
    "iban",
    [
        "DE89370400440532013001",
        "DE8937040044053201300",
        "XX89370400440532013000",
        "not an iban",
        "",
    ],
)
def test_invalid_iban_refused_naming_the_field(d: Directory, iban: str) -> None:
    """A wrong checksum, length, country or text is refused as an invalid ``iban`` field."""
    with pytest.raises(InvalidField) as caught:
        d.onboard_partner("P1", "Partner One", iban, BIC, T0)
    assert caught.value.field == "iban"
    assert isinstance(caught.value, InvalidRequest)
    assert d.rows(t.partners) == []


@pytest.mark.parametrize("bic", ["COBADEFF1", "COBAZZFFXXX", "12345678", ""])
def test_invalid_bic_refused_naming_the_field(d: Directory, bic: str) -> None:
    """A BIC of the wrong length, country or structure is refused as an invalid ``bic`` field."""
    with pytest.raises(InvalidField) as caught:
        d.onboard_partner("P1", "Partner One", IBAN, bic, T0)
    assert caught.value.field == "bic"


def test_duplicate_partner_code_refused(d: Directory, super_: str) -> None:
    """Onboarding a code that is taken is refused and leaves the first partner unchanged."""
    with pytest.raises(PartnerExists):
        d.onboard_partner(super_, "Someone Else", IBAN, BIC, T0 + timedelta(days=1))
    assert d.partner(super_).legal_name == "Supermarché SA"


@pytest.mark.parametrize("code", ["has space", "a:b", "", "x" * 65])
def test_malformed_partner_code_refused(d: Directory, code: str) -> None:
    """A code that cannot be part of a ledger account code is refused."""
    with pytest.raises(InvalidField) as caught:
        d.onboard_partner(code, "Partner", IBAN, BIC, T0)
    assert caught.value.field == "code"


def test_unknown_partner_refused(d: Directory) -> None:
    """Reading or changing a partner that was never onboarded names it."""
    with pytest.raises(UnknownPartner):
        d.partner("NOBODY")
    with pytest.raises(UnknownPartner):
        d.set_status("NOBODY", "suspended", T0)


def test_active_partner_can_issue_and_redeem(d: Directory, super_: str) -> None:
    """An active partner passes both the issuing and the redemption checks."""
    assert d.require_can_issue(super_).code == super_
    assert d.require_can_redeem(super_).code == super_


@pytest.mark.parametrize("status", [PartnerStatus.SUSPENDED, PartnerStatus.EXITING])
def test_inactive_partner_cannot_issue_but_members_can_still_spend(
    d: Directory, super_: str, status: PartnerStatus
) -> None:
    """A suspended or exiting partner is refused issuing (a business refusal); redemptions go on."""
    d.set_status(super_, status, T0)
    with pytest.raises(PartnerSuspended) as caught:
        d.require_can_issue(super_)
    assert isinstance(caught.value, BusinessRefusal)
    assert caught.value.fields() == {"partner": super_, "status": status.value}
    assert d.require_can_redeem(super_).status == status


def test_blocked_redemptions_stop_spending(d: Directory, super_: str) -> None:
    """A suspension with redemptions blocked refuses both issuing and spending."""
    d.set_status(super_, "suspended", T0, redemption_blocked=True)
    with pytest.raises(RedemptionBlocked):
        d.require_can_redeem(super_)
    with pytest.raises(PartnerSuspended):
        d.require_can_issue(super_)


def test_reactivation_restores_issuing_and_spending(d: Directory, super_: str) -> None:
    """Setting a blocked partner active again lifts both refusals."""
    d.set_status(super_, "suspended", T0, redemption_blocked=True)
    d.set_status(super_, "active", T0)
    assert d.require_can_issue(super_).can_redeem


def test_active_partner_cannot_block_redemptions(d: Directory, super_: str) -> None:
    """Blocking redemptions without suspending the partner is refused."""
    with pytest.raises(InvalidField) as caught:
        d.set_status(super_, "active", T0, redemption_blocked=True)
    assert caught.value.field == "redemption_blocked"


def test_unknown_status_refused(d: Directory, super_: str) -> None:
    """A status outside active / suspended / exiting is refused."""
    with pytest.raises(InvalidField) as caught:
        d.set_status(super_, "closed", T0)
    assert caught.value.field == "status"


def test_version_grows_on_every_change_only(d: Directory, super_: str) -> None:
    """Each change bumps the version by one; repeating the current state leaves it as it is."""
    assert d.set_status(super_, "suspended", T0).version == 2
    assert d.set_status(super_, "suspended", T0).version == 2
    assert d.set_status(super_, "suspended", T0, redemption_blocked=True).version == 3
    assert d.set_status(super_, "exiting", T0, redemption_blocked=True).version == 4
    assert d.partner(super_).version == 4


def test_change_against_a_stale_version_refused(d: Directory, super_: str) -> None:
    """A change made with an out-of-date version (a failed If-Match) is refused and not applied."""
    d.set_status(super_, "suspended", T0, expected_version=1)
    with pytest.raises(VersionMismatch) as caught:
        d.set_status(super_, "exiting", T0, expected_version=1)
    assert caught.value.fields() == {"resource": "partner SUPER", "expected": 1, "current": 2}
    assert d.partner(super_).status == "suspended"


# -- contracts -------------------------------------------------------------------------------------


def test_contract_versions_are_numbered_in_order(d: Directory, super_: str) -> None:
    """Successive versions get 1, 2, 3 and the history lists them oldest first."""
    first = d.add_contract(super_, terms(), JAN, FEB, T0, "staff:alice")
    second = d.add_contract(super_, terms(pending_days=30), FEB, MAR, T0, "staff:alice")
    third = d.add_contract(super_, terms(), MAR, None, T0, None)
    assert [c.version for c in (first, second, third)] == [1, 2, 3]
    assert [c.version for c in d.contracts(super_)] == [1, 2, 3]
    assert third.price_version == "SUPER/v3"


def test_overlapping_version_refused(d: Directory, super_: str) -> None:
    """A version starting before the previous one ends is refused and not stored."""
    d.add_contract(super_, terms(), JAN, MAR, T0, None)
    with pytest.raises(ContractOverlap) as caught:
        d.add_contract(super_, terms(), FEB, APR, T0, None)
    assert caught.value.fields()["previous_version"] == 1
    assert len(d.contracts(super_)) == 1


def test_open_ended_version_is_superseded_from_a_later_date(d: Directory, super_: str) -> None:
    """A successor of an open-ended version takes over from its own start; the old row is kept."""
    d.add_contract(super_, terms(), JAN, None, T0, None)
    d.add_contract(super_, terms(earn_rate="2"), APR, None, T0, None)
    assert d.contract_at(super_, MAR).version == 1
    assert d.contract_at(super_, APR).version == 2
    assert [c.valid_to for c in d.contracts(super_)] == [None, None]


def test_open_ended_version_cannot_be_superseded_in_the_past(d: Directory, super_: str) -> None:
    """A successor may not start before now: events already priced are never repriced."""
    d.add_contract(super_, terms(), JAN, None, T0, None)
    with pytest.raises(ContractOverlap, match="open-ended"):
        d.add_contract(super_, terms(), FEB, None, MAR, None)
    with pytest.raises(ContractOverlap, match="open-ended"):
        d.add_contract(super_, terms(), JAN, None, T0, None)


def test_version_leaving_a_gap_refused(d: Directory, super_: str) -> None:
    """A version starting after the previous one ends is refused."""
    d.add_contract(super_, terms(), JAN, FEB, T0, None)
    with pytest.raises(ContractGap):
        d.add_contract(super_, terms(), FEB + timedelta(seconds=1), None, T0, None)
    assert len(d.contracts(super_)) == 1


def test_contract_at_picks_the_version_by_business_time_half_open(
    d: Directory, super_: str
) -> None:
    """valid_from is inside its version, valid_to is inside the next one; outside → NoContract."""
    d.add_contract(super_, terms(pending_days=14), JAN, FEB, T0, None)
    d.add_contract(super_, terms(pending_days=30), FEB, MAR, T0, None)
    tick = timedelta(microseconds=1)
    assert d.contract_at(super_, JAN).version == 1
    assert d.contract_at(super_, FEB - tick).version == 1
    assert d.contract_at(super_, FEB).version == 2
    assert d.contract_at(super_, FEB).terms.pending_days == 30
    assert d.contract_at(super_, MAR - tick).version == 2
    for outside in (JAN - tick, MAR):
        with pytest.raises(NoContract) as caught:
            d.contract_at(super_, outside)
        assert isinstance(caught.value, BusinessRefusal)


def test_contract_at_ignores_the_zone_of_the_business_time(d: Directory, super_: str) -> None:
    """Business times compare as instants: 00:30+01:00 on Feb 1 is still January in UTC."""
    d.add_contract(super_, terms(), JAN, FEB, T0, None)
    d.add_contract(super_, terms(), FEB, None, T0, None)
    paris = datetime(2026, 2, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    assert d.contract_at(super_, paris).version == 1


def test_terms_are_stored_as_exact_decimal_text(d: Directory, super_: str) -> None:
    """Prices and multipliers are stored as decimal strings and read back equal, never as floats."""
    stored = d.add_contract(super_, terms(), JAN, None, T0, "staff:alice")
    (row,) = d.rows(t.contracts)
    assert row["issue_price"] == "0.010000"
    assert row["reimbursement_price"] == "0.0085"
    assert row["category_multipliers"] == {"fresh": "2", "wine": "0.5"}
    loaded = d.contract_at(super_, JAN)
    assert loaded == stored
    assert loaded.terms.multiplier("fresh") == Decimal(2)
    assert loaded.terms.multiplier("unlisted") == Decimal(1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("issue_price", Decimal("0.0100001")),
        ("reimbursement_price", "0.12345678"),
        ("breakage_rebate", Decimal("1E-7")),
        ("earn_rate", 0.5),
        ("issue_price", 0.01),
        ("issue_price", Decimal("-0.01")),
        ("issue_price", "NaN"),
        ("monthly_fee_cents", 500.0),
        ("pending_days", -1),
        ("carry_forward_threshold_cents", True),
        ("rounding_mode", "ROUND_CEILING"),
        ("signing_required", "yes"),
    ],
)
def test_inexact_or_malformed_terms_refused(field: str, value: Any) -> None:
    """More than six decimal places, floats, negatives and unknown settings are refused by field."""
    with pytest.raises(InvalidField) as caught:
        terms(**{field: value})
    assert caught.value.field == field


@pytest.mark.parametrize("multiplier", [Decimal("1.0000001"), 1.5])
def test_inexact_category_multiplier_refused(multiplier: Any) -> None:
    """A category multiplier with more than six places or given as a float is refused."""
    with pytest.raises(InvalidField) as caught:
        terms(category_multipliers={"fresh": multiplier})
    assert caught.value.field == "category_multipliers.fresh"


def test_contract_period_must_not_be_empty(d: Directory, super_: str) -> None:
    """A version whose valid_to is not after its valid_from is refused."""
    with pytest.raises(InvalidField) as caught:
        d.add_contract(super_, terms(), FEB, FEB, T0, None)
    assert caught.value.field == "valid_to"


def test_contract_for_unknown_partner_refused(d: Directory) -> None:
    """A contract names an onboarded partner."""
    with pytest.raises(UnknownPartner):
        d.add_contract("NOBODY", terms(), JAN, None, T0, None)


def test_naive_business_time_refused(d: Directory, super_: str) -> None:
    """A datetime without a zone is refused: its instant is unknowable."""
    with pytest.raises(InvalidField) as caught:
        d.add_contract(super_, terms(), datetime(2026, 1, 1), None, T0, None)
    assert caught.value.field == "valid_from"


# -- credentials -----------------------------------------------------------------------------------


def test_token_is_shown_once_and_its_secret_is_not_stored(d: Directory, super_: str) -> None:
    """The token returned at issue is the only copy: the row holds neither it nor its secret."""
    credential_id, token = d.issue_credential(partner=super_, role="partner", label="tills", now=T0)
    secret = token.split(".", 1)[1]
    assert token == f"ck_{credential_id}.{secret}"
    (row,) = d.rows(t.credentials)
    for value in row.values():
        assert secret not in str(value)
        if isinstance(value, bytes):
            assert secret.encode() not in value
            assert value != hashlib.sha256(secret.encode()).digest()
    assert len(row["secret_hash"]) == 32
    assert d.authenticate(token, T0).id == credential_id


def test_authenticate_returns_the_credential_and_its_actor(d: Directory, super_: str) -> None:
    """A valid partner token authenticates as that partner; idempotency scope is the partner."""
    credential_id, token = d.issue_credential(partner=super_, role="partner", label=None, now=T0)
    credential = d.authenticate(token, T0)
    assert (credential.id, credential.role, credential.partner) == (
        credential_id,
        "partner",
        super_,
    )
    assert (credential.actor.credential, credential.actor.partner) == (credential_id, super_)
    assert credential.actor.idempotency_scope == "partner:SUPER"


def test_staff_credential_authenticates_as_staff(d: Directory) -> None:
    """A staff credential carries its role and staff account, and no partner."""
    _, token = d.issue_credential(staff="alice", role=Role.FINANCE, label=None, now=T0)
    credential = d.authenticate(token, T0)
    assert (credential.role, credential.staff, credential.partner) == ("finance", "alice", None)
    assert credential.actor.partner is None
    assert credential.actor.idempotency_scope == "staff:alice"


def test_wrong_secret_refused(d: Directory, super_: str) -> None:
    """The right id with another secret does not authenticate."""
    _, token = d.issue_credential(partner=super_, role="partner", label=None, now=T0)
    _, other = d.issue_credential(partner=super_, role="partner", label=None, now=T0)
    forged = token.split(".")[0] + "." + other.split(".")[1]
    with pytest.raises(AuthenticationFailed) as caught:
        d.authenticate(forged, T0)
    assert "wrong secret" in caught.value.reason
    assert caught.value.fields() == {}


@pytest.mark.parametrize(
    "token",
    ["", "ck_", "ck_abc", "ck_.secret", "ck_abc.", "Bearer x", "ck_0000000000.secret", "ck_é.x"],
)
def test_malformed_or_unknown_token_refused(d: Directory, token: str) -> None:
    """Malformed tokens and unknown ids are refused with the same message."""
    with pytest.raises(AuthenticationFailed, match="invalid, unknown or revoked credential"):
        d.authenticate(token, T0)


def test_revoked_credential_refused(d: Directory, super_: str) -> None:
    """A revoked credential stops authenticating from its revocation time on."""
    credential_id, token = d.issue_credential(partner=super_, role="partner", label=None, now=T0)
    revoked_at = T0 + timedelta(hours=1)
    assert d.revoke_credential(credential_id, revoked_at).revoked_at == revoked_at
    with pytest.raises(AuthenticationFailed, match="revoked"):
        d.authenticate(token, revoked_at)
    assert (
        d.revoke_credential(credential_id, revoked_at + timedelta(hours=1)).revoked_at == revoked_at
    )


def test_rotation_refuses_the_old_token_and_accepts_the_new(d: Directory, super_: str) -> None:
    """After a rotation the old token is refused; the new one has the same role, owner and label."""
    old_id, old_token = d.issue_credential(partner=super_, role="partner", label="tills", now=T0)
    later = T0 + timedelta(days=1)
    new_id, new_token = d.rotate_credential(old_id, later)
    assert new_id != old_id
    with pytest.raises(AuthenticationFailed):
        d.authenticate(old_token, later)
    new = d.authenticate(new_token, later)
    assert (new.partner, new.role, new.label) == (super_, "partner", "tills")
    with pytest.raises(CredentialRevoked):
        d.rotate_credential(old_id, later)


def test_rotation_grace_period_keeps_the_old_token_briefly(d: Directory, super_: str) -> None:
    """With a grace period the old token works until it ends, and not after."""
    old_id, old_token = d.issue_credential(partner=super_, role="partner", label=None, now=T0)
    d.rotate_credential(old_id, T0, grace=timedelta(hours=1))
    assert d.authenticate(old_token, T0 + timedelta(minutes=59)).id == old_id
    with pytest.raises(AuthenticationFailed):
        d.authenticate(old_token, T0 + timedelta(hours=1))


def test_last_used_at_is_updated_on_authentication(d: Directory, super_: str) -> None:
    """Authenticating records the time, at most once per resolution interval."""
    credential_id, token = d.issue_credential(partner=super_, role="partner", label=None, now=T0)
    assert d.credential(credential_id).last_used_at is None
    first = T0 + timedelta(hours=1)
    assert d.authenticate(token, first).last_used_at == first
    assert d.credential(credential_id).last_used_at == first
    d.authenticate(token, first + timedelta(seconds=10))
    assert d.credential(credential_id).last_used_at == first
    later = first + timedelta(hours=2)
    d.authenticate(token, later)
    assert d.credential(credential_id).last_used_at == later


@pytest.mark.parametrize(
    ("partner", "staff", "role"),
    [
        (None, None, "partner"),
        ("SUPER", "alice", "partner"),
        (None, "alice", "partner"),
        ("SUPER", None, "admin"),
        ("SUPER", "alice", "auditor"),
        (None, None, "privacy"),
    ],
)
def test_credential_owner_must_match_its_role(
    d: Directory, super_: str, partner: str | None, staff: str | None, role: str
) -> None:
    """Partner credentials name a partner and no staff; staff credentials the reverse."""
    with pytest.raises(InvalidField):
        d.issue_credential(partner=partner, staff=staff, role=role, label=None, now=T0)
    assert d.rows(t.credentials) == []


def test_unknown_role_and_unknown_partner_refused(d: Directory) -> None:
    """A role outside §9's list, or a partner never onboarded, is refused."""
    with pytest.raises(InvalidField) as caught:
        d.issue_credential(staff="alice", role="root", label=None, now=T0)
    assert caught.value.field == "role"
    with pytest.raises(UnknownPartner):
        d.issue_credential(partner="NOBODY", role="partner", label=None, now=T0)


# -- partner keys ----------------------------------------------------------------------------------


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_key_id_is_the_sha256_prefix_of_the_raw_key(d: Directory, super_: str) -> None:
    """A key given in base64 is stored raw, under the first 16 hex digits of its SHA-256."""
    key = Ed25519PrivateKey.generate()
    key_id = d.add_partner_key(super_, base64.b64encode(raw(key)).decode(), JAN, T0)
    assert key_id == hashlib.sha256(raw(key)).hexdigest()[:16]
    (stored,) = d.partner_keys(super_)
    assert (stored.public_key, stored.valid_from, stored.valid_to) == (raw(key), JAN, None)


def test_key_rotation_keeps_old_signatures_verifying(d: Directory, super_: str) -> None:
    """After a rotation the old key verifies what it signed in its window; the new takes over."""
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    old_id = d.add_partner_key(super_, raw(old), JAN, T0)
    new_id = d.add_partner_key(super_, raw(new), FEB, FEB)
    d.retire_partner_key(old_id, FEB)
    in_january, in_february = JAN + timedelta(days=10), FEB + timedelta(days=10)
    assert (
        d.verify_partner_signature(super_, old_id, b"jan", old.sign(b"jan"), in_january).key_id
        == old_id
    )
    assert (
        d.verify_partner_signature(super_, new_id, b"feb", new.sign(b"feb"), in_february).key_id
        == new_id
    )
    with pytest.raises(SignatureError):
        d.verify_partner_signature(super_, new_id, b"jan", new.sign(b"jan"), in_january)


def test_signature_dated_after_retirement_fails(d: Directory, super_: str) -> None:
    """A key's signature dated at or after its retirement is refused even though it is genuine."""
    key = Ed25519PrivateKey.generate()
    key_id = d.add_partner_key(super_, raw(key), JAN, T0)
    d.retire_partner_key(key_id, FEB)
    signature = key.sign(b"message")
    assert d.verify_partner_signature(
        super_, key_id, b"message", signature, FEB - timedelta(seconds=1)
    )
    for at in (FEB, MAR):
        with pytest.raises(SignatureError, match="not at"):
            d.verify_partner_signature(super_, key_id, b"message", signature, at)


def test_tampered_message_or_foreign_key_fails(d: Directory, super_: str) -> None:
    """A changed message, another key's signature, or another partner's key id does not verify."""
    d.onboard_partner("DEPT", "Department Store", IBAN, BIC, T0)
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    key_id = d.add_partner_key(super_, raw(key), JAN, T0)
    at = JAN + timedelta(days=1)
    with pytest.raises(SignatureError, match="does not verify"):
        d.verify_partner_signature(super_, key_id, b"message!", key.sign(b"message"), at)
    with pytest.raises(SignatureError, match="does not verify"):
        d.verify_partner_signature(super_, key_id, b"message", other.sign(b"message"), at)
    with pytest.raises(SignatureError, match="has no key"):
        d.verify_partner_signature("DEPT", key_id, b"message", key.sign(b"message"), at)


def test_retirement_can_be_brought_forward_but_not_pushed_back(d: Directory, super_: str) -> None:
    """A retired key's end can move earlier (a compromise) but never later."""
    key_id = d.add_partner_key(super_, raw(Ed25519PrivateKey.generate()), JAN, T0)
    d.retire_partner_key(key_id, MAR)
    assert d.retire_partner_key(key_id, FEB).valid_to == FEB
    with pytest.raises(InvalidField):
        d.retire_partner_key(key_id, APR)
    with pytest.raises(InvalidField):
        d.retire_partner_key(key_id, JAN)


def test_duplicate_or_malformed_key_refused(d: Directory, super_: str) -> None:
    """The same key cannot be registered twice; a key that is not 32 bytes of Ed25519 is refused."""
    key = raw(Ed25519PrivateKey.generate())
    d.add_partner_key(super_, key, JAN, T0)
    with pytest.raises(PartnerKeyExists):
        d.add_partner_key(super_, key, FEB, T0)
    for bad in (key[:31], "not base64!", base64.b64encode(b"x" * 33).decode()):
        with pytest.raises(InvalidField) as caught:
            d.add_partner_key(super_, bad, JAN, T0)
        assert caught.value.field == "public_key"
