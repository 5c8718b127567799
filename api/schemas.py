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

from marshmallow import Schema, ValidationError, fields, pre_load, validate, validates_schema

from ledger.numbers import ROUNDING_MODES
from partners.directory import PartnerStatus, Role

MEMBER_ID = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", error="not a member id")
POINTS = validate.Range(min=1, max=2**53 - 1)
#: Free text the database stores: no control characters (PostgreSQL refuses NUL in text and JSON).
PRINTABLE = validate.Regexp(r"^[^\x00-\x1f\x7f]*$", error="must not contain control characters")


class StrictSchema(Schema):
    class Meta:
        ordered = True

    @pre_load
    def _refuse_lone_surrogates(self, data: Any, **kwargs: Any) -> Any:
        """JSON can spell a lone UTF-16 surrogate (``"\\ud800"``), which no database can store as
        text (encoding it fails: a 500); refuse it here, as the schema error it is."""
        if not _encodable(data):
            raise ValidationError("strings must be valid Unicode (no lone surrogates)")
        return data


def _encodable(value: Any) -> bool:
    """Whether every string in a parsed JSON value (keys included) encodes as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_encodable(k) and _encodable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_encodable(item) for item in value)
    return True


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
    reason = fields.String(load_default=None, validate=[validate.Length(max=500), PRINTABLE])


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
    log = fields.String(load_default=None, validate=[validate.Length(1, 200), PRINTABLE])
    from_ = fields.Integer(data_key="from", required=True, strict=False,
                           validate=validate.Range(min=1, max=2**63 - 1))
    to = fields.Integer(required=True, strict=False, validate=validate.Range(min=1, max=2**63 - 1))


class ConsistencySchema(StrictSchema):
    log = fields.String()
    old = fields.String()
    new = fields.String()
    proof = fields.List(fields.String())


class HealthSchema(StrictSchema):
    status = fields.String()
    detail = fields.Dict(keys=fields.String(), values=fields.Raw())


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC)


def entry_json(entry: Any) -> dict[str, Any]:
    """An Entry as the API shows it (serialised by :class:`EntrySchema`).

    Times are shown in UTC, as the journal stores them: the entry a request booked must read the
    same in its response, in a replay of that request and in a later GET.
    """
    return {
        "id": entry.id,
        "kind": entry.kind.value,
        "business_time": _utc(entry.business_time),
        "booked_at": _utc(entry.booked_at),
        "partner": entry.partner,
        "refers_to": entry.refers_to,
        "reason": entry.reason,
        "postings": [{"account": p.account, "amount": p.amount} for p in entry.postings],
        "opened_lots": [
            {"id": lot.id, "member": lot.member, "funder": lot.funder, "amount": lot.amount,
             "earned_at": _utc(lot.earned_at), "expires_at": _utc(lot.expires_at),
             "pending_until": _utc(lot.pending_until), "price_version": lot.price_version}
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
    customer_ref = fields.String(load_default=None,
                                 validate=[validate.Length(min=1, max=100), PRINTABLE])
    personal = fields.Nested(PersonalSchema, load_default=None)
    terms_version = fields.String(load_default=None, validate=[validate.Length(max=20), PRINTABLE])
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
    terms_version = fields.String(required=True,
                                  validate=[validate.Length(min=1, max=20), PRINTABLE])


class ConsentSchema(StrictSchema):
    purpose = fields.String()
    granted = fields.Boolean()
    terms_version = fields.String()
    recorded_at = fields.DateTime()


class ErasureRequest(StrictSchema):
    reason = fields.String(required=True, validate=[validate.Length(min=1, max=500), PRINTABLE])


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
    category = fields.String(load_default="general",
                             validate=[validate.Length(min=1, max=64), PRINTABLE])
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
    event_type = fields.String(required=True, validate=[validate.Length(min=1, max=32), PRINTABLE])
    event_id = fields.String(required=True, validate=[validate.Length(min=1, max=100), PRINTABLE])


class EngagementResultSchema(EarnResultSchema):
    event_type = fields.String()
    event_id = fields.String()
    duplicate = fields.Boolean()


# -- settlement ----------------------------------------------------------------------------------

IBAN_TEXT = validate.Regexp(r"^[A-Za-z]{2}[0-9]{2}[A-Za-z0-9 ]{10,40}$", error="not an IBAN")
BIC_TEXT = validate.Regexp(r"^[A-Za-z0-9]{8}([A-Za-z0-9]{3})?$", error="not a BIC")
PAIN_SCHEMAS = ("pain.001.001.09", "pain.001.001.03")


class DebtorSchema(StrictSchema):
    name = fields.String(required=True, validate=[validate.Length(min=1, max=70), PRINTABLE])
    iban = fields.String(required=True, validate=IBAN_TEXT)
    bic = fields.String(required=True, validate=BIC_TEXT)


class PaymentFileRequest(StrictSchema):
    execution_date = fields.Date(required=True)
    schema = fields.String(load_default="pain.001.001.09", validate=validate.OneOf(PAIN_SCHEMAS))
    debtor = fields.Nested(DebtorSchema, load_default=None, metadata={
        "description": "the operator's account; default: the programme setting"})


class MarkPaidRequest(StrictSchema):
    bank_reference = fields.String(required=True,
                                   validate=[validate.Length(min=1, max=140), PRINTABLE])
    partners = fields.List(fields.String(validate=validate.Length(min=1, max=64)),
                           load_default=None, validate=validate.Length(min=1, max=1000),
                           metadata={"description": "pay only these partners; default: all"})


class StepSchema(StrictSchema):
    step = fields.String()
    actor = fields.String()
    at = fields.DateTime()
    detail = fields.Dict(keys=fields.String())


class SettlementPaymentSchema(StrictSchema):
    partner = fields.String()
    statement_id = fields.String()
    amount = fields.String(metadata={"description": "euros; + the partner paid, − it was paid"})
    bank_reference = fields.String()
    entry_id = fields.UUID()
    paid_at = fields.DateTime()
    paid_by = fields.String()


class SettlementStateSchema(StrictSchema):
    period = fields.String()
    status = fields.String()
    steps = fields.List(fields.Nested(StepSchema))
    payments = fields.List(fields.Nested(SettlementPaymentSchema))
    outstanding = fields.List(fields.String())


class PaymentFileSchema(StrictSchema):
    period = fields.String()
    schema = fields.String(allow_none=True)
    message_id = fields.String(allow_none=True)
    transactions = fields.Integer()
    control_sum = fields.String()
    sha256 = fields.String(allow_none=True)
    document = fields.String(allow_none=True, metadata={"description": "the pain.001 XML"})


class OutputRefSchema(StrictSchema):
    format = fields.String()
    sha256 = fields.String()


class StatementViewSchema(StrictSchema):
    id = fields.String()
    period = fields.String()
    partner = fields.String()
    net = fields.String()
    payable = fields.String()
    direction = fields.String()
    sha256 = fields.String()
    document = fields.Dict(keys=fields.String(), metadata={"description": "the canonical JSON"})
    outputs = fields.List(fields.Nested(OutputRefSchema))


class StatementNoteSchema(StrictSchema):
    statement_id = fields.String()
    partner = fields.String()
    note = fields.String(metadata={"description": "C2SP signed note, signed by the log key"})
    text = fields.String(metadata={"description": "what a countersignature signs (UTF-8)"})
    countersignatures = fields.List(fields.Dict(keys=fields.String()))


class CountersignRequest(StrictSchema):
    key_id = fields.String(required=True, validate=[validate.Length(min=1, max=64), PRINTABLE])
    signature = fields.String(required=True, validate=validate.Length(min=1, max=200),
                              metadata={"description": "Ed25519 signature of the text, base64"})
    signed_at = fields.AwareDateTime(required=True, validate=storable_time)


class FindingViewSchema(StrictSchema):
    check = fields.String()
    subject = fields.String()
    expected = fields.Raw(allow_none=True)
    found = fields.Raw(allow_none=True)


class VerificationSchema(StrictSchema):
    period = fields.String()
    verified = fields.Boolean()
    findings = fields.List(fields.Nested(FindingViewSchema))


class DisputeRequest(StrictSchema):
    entry_ids = fields.List(fields.UUID(), required=True, validate=validate.Length(min=1, max=100))
    reason = fields.String(required=True, validate=[validate.Length(min=1, max=2000), PRINTABLE])
    period = fields.String(load_default=None, validate=validate.Length(min=1, max=16))


class DisputeAcceptRequest(StrictSchema):
    amount_cents = fields.Integer(required=True, strict=True,
                                  validate=validate.Range(-(10**11), 10**11),
                                  metadata={"description": "signed: + the partner owes more"})
    reason = fields.String(required=True, validate=[validate.Length(min=1, max=2000), PRINTABLE])


class DisputeRejectRequest(StrictSchema):
    reason = fields.String(required=True, validate=[validate.Length(min=1, max=2000), PRINTABLE])


class DisputeSchema(StrictSchema):
    id = fields.UUID()
    partner = fields.String()
    period = fields.String(allow_none=True)
    entry_ids = fields.List(fields.String())
    reason = fields.String()
    opened_at = fields.DateTime()
    opened_by = fields.String()
    status = fields.String()
    decision = fields.Dict(keys=fields.String(), allow_none=True)


# -- batches (a partner's file of earn/burn records) ---------------------------------------------

#: Most records one batch may carry.
BATCH_MAX_RECORDS = 10_000
#: A record's ref: its line in the partner's file; no colon, so ``<key>:<ref>`` reads one way.
BATCH_REF = validate.Regexp(r"^[^\x00-\x1f\x7f:]{1,64}$",
                            error="1–64 printable characters, no colon")


class BatchRecordSchema(BusinessTimeMixin):
    ref = fields.String(required=True, validate=[BATCH_REF, one_line],
                        metadata={"description": "unique within the batch; part of the record's "
                                                 "idempotency key <Idempotency-Key>:<ref>"})
    op = fields.String(required=True, validate=validate.OneOf(("earn", "burn")))
    member = fields.String(required=True, validate=MEMBER_ID)
    lines = fields.List(fields.Nested(BasketLineSchema), validate=validate.Length(min=1, max=500),
                        metadata={"description": "earn only: the basket"})
    paid_with_points_cents = fields.Integer(strict=True, validate=validate.Range(0, 10**11),
                                            metadata={"description": "earn only; default 0"})
    points = fields.Integer(strict=True, validate=POINTS,
                            metadata={"description": "burn only: points to spend"})

    @validates_schema
    def _fields_of_the_op(self, data: dict, **kwargs: Any) -> None:
        wanted, unwanted = (
            (("lines",), ("points",)) if data.get("op") == "earn"
            else (("points",), ("lines", "paid_with_points_cents"))
        )
        errors = {name: ["required for this op"] for name in wanted if name not in data}
        errors.update({name: [f"not allowed with op {data.get('op')}"]
                       for name in unwanted if name in data})
        if errors:
            raise ValidationError(errors)


def first_error_path(messages: Any, path: tuple = ()) -> tuple:
    """The path (keys and indexes) to the first message of a marshmallow error tree."""
    if isinstance(messages, dict) and messages:
        key = min(messages, key=lambda k: (not isinstance(k, int), str(k).zfill(12)))
        return first_error_path(messages[key], (*path, key))
    return path


class BatchRequest(StrictSchema):
    records = fields.List(fields.Nested(BatchRecordSchema), required=True,
                          validate=validate.Length(min=1, max=BATCH_MAX_RECORDS))

    @validates_schema
    def _refs_are_unique(self, data: dict, **kwargs: Any) -> None:
        seen: dict[str, int] = {}
        errors: dict[int, dict] = {}
        for index, record in enumerate(data.get("records", [])):
            if record["ref"] in seen:
                errors[index] = {"ref": [f"duplicate of record {seen[record['ref']]}"]}
            seen.setdefault(record["ref"], index)
        if errors:
            raise ValidationError({"records": errors})

    def handle_error(self, error: ValidationError, data: Any, *, many: bool,
                     **kwargs: Any) -> None:
        """Name the first bad record and field in the problem (nothing is booked)."""
        from api.errors import ApiProblem

        messages = error.normalized_messages()
        path = first_error_path(messages)
        fields_: dict[str, Any] = {"errors": {"json": messages}}
        detail = "the request does not match the schema"
        if len(path) >= 3 and path[0] == "records" and isinstance(path[1], int):
            fields_.update(record=path[1], field=str(path[2]))
            leaf: Any = messages
            for part in path:
                leaf = leaf[part]
            reason = leaf[0] if isinstance(leaf, list) and leaf else "is invalid"
            where = ".".join(map(str, path[2:]))
            detail = f"record {path[1]}, {where}: {str(reason).rstrip('.')} (nothing was booked)"
        raise ApiProblem(422, "invalid-request", detail, **fields_)


class BatchProblemSchema(StrictSchema):
    """A refused record's problem: as the API's problems (no request id), machine fields too."""

    class Meta:
        ordered = True
        unknown = "include"

    type = fields.String(metadata={"example": "/problems/insufficient-points"})
    title = fields.String()
    status = fields.Integer(metadata={"description": "the status a single request would get"})
    detail = fields.String()

    def dump(self, obj: Any, *, many: bool | None = None) -> Any:
        """Keep the error's machine fields (``needed``, ``available``, ...) beside the members."""
        data = super().dump(obj, many=many)
        if isinstance(obj, dict) and isinstance(data, dict):
            data.update({k: v for k, v in obj.items() if k not in data})
        return data


class BatchResultSchema(StrictSchema):
    ref = fields.String()
    op = fields.String()
    status = fields.String(metadata={"description": "booked, replayed or refused"})
    entry_id = fields.UUID(allow_none=True)
    points = fields.Integer(allow_none=True)
    explanation = fields.String(allow_none=True, metadata={"description": "earn only"})
    problem = fields.Nested(BatchProblemSchema, allow_none=True,
                            metadata={"description": "why the record was refused"})


class BatchResponseSchema(StrictSchema):
    records = fields.Integer()
    booked = fields.Integer()
    replayed = fields.Integer()
    refused = fields.Integer()
    results = fields.List(fields.Nested(BatchResultSchema),
                          metadata={"description": "one per record, in input order"})


# -- rules: campaigns, engagement rules, abuse controls, expiry policy ---------------------------

RULE_NAME = [validate.Length(1, 64), PRINTABLE, one_line]


class CampaignCreate(StrictSchema):
    id = fields.String(load_default=None, validate=[PARTNER_CODE, one_line],
                       metadata={"description": "default: generated; never reused"})
    partner = fields.String(required=True, validate=[PARTNER_CODE, one_line])
    name = fields.String(required=True, validate=[validate.Length(1, 200), PRINTABLE, one_line])
    valid_from = fields.AwareDateTime(required=True, validate=storable_time)
    valid_to = fields.AwareDateTime(required=True, validate=storable_time,
                                    metadata={"description": "exclusive"})
    multiplier = fields.String(load_default=None, allow_none=True,
                               validate=[DECIMAL_TEXT, one_line],
                               metadata={"description": "×m on qualifying base points; ≥ 1",
                                         "example": "2"})
    bonus_points = fields.Integer(strict=True, load_default=None, allow_none=True, validate=COUNT)
    categories = fields.List(fields.String(validate=RULE_NAME), load_default=list,
                             validate=validate.Length(max=100),
                             metadata={"description": "empty: every category"})
    member_cap = fields.Integer(strict=True, load_default=None, allow_none=True, validate=COUNT)
    funders = fields.Dict(keys=fields.String(validate=[PARTNER_CODE, one_line]),
                          values=fields.Integer(strict=True, validate=validate.Range(1, 10**6)),
                          load_default=dict, validate=validate.Length(max=20),
                          metadata={"description": "funder → weight; default the partner alone",
                                    "example": {"SUPER": 1, "program": 1}})


class CampaignSchema(StrictSchema):
    id = fields.String()
    partner = fields.String()
    name = fields.String()
    valid_from = fields.DateTime()
    valid_to = fields.DateTime()
    multiplier = fields.String(allow_none=True)
    bonus_points = fields.Integer(allow_none=True)
    categories = fields.List(fields.String())
    member_cap = fields.Integer(allow_none=True)
    funders = fields.Dict(keys=fields.String(), values=fields.Integer())
    created_at = fields.DateTime(allow_none=True)


class CampaignListQuery(CursorQuery):
    partner = fields.String(load_default=None, validate=[PARTNER_CODE, one_line])


class CampaignPage(StrictSchema):
    items = fields.List(fields.Nested(CampaignSchema))
    next_cursor = fields.String(allow_none=True)


ENGAGEMENT_CAP = validate.Range(min=0, max=2**31 - 1)


class EngagementRuleCreate(StrictSchema):
    event_type = fields.String(required=True, validate=[validate.Length(1, 32), PRINTABLE],
                               metadata={"example": "review"})
    sponsor = fields.String(required=True, validate=[PARTNER_CODE, one_line],
                            metadata={"description": "a partner code, or program"})
    points = fields.Integer(required=True, strict=True, validate=COUNT)
    cap_per_day = fields.Integer(strict=True, load_default=None, allow_none=True,
                                 validate=ENGAGEMENT_CAP)
    cap_per_month = fields.Integer(strict=True, load_default=None, allow_none=True,
                                   validate=ENGAGEMENT_CAP)
    cap_per_year = fields.Integer(strict=True, load_default=None, allow_none=True,
                                  validate=ENGAGEMENT_CAP)
    valid_from = fields.AwareDateTime(required=True, validate=storable_time)
    valid_to = fields.AwareDateTime(load_default=None, allow_none=True, validate=storable_time,
                                    metadata={"description": "exclusive; omit while current"})


class EngagementRuleSchema(StrictSchema):
    event_type = fields.String()
    version = fields.Integer(metadata={"description": "assigned: the next for the event type"})
    sponsor = fields.String()
    points = fields.Integer()
    cap_per_day = fields.Integer(allow_none=True)
    cap_per_month = fields.Integer(allow_none=True)
    cap_per_year = fields.Integer(allow_none=True)
    valid_from = fields.DateTime()
    valid_to = fields.DateTime(allow_none=True)
    created_at = fields.DateTime(allow_none=True)


class EngagementRuleListQuery(CursorQuery):
    event_type = fields.String(load_default=None, validate=[validate.Length(1, 32), PRINTABLE])


class EngagementRulePage(StrictSchema):
    items = fields.List(fields.Nested(EngagementRuleSchema))
    next_cursor = fields.String(allow_none=True)


class AbuseControlsSchema(StrictSchema):
    """Every field is required on PUT (a PUT replaces the whole); null means no cap."""

    earn_per_day = fields.Integer(required=True, strict=True, allow_none=True, validate=COUNT)
    burn_per_day = fields.Integer(required=True, strict=True, allow_none=True, validate=COUNT)
    transfer_per_day = fields.Integer(required=True, strict=True, allow_none=True,
                                      validate=COUNT)
    transfers_enabled = fields.Boolean(required=True)
    max_per_transfer = fields.Integer(required=True, strict=True, allow_none=True,
                                      validate=COUNT)


class ExpiryPolicySchema(StrictSchema):
    """Every field is required on PUT (a PUT replaces the whole); null switches a rule off."""

    lot_months = fields.Integer(required=True, strict=True, allow_none=True,
                                validate=validate.Range(1, 1200))
    cutoff = fields.String(required=True, allow_none=True,
                           validate=[validate.Regexp(r"^[0-9]{2}-[0-9]{2}$",
                                                     error="MM-DD, e.g. 09-30"), one_line],
                           metadata={"description": "yearly cut-off MM-DD", "example": "09-30"})
    inactivity_months = fields.Integer(required=True, strict=True, allow_none=True,
                                       validate=validate.Range(1, 1200))


# -- tiers ---------------------------------------------------------------------------------------

TIER_NAME = [validate.Length(1, 32), PRINTABLE, one_line]


class TierLevelSchema(StrictSchema):
    name = fields.String(required=True, validate=TIER_NAME)
    threshold = fields.Integer(required=True, strict=True, validate=COUNT,
                               metadata={"description": "points earned over 12 months"})
    multiplier = decimal_text(required=True)
    rank = fields.Integer(dump_only=True, metadata={"description": "position, lowest first"})


class TierLevelsSchema(StrictSchema):
    levels = fields.List(fields.Nested(TierLevelSchema), required=True,
                         validate=validate.Length(1, 50),
                         metadata={"description": "lowest first; the first starts at 0"})


class TierChangeSchema(StrictSchema):
    tier = fields.String()
    previous = fields.String(allow_none=True)
    floor = fields.String(allow_none=True)
    reason = fields.String()
    changed_at = fields.DateTime()
    changed_by = fields.String(allow_none=True)


class TierStatusSchema(StrictSchema):
    member = fields.String()
    tier = fields.String()
    multiplier = fields.String()
    floor = fields.String(allow_none=True)
    points_12m = fields.Integer(metadata={"description": "earned in the rolling window"})
    window_start = fields.DateTime(metadata={"description": "exclusive"})
    next_tier = fields.String(allow_none=True)
    points_missing = fields.Integer(metadata={"description": "to reach next_tier; 0 at the top"})
    history = fields.List(fields.Nested(TierChangeSchema), metadata={"description": "oldest first"})


class TierFloorRequest(StrictSchema):
    tier = fields.String(required=True, allow_none=True, validate=TIER_NAME,
                         metadata={"description": "null lifts the floor"})
    reason = fields.String(required=True, validate=[validate.Length(1, 500), PRINTABLE])
