"""Marshmallow schemas: the public contract of the REST API, written by hand.

Amounts are strict integers (points or cents) — a JSON number with a fraction is refused before it
reaches the ledger. Times are ISO 8601 with an offset; a naive time is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from ledger.numbers import ROUNDING_MODES
from partners.directory import PartnerStatus, Role

MEMBER_ID = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", error="not a member id")
POINTS = validate.Range(min=1, max=2**53 - 1)


class StrictSchema(Schema):
    class Meta:
        ordered = True


class PostingSchema(StrictSchema):
    account = fields.String(required=True)
    amount = fields.Integer(required=True, strict=True)


class LotSchema(StrictSchema):
    id = fields.UUID()
    member = fields.String()
    funder = fields.String()
    amount = fields.Integer()
    earned_at = fields.DateTime()
    expires_at = fields.DateTime(allow_none=True)
    pending_until = fields.DateTime(allow_none=True)
    price_version = fields.String(allow_none=True)


class LotMoveSchema(StrictSchema):
    lot_id = fields.UUID()
    delta = fields.Integer()


class EntrySchema(StrictSchema):
    id = fields.UUID(required=True)
    kind = fields.String(required=True)
    business_time = fields.DateTime(required=True)
    booked_at = fields.DateTime(required=True)
    partner = fields.String(allow_none=True)
    refers_to = fields.UUID(allow_none=True)
    reason = fields.String(allow_none=True)
    postings = fields.List(fields.Nested(PostingSchema), required=True)
    opened_lots = fields.List(fields.Nested(LotSchema))
    lot_moves = fields.List(fields.Nested(LotMoveSchema))
    attributes = fields.Dict(keys=fields.String())


class BusinessTimeMixin(StrictSchema):
    business_time = fields.AwareDateTime(
        load_default=None, metadata={"description": "when it happened at the partner; default now"}
    )


class BurnRequest(BusinessTimeMixin):
    member = fields.String(required=True, validate=MEMBER_ID)
    points = fields.Integer(required=True, strict=True, validate=POINTS)


class HoldRequest(BurnRequest):
    ttl_seconds = fields.Integer(strict=True, load_default=None, validate=validate.Range(1, 86_400))


class CaptureRequest(BusinessTimeMixin):
    points = fields.Integer(required=True, strict=True, validate=POINTS)


class VoidRequest(BusinessTimeMixin):
    pass


class ReversalRequest(BusinessTimeMixin):
    points = fields.Integer(strict=True, load_default=None, validate=POINTS,
                            metadata={"description": "omit to reverse all that is left"})
    reason = fields.String(load_default=None, validate=validate.Length(max=500))


class TransferRequest(BusinessTimeMixin):
    from_member = fields.String(required=True, validate=MEMBER_ID)
    to_member = fields.String(required=True, validate=MEMBER_ID)
    points = fields.Integer(required=True, strict=True, validate=POINTS)


class ReceiptQuery(StrictSchema):
    wait = fields.Float(load_default=0.0, validate=validate.Range(0, 10),
                        metadata={"description": "seconds to wait for the integrator"})


class ReceiptSchema(StrictSchema):
    entry_id = fields.UUID()
    log = fields.String()
    index = fields.Integer()
    leaf_hash = fields.String()
    leaf = fields.String()
    checkpoint = fields.String()
    tree_size = fields.Integer()
    inclusion_proof = fields.List(fields.String())
    tlog_proof = fields.String()


class CheckpointSchema(StrictSchema):
    log = fields.String()
    size = fields.Integer()
    root = fields.String(metadata={"description": "hex"})
    note = fields.String(metadata={"description": "the C2SP signed note"})


class ConsistencyQuery(StrictSchema):
    log = fields.String(load_default=None)
    from_ = fields.Integer(data_key="from", required=True, strict=False,
                           validate=validate.Range(min=1))
    to = fields.Integer(required=True, strict=False, validate=validate.Range(min=1))


class ConsistencySchema(StrictSchema):
    log = fields.String()
    old = fields.String()
    new = fields.String()
    proof = fields.List(fields.String())


class HealthSchema(StrictSchema):
    status = fields.String()
    detail = fields.Dict(keys=fields.String(), values=fields.Raw())


def entry_json(entry: Any) -> dict[str, Any]:
    """An Entry as the API shows it (serialised by :class:`EntrySchema`)."""
    return {
        "id": entry.id,
        "kind": entry.kind.value,
        "business_time": entry.business_time,
        "booked_at": entry.booked_at,
        "partner": entry.partner,
        "refers_to": entry.refers_to,
        "reason": entry.reason,
        "postings": [{"account": p.account, "amount": p.amount} for p in entry.postings],
        "opened_lots": [
            {"id": lot.id, "member": lot.member, "funder": lot.funder, "amount": lot.amount,
             "earned_at": lot.earned_at, "expires_at": lot.expires_at,
             "pending_until": lot.pending_until, "price_version": lot.price_version}
            for lot in entry.opened_lots
        ],
        "lot_moves": [{"lot_id": m.lot_id, "delta": m.delta} for m in entry.lot_moves],
        "attributes": dict(entry.attributes),
    }


# -- administration: partners, contracts, credentials, signing keys, staff ------------------------
#
# Prices and rates travel as decimal STRINGS ("0.0105"), never JSON numbers: a binary float cannot
# hold most decimal prices exactly, and the contract is money. Counts and cents are strict integers.

PARTNER_CODE = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", error="not a partner code")
STAFF_NAME = validate.Regexp(
    r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$", error="not a staff account name"
)
DECIMAL_TEXT = validate.Regexp(
    r"^[0-9]{1,13}(\.[0-9]{1,6})?$",
    error='a decimal string such as "0.0105" (at most six places), not a number',
)
COUNT = validate.Range(min=0, max=2**53 - 1)


def one_line(value: str) -> None:
    """Refuse a newline: ``$`` in the patterns here also matches just before a final newline."""
    if "\n" in value:
        raise ValidationError("must be a single line")


def storable_time(value: datetime) -> None:
    """Refuse a time that has no UTC equivalent (e.g. year 1 at +01:00), which cannot be stored."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValidationError("is out of range") from None


#: Free text the database stores: no control characters (PostgreSQL refuses NUL in text and JSON).
PRINTABLE = validate.Regexp(r"^[^\x00-\x1f\x7f]*$", error="must not contain control characters")
STAFF_ROLES = tuple(role.value for role in Role if role is not Role.PARTNER)
PARTNER_STATUSES = tuple(status.value for status in PartnerStatus)


def decimal_text(**kwargs: Any) -> fields.String:
    """A price or rate as a decimal string; a JSON number is refused."""
    return fields.String(validate=[DECIMAL_TEXT, one_line], metadata={"example": "0.0100"},
                         **kwargs)


class Cursor(fields.String):
    """An opaque page cursor: URL-safe base64 of the JSON sort key of the last item returned."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            key = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (ValueError, binascii.Error):
            raise ValidationError("not a cursor returned by this API") from None
        if not isinstance(key, list) or not all(
            type(part) is int or (type(part) is str and part.isprintable()) for part in key
        ):
            raise ValidationError("not a cursor returned by this API")
        return key


def encode_cursor(key: list) -> str:
    """The cursor that resumes a listing after the item whose sort key is ``key``."""
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


class CursorQuery(StrictSchema):
    """``?limit=&cursor=`` of a listing; the cursor arrives decoded as its sort key (a list)."""

    limit = fields.Integer(load_default=50, validate=validate.Range(1, 200),
                           metadata={"description": "items per page, 1–200"})
    cursor = Cursor(
        load_default=None,
        metadata={"description": "next_cursor of the previous page; omit for the first"},
    )


class PartnerListQuery(CursorQuery):
    status = fields.String(load_default=None, validate=validate.OneOf(PARTNER_STATUSES))


class PartnerCreate(StrictSchema):
    code = fields.String(required=True, validate=[PARTNER_CODE, one_line])
    legal_name = fields.String(required=True,
                               validate=[validate.Length(1, 200), PRINTABLE, one_line])
    iban = fields.String(required=True, validate=validate.Length(1, 64),
                         metadata={"description": "checked: country format and checksum"})
    bic = fields.String(required=True, validate=validate.Length(1, 16))


class PartnerPatch(StrictSchema):
    status = fields.String(validate=validate.OneOf(PARTNER_STATUSES))
    redemption_blocked = fields.Boolean(
        metadata={"description": "only for a partner that is not active; default false when "
                                 "the status becomes active, else unchanged"}
    )

    @validates_schema
    def _requires_a_change(self, data: dict, **kwargs: Any) -> None:
        if not data:
            raise ValidationError("send status, redemption_blocked or both", "_schema")


class PartnerSchema(StrictSchema):
    code = fields.String()
    legal_name = fields.String()
    iban = fields.String()
    bic = fields.String()
    status = fields.String()
    redemption_blocked = fields.Boolean()
    created_at = fields.DateTime()
    version = fields.Integer(metadata={"description": "also the ETag"})


class PartnerPage(StrictSchema):
    items = fields.List(fields.Nested(PartnerSchema))
    next_cursor = fields.String(allow_none=True)


class ContractCreate(StrictSchema):
    valid_from = fields.AwareDateTime(required=True, validate=storable_time)
    valid_to = fields.AwareDateTime(load_default=None, validate=storable_time,
                                    metadata={"description": "exclusive; omit for open-ended"})
    issue_price = decimal_text(required=True)
    reimbursement_price = decimal_text(required=True)
    breakage_rebate = decimal_text(required=True)
    monthly_fee_cents = fields.Integer(required=True, strict=True, validate=COUNT)
    pending_days = fields.Integer(required=True, strict=True, validate=validate.Range(0, 3650))
    earn_rate = decimal_text(required=True)
    category_multipliers = fields.Dict(
        keys=fields.String(validate=[validate.Length(1, 64), PRINTABLE, one_line]),
        values=fields.String(validate=[DECIMAL_TEXT, one_line]),
        load_default=dict,
        metadata={"example": {"fuel": "0.5", "fresh": "1.5"}},
    )
    rounding_mode = fields.String(load_default="ROUND_HALF_UP",
                                  validate=validate.OneOf(tuple(ROUNDING_MODES)))
    carry_forward_threshold_cents = fields.Integer(required=True, strict=True, validate=COUNT)
    signing_required = fields.Boolean(load_default=False)


class ContractSchema(StrictSchema):
    partner = fields.String()
    version = fields.Integer()
    price_version = fields.String(metadata={"description": "e.g. SUPER/v3, stamped on entries"})
    valid_from = fields.DateTime()
    valid_to = fields.DateTime(allow_none=True)
    issue_price = fields.String()
    reimbursement_price = fields.String()
    breakage_rebate = fields.String()
    monthly_fee_cents = fields.Integer()
    pending_days = fields.Integer()
    earn_rate = fields.String()
    category_multipliers = fields.Dict(keys=fields.String(), values=fields.String())
    rounding_mode = fields.String()
    carry_forward_threshold_cents = fields.Integer()
    signing_required = fields.Boolean()
    created_at = fields.DateTime()
    created_by = fields.String(allow_none=True)


class ContractPage(StrictSchema):
    items = fields.List(fields.Nested(ContractSchema))
    next_cursor = fields.String(allow_none=True)


class CredentialCreate(StrictSchema):
    label = fields.String(load_default=None,
                          validate=[validate.Length(1, 100), PRINTABLE, one_line])


class StaffCreate(CredentialCreate):
    name = fields.String(required=True, validate=[STAFF_NAME, one_line],
                         metadata={"description": "the staff account, e.g. alice"})
    role = fields.String(required=True, validate=validate.OneOf(STAFF_ROLES))


class RotateRequest(StrictSchema):
    grace_seconds = fields.Integer(
        load_default=0, strict=True, validate=validate.Range(0, 7 * 86_400),
        metadata={"description": "how long the old token keeps working; default 0"},
    )


class CredentialSchema(StrictSchema):
    id = fields.String()
    role = fields.String()
    partner = fields.String(allow_none=True)
    staff = fields.String(allow_none=True)
    label = fields.String(allow_none=True)
    created_at = fields.DateTime()
    revoked_at = fields.DateTime(allow_none=True)
    last_used_at = fields.DateTime(allow_none=True)


class IssuedCredentialSchema(CredentialSchema):
    token = fields.String(metadata={"description": "shown once, never stored: keep it safe"})


class CredentialPage(StrictSchema):
    items = fields.List(fields.Nested(CredentialSchema))
    next_cursor = fields.String(allow_none=True)


class PartnerKeyCreate(StrictSchema):
    public_key = fields.String(required=True, validate=validate.Length(1, 100),
                               metadata={"description": "raw 32-byte Ed25519 key, base64"})
    valid_from = fields.AwareDateTime(load_default=None, validate=storable_time,
                                      metadata={"description": "default now"})


class RetireKeyRequest(StrictSchema):
    valid_to = fields.AwareDateTime(
        load_default=None, validate=storable_time,
        metadata={"description": "signatures dated from then on are refused; default now"},
    )


class PartnerKeySchema(StrictSchema):
    key_id = fields.String()
    partner = fields.String()
    public_key = fields.String(metadata={"description": "base64"})
    valid_from = fields.DateTime()
    valid_to = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()


class PartnerKeyPage(StrictSchema):
    items = fields.List(fields.Nested(PartnerKeySchema))
    next_cursor = fields.String(allow_none=True)


# -- members -------------------------------------------------------------------------------------


class PersonalSchema(StrictSchema):
    name = fields.String(validate=validate.Length(max=200))
    email = fields.Email()
    birth_date = fields.Date()
    phone = fields.String(validate=validate.Length(max=40))


class EnrollRequest(StrictSchema):
    customer_ref = fields.String(load_default=None, validate=validate.Length(min=1, max=100))
    personal = fields.Nested(PersonalSchema, load_default=None)
    terms_version = fields.String(load_default=None, validate=validate.Length(max=20))
    consents = fields.Dict(keys=fields.String(validate=validate.OneOf(
        ["terms", "marketing", "profiling", "sharing"])), values=fields.Boolean(),
        load_default=None)


class MemberSchema(StrictSchema):
    id = fields.String()
    card_number = fields.String()
    status = fields.String()
    enrolled_by = fields.String(allow_none=True)
    enrolled_at = fields.DateTime()
    personal = fields.Dict(keys=fields.String(), values=fields.String(), allow_none=True,
                           metadata={"description": "only if the member shared it with you"})


class BalanceSchema(StrictSchema):
    member = fields.String()
    available = fields.Integer()
    pending = fields.Integer()
    held = fields.Integer()
    tier = fields.String(allow_none=True)
    points_earned_12m = fields.Integer(allow_none=True)
    next_tier = fields.String(allow_none=True)
    points_to_next_tier = fields.Integer(allow_none=True)
    expiring_90_days = fields.List(
        fields.Dict(), metadata={"description": "[{expires_at, points, reason}]"}
    )


class PageQuery(StrictSchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 200))
    cursor = fields.String(load_default=None, validate=validate.Length(max=200))


class EntryPageSchema(StrictSchema):
    items = fields.List(fields.Nested(EntrySchema))
    next_cursor = fields.String(allow_none=True)


class ConsentRequest(StrictSchema):
    purpose = fields.String(required=True, validate=validate.OneOf(
        ["terms", "marketing", "profiling", "sharing"]))
    granted = fields.Boolean(required=True)
    terms_version = fields.String(required=True, validate=validate.Length(min=1, max=20))


class ConsentSchema(StrictSchema):
    purpose = fields.String()
    granted = fields.Boolean()
    terms_version = fields.String()
    recorded_at = fields.DateTime()


class ErasureRequest(StrictSchema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=500))


class ErasureSchema(StrictSchema):
    member_id = fields.String()
    outcome = fields.String()
    reason = fields.String()
    forfeit_entry = fields.UUID(allow_none=True)
    decided_at = fields.DateTime()
    notify_partners = fields.List(fields.String())


# -- earning -------------------------------------------------------------------------------------


class BasketLineSchema(StrictSchema):
    amount_cents = fields.Integer(required=True, strict=True, validate=validate.Range(0, 10**11))
    category = fields.String(load_default="general", validate=validate.Length(min=1, max=64))
    gift_card = fields.Boolean(load_default=False)


class EarnRequest(BusinessTimeMixin):
    member = fields.String(required=True, validate=MEMBER_ID)
    lines = fields.List(fields.Nested(BasketLineSchema), required=True,
                        validate=validate.Length(min=1, max=500))
    paid_with_points_cents = fields.Integer(strict=True, load_default=0,
                                            validate=validate.Range(0, 10**11))


class EarnResultSchema(StrictSchema):
    points = fields.Integer()
    explanation = fields.String()
    rule_versions = fields.Dict(keys=fields.String())
    entry = fields.Nested(EntrySchema, allow_none=True)
    tier = fields.String(allow_none=True, metadata={"description": "new tier, if this upgraded"})


class EngagementRequest(BusinessTimeMixin):
    member = fields.String(required=True, validate=MEMBER_ID)
    event_type = fields.String(required=True, validate=validate.Length(min=1, max=32))
    event_id = fields.String(required=True, validate=validate.Length(min=1, max=100))


class EngagementResultSchema(EarnResultSchema):
    event_type = fields.String()
    event_id = fields.String()
    duplicate = fields.Boolean()
