"""SEPA credit-transfer files (ISO 20022 pain.001) for the operator's payouts, built with sepaxml.

A payout is a statement whose payable is negative (N < 0: the operator pays |N|). The file has one
transfer per payout, from the operator's account (the debtor) to the partner's settlement account
(the creditor, its IBAN and BIC from the partner directory):

- ``EndToEndId`` is the statement id (32 hex digits, within the 35 characters ISO 20022 allows;
  a longer id would be replaced by the first 32 hex digits of its SHA-256, deterministically);
- the amount is |N| in euros; the remittance text names the period and the statement;
- ``pain.001.001.09`` by default, ``pain.001.001.03`` for banks that still want it.

sepaxml validates what it exports against the official XSD it ships; :func:`validate_payment_file`
re-validates any stored file against the same XSD, and :func:`check_control_sum` re-adds the
transfers and compares them with the header's ``NbOfTxs`` and ``CtrlSum`` and with the payouts of
the statements. Partners who owe money are not in the file: they get an invoice
(:mod:`settlement.outputs`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

from defusedxml import ElementTree as ET
from sqlalchemy.engine import Connection

from ledger.errors import InvalidRequest, VerificationError
from partners.directory import Partner
from partners.expiry import read_setting, write_setting
from settlement.model import Statement, StatementRun

#: ``program_settings`` name of the operator's bank account (the debtor of every payout).
OPERATOR_ACCOUNT_SETTING = "settlement_operator_account"

#: The pain.001 versions the operator can produce (sepaxml ships both XSDs).
SCHEMAS = ("pain.001.001.09", "pain.001.001.03")

#: ISO 20022 ``Max35Text``: the longest EndToEndId.
MAX_END_TO_END = 35


class PaymentFileError(VerificationError):
    """A payment file that does not validate against its XSD or whose sums do not add up."""

    code = "payment-file-invalid"


@dataclass(frozen=True, slots=True)
class Debtor:
    """The operator's account that pays the partners."""

    name: str
    iban: str
    bic: str

    def __post_init__(self) -> None:
        if not self.name.strip() or not self.iban.strip() or not self.bic.strip():
            raise InvalidRequest("the operator's name, IBAN and BIC are required")


@dataclass(frozen=True, slots=True)
class PaymentFile:
    """A pain.001 document as exported, with what it adds up to."""

    schema: str
    message_id: str
    transactions: int
    control_sum_cents: int
    document: bytes
    sha256: bytes


def operator_debtor(conn: Connection) -> Debtor:
    """The operator's account from the programme settings (``coalition settle`` sets it)."""
    stored = read_setting(conn, OPERATOR_ACCOUNT_SETTING)
    if not stored:
        raise InvalidRequest(
            "the operator's bank account is not set: give the debtor's name, IBAN and BIC"
        )
    return Debtor(stored["name"], stored["iban"], stored["bic"])


def set_operator_debtor(conn: Connection, debtor: Debtor, now: datetime) -> Debtor:
    """Record the operator's bank account (IBAN and BIC compacted, upper case)."""
    compact = Debtor(debtor.name.strip(), _compact(debtor.iban), _compact(debtor.bic))
    write_setting(
        conn,
        OPERATOR_ACCOUNT_SETTING,
        {"name": compact.name, "iban": compact.iban, "bic": compact.bic},
        now,
    )
    return compact


def end_to_end_id(statement_id: str) -> str:
    """The transfer's EndToEndId: the statement id, shortened deterministically if too long."""
    if len(statement_id) <= MAX_END_TO_END:
        return statement_id
    return hashlib.sha256(statement_id.encode()).hexdigest()[:32]


def build_payment_file(
    run: StatementRun,
    payouts: Sequence[tuple[Statement, Partner]],
    debtor: Debtor,
    *,
    execution_date: date,
    schema: str = "pain.001.001.09",
) -> PaymentFile:
    """The credit transfers of ``payouts`` (statements with N < 0), validated and checked."""
    from sepaxml import SepaTransfer
    from sepaxml.validation import ValidationError

    if schema not in SCHEMAS:
        raise InvalidRequest(f"payment files are {' or '.join(SCHEMAS)}, not {schema!r}")
    if not payouts:
        raise InvalidRequest(f"{run.period.label} has no payout to transfer")
    config = {
        "name": debtor.name,
        "IBAN": _compact(debtor.iban),
        "BIC": _compact(debtor.bic),
        "batch": True,
        "currency": "EUR",
    }
    transfer = SepaTransfer(config, schema=schema, clean=True)
    expected = 0
    for statement, partner in payouts:
        if statement.payable_cents >= 0 or statement.partner != partner.code:
            raise InvalidRequest(f"statement {statement.id} is not a payout to {partner.code}")
        expected += -statement.payable_cents
        transfer.add_payment(
            {
                "name": partner.legal_name,
                "IBAN": partner.iban,
                "BIC": partner.bic,
                "amount": -statement.payable_cents,
                "execution_date": execution_date,
                "description": f"Coalition settlement {run.period.label} statement {statement.id}",
                "endtoend_id": end_to_end_id(statement.id),
            }
        )
    try:
        document = transfer.export(validate=True)
    except ValidationError as exc:
        raise PaymentFileError(f"the {schema} file does not validate: {exc.__cause__}") from exc
    transactions, control = check_control_sum(document, schema, expected_cents=expected)
    if transactions != len(payouts):
        raise PaymentFileError(f"{transactions} transfers for {len(payouts)} payouts")
    return PaymentFile(
        schema=schema,
        message_id=_header(document, schema, "MsgId"),
        transactions=transactions,
        control_sum_cents=control,
        document=document,
        sha256=hashlib.sha256(document).digest(),
    )


def schema_path(schema: str) -> Path:
    """The official XSD sepaxml ships for ``schema``."""
    import sepaxml

    if schema not in SCHEMAS:
        raise InvalidRequest(f"unknown payment schema {schema!r}")
    return Path(sepaxml.__file__).parent / "schemas" / f"{schema}.xsd"


def validate_payment_file(document: bytes, schema: str) -> None:
    """Validate a pain.001 document against its XSD; :class:`PaymentFileError` if it fails."""
    import xmlschema

    xsd = xmlschema.XMLSchema(str(schema_path(schema)))
    errors = list(xsd.iter_errors(document.decode("utf-8")))
    if errors:
        raise PaymentFileError(f"the {schema} file does not validate: {errors[0].reason}")


def check_control_sum(
    document: bytes, schema: str, *, expected_cents: int | None = None
) -> tuple[int, int]:
    """Re-add a file's transfers: (transactions, control sum in cents), checked against headers.

    Every ``NbOfTxs`` and ``CtrlSum`` (group header and payment information blocks) must equal
    the transfers they cover, and the total ``expected_cents`` when it is given.
    """
    ns = {"p": f"urn:iso:std:iso:20022:tech:xsd:{schema}"}
    root = ET.fromstring(document)
    initiation = root.find("p:CstmrCdtTrfInitn", ns)
    if initiation is None:
        raise PaymentFileError("not a customer credit transfer initiation")
    amounts = [_cents(node.text) for node in initiation.iterfind(".//p:InstdAmt", ns)]
    total, count = sum(amounts), len(amounts)
    header = initiation.find("p:GrpHdr", ns)
    assert header is not None
    if _cents(header.findtext("p:CtrlSum", None, ns)) != total:
        raise PaymentFileError("the group header's CtrlSum is not the sum of the transfers")
    if int(header.findtext("p:NbOfTxs", "-1", ns)) != count:
        raise PaymentFileError("the group header's NbOfTxs is not the number of transfers")
    for block in initiation.iterfind("p:PmtInf", ns):
        block_amounts = [_cents(node.text) for node in block.iterfind(".//p:InstdAmt", ns)]
        if _cents(block.findtext("p:CtrlSum", None, ns)) != sum(block_amounts):
            raise PaymentFileError("a payment block's CtrlSum is not the sum of its transfers")
        if int(block.findtext("p:NbOfTxs", "-1", ns)) != len(block_amounts):
            raise PaymentFileError("a payment block's NbOfTxs is not its number of transfers")
    if expected_cents is not None and total != expected_cents:
        raise PaymentFileError(
            f"the transfers add up to {total} cents, the payouts to {expected_cents}"
        )
    return count, total


def _header(document: bytes, schema: str, field: str) -> str:
    ns = {"p": f"urn:iso:std:iso:20022:tech:xsd:{schema}"}
    return ET.fromstring(document).findtext(f"p:CstmrCdtTrfInitn/p:GrpHdr/p:{field}", "", ns)


def _cents(text: str | None) -> int:
    if text is None:
        raise PaymentFileError("a control sum or amount is missing")
    value = Decimal(text) * 100
    if value != value.to_integral_value():
        raise PaymentFileError(f"{text} is not a whole number of cents")
    return int(value)


def _compact(text: str) -> str:
    return "".join(text.split()).upper()
