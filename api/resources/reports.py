"""Auditor and finance reports under ``/v1/audit/reports`` (PRODUCT.md §7, §8).

Thin views over :mod:`audit.reports`: each parses its query, runs one report in a read
transaction and renders its JSON. Who may read what (least privilege, PRODUCT.md §9):

- the **trial balance** lists every account of both books, every member's and every partner's:
  auditors and finance only (``reports.trial_balance``);
- **liability, breakage and exposure** are per funding partner: auditors and finance see every
  partner, and a partner — an auditor of its own position (PRODUCT.md §1) — sees its own rows
  only (``reports.partner``). A partner credential's report is always limited to its own code;
  asking for another partner's is a 403.

The schemas are this module's own (the reports' public contract), not :mod:`api.schemas`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import fields, validate

from api.auth import current_credential, requires
from api.errors import ApiProblem
from api.schemas import PRINTABLE, StrictSchema
from audit import reports

blp = Blueprint(
    "reports",
    __name__,
    url_prefix="/v1/audit/reports",
    description="Trial balance, outstanding liability, breakage and partner exposure",
)

#: A partner code as the ledger accepts it inside account codes (ledger.model.check_owner).
PARTNER_CODE = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", error="not a partner code")
#: Tree sizes are signed 64-bit integers in the database; a larger one names nothing.
MAX_TREE_SIZE = 2**63 - 1


# -- queries ---------------------------------------------------------------------------------------


class TrialBalanceQuery(StrictSchema):
    size = fields.Integer(
        load_default=None,
        strict=False,
        validate=validate.Range(min=0, max=MAX_TREE_SIZE),
        metadata={"description": "Tree size (default: the latest signed checkpoint's)"},
    )
    by = fields.String(load_default="account", validate=validate.OneOf(["account", "kind"]))


class PartnerQuery(StrictSchema):
    partner = fields.String(
        load_default=None,
        validate=PARTNER_CODE,
        metadata={"description": "Only this funding partner (a partner: its own code only)"},
    )


class LiabilityQuery(PartnerQuery):
    by = fields.String(load_default="partner", validate=validate.OneOf(["partner", "vintage"]))


class BreakageQuery(PartnerQuery):
    period = fields.String(
        load_default=None,
        validate=[validate.Length(7, 10), PRINTABLE],
        metadata={"description": "Only this period by ledger time: 2026-03, 2026-W10, 2026-03-15"},
    )


class ExposureQuery(PartnerQuery):
    at = fields.AwareDateTime(
        load_default=None,
        metadata={"description": "Price with the contracts in force then (default: now)"},
    )


# -- responses -------------------------------------------------------------------------------------


class BookTotalSchema(StrictSchema):
    book = fields.String(metadata={"description": "POINTS (points) or EUR (cents)"})
    debits = fields.Integer(metadata={"description": "Σ positive account balances"})
    credits = fields.Integer(metadata={"description": "Σ magnitudes of negative balances"})
    net = fields.Integer()
    accounts = fields.Integer()
    balanced = fields.Boolean()


class TrialBalanceLineSchema(StrictSchema):
    key = fields.String(metadata={"description": "Account code, or account kind"})
    book = fields.String()
    balance = fields.Integer(metadata={"description": "Points, or cents; positive is a debit"})
    balance_eur = fields.String(metadata={"description": "EUR lines: the balance in euros"})


class TrialBalanceSchema(StrictSchema):
    log = fields.String(allow_none=True)
    size = fields.Integer()
    log_size = fields.Integer()
    checkpoint_size = fields.Integer(allow_none=True)
    root = fields.String(allow_none=True, metadata={"description": "Signed root at this size"})
    earlier_logs = fields.List(fields.String())
    entries = fields.Integer()
    by = fields.String()
    balanced = fields.Boolean()
    totals = fields.List(fields.Nested(BookTotalSchema))
    lines = fields.List(fields.Nested(TrialBalanceLineSchema))


class LiabilityLineSchema(StrictSchema):
    key = fields.String(metadata={"description": "Funding partner, or vintage YYYY-MM"})
    points = fields.Integer()
    pending = fields.Integer()
    lots = fields.Integer()


class LiabilitySchema(StrictSchema):
    by = fields.String()
    partner = fields.String(allow_none=True)
    points = fields.Integer()
    pending = fields.Integer()
    member_points = fields.Integer(allow_none=True)
    reconciled = fields.Boolean(allow_none=True)
    lines = fields.List(fields.Nested(LiabilityLineSchema))


class BreakageLineSchema(StrictSchema):
    partner = fields.String()
    period = fields.String()
    points = fields.Integer()


class BreakageSchema(StrictSchema):
    period = fields.String(allow_none=True)
    partner = fields.String(allow_none=True)
    points = fields.Integer()
    lines = fields.List(fields.Nested(BreakageLineSchema))


class ExposureLineSchema(StrictSchema):
    partner = fields.String()
    points = fields.Integer()
    contract_version = fields.Integer(allow_none=True)
    price = fields.String(allow_none=True, metadata={"description": "q, euros per point"})
    rounding_mode = fields.String(allow_none=True)
    exact = fields.String(allow_none=True)
    cents = fields.Integer(allow_none=True)
    eur = fields.String(allow_none=True)


class ExposureSchema(StrictSchema):
    at = fields.String()
    partner = fields.String(allow_none=True)
    cents = fields.Integer()
    eur = fields.String()
    unpriced_points = fields.Integer()
    program_points = fields.Integer()
    lines = fields.List(fields.Nested(ExposureLineSchema))


# -- views -----------------------------------------------------------------------------------------


def _read(report: Any, **kwargs: Any) -> dict:
    """Run one report in a read transaction and return its JSON."""
    with current_app.extensions["coalition"].db.transaction() as conn:
        return report(conn, **kwargs).to_json()


def _partner_scope(asked: str | None) -> str | None:
    """The partner the report is limited to: a partner caller's own code, whatever it asked."""
    own = current_credential().partner
    if own is None:
        return asked
    if asked is not None and asked != own:
        raise ApiProblem(403, "forbidden", "a partner reads its own report rows only")
    return own


@blp.route("/trial-balance")
class TrialBalance(MethodView):
    @requires("reports.trial_balance")
    @blp.arguments(TrialBalanceQuery, location="query")
    @blp.response(200, TrialBalanceSchema)
    def get(self, query: dict) -> dict:
        """Both books over the first ``size`` leaves of the log; each book must sum to zero."""
        with current_app.extensions["coalition"].db.transaction() as conn:
            return reports.trial_balance(conn, query["size"], by=query["by"]).to_json()


@blp.route("/liability")
class Liability(MethodView):
    @requires("reports.partner")
    @blp.arguments(LiabilityQuery, location="query")
    @blp.response(200, LiabilitySchema)
    def get(self, query: dict) -> dict:
        """Outstanding points by funding partner or by vintage (Paris month earned)."""
        return _read(reports.liability, by=query["by"], partner=_partner_scope(query["partner"]))


@blp.route("/breakage")
class Breakage(MethodView):
    @requires("reports.partner")
    @blp.arguments(BreakageQuery, location="query")
    @blp.response(200, BreakageSchema)
    def get(self, query: dict) -> dict:
        """Points expired or forfeited, attributed to the funder of their lots, per month."""
        return _read(
            reports.breakage, period=query["period"], partner=_partner_scope(query["partner"])
        )


@blp.route("/exposure")
class Exposure(MethodView):
    @requires("reports.partner")
    @blp.arguments(ExposureQuery, location="query")
    @blp.response(200, ExposureSchema)
    def get(self, query: dict) -> dict:
        """Outstanding points × each partner's reimbursement price in force, rounded once."""
        at = query["at"] or datetime.now(UTC)
        return _read(reports.exposure, at=at, partner=_partner_scope(query["partner"]))
