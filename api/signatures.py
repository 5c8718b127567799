"""Signed requests: HTTP Message Signatures (RFC 9421), Ed25519, stored in the entries they book.

A partner may sign a points-moving request with one of its Ed25519 keys (PRODUCT.md §4
"Non-repudiation"); a contract with ``signing_required`` makes it mandatory. A signed request
carries four headers::

    Date: Mon, 23 Nov 2026 16:00:00 GMT
    Content-Digest: sha-256=:<base64 of SHA-256 of the body>:
    Signature-Input: sig1=("@method" "@path" "content-digest" "date");created=1795449600;\
keyid="<key id>";alg="ed25519";nonce="<random>"
    Signature: sig1=:<base64 of the 64-byte Ed25519 signature>:

**The subset accepted** (anything else is refused, never guessed at):

- ``Signature-Input`` and ``Signature`` are RFC 8941 dictionaries (parsed with ``http-sfv``) with
  exactly one member each, under the same label (any label).
- The covered components are exactly ``"@method"``, ``"@path"``, ``"content-digest"`` and
  ``"date"``, in any order, without component parameters.
- Parameters: ``created`` (integer, required, within ±:data:`MAX_SKEW` of the server's clock),
  ``keyid`` (required: a key id of the calling partner, valid at ``created``), ``alg`` (required,
  ``"ed25519"``), ``nonce`` (required, 1–128 characters, never used before by the partner),
  ``expires`` (optional, must lie ahead), ``tag`` (optional, ignored). No other parameter.
- ``Content-Digest`` is exactly one ``sha-256`` member in canonical form (``sha-256=:…:``), equal to
  the digest of the body as sent (RFC 9530).
- The signature base is built as RFC 9421 §2.5 says: one line per covered component,
  ``"<name>": <value>``, in the order of ``Signature-Input``, then
  ``"@signature-params": <the serialized inner list and parameters>``, joined by ``\\n`` without a
  trailing newline. ``@method`` is the upper-case method, ``@path`` the absolute path of the
  request target (no query), header values are trimmed of surrounding whitespace.

Replay: a nonce is recorded in ``request_nonces`` (primary key partner + nonce) in the transaction
that books the request, so of two concurrent uses one waits and then fails. Rows older than twice
the skew are deleted as the partner signs on; by then their requests would be refused as stale.

What the entry stores (and the leaf hashes): ``request_signature`` is
``<Signature-Input member>|<Signature member>`` (each re-serialized canonically; split at the last
``|``), ``signing_key`` the key id, ``request_date`` the ``Date`` value. With the method, the path
and the body, that is enough to check the signature again offline (:func:`verify_stored_signature`).
The evidence is not part of the idempotency fingerprint: a retry must be signed afresh (a new
nonce) and replays the original entry, signature included.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import http_sfv
import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from flask import request
from sqlalchemy.engine import Connection

from api.auth import current_credential
from api.errors import ApiProblem
from api.tables import request_nonces
from ledger.errors import SignatureError
from ledger.model import Entry
from ledger.service import request_evidence
from partners import directory

#: How far ``created`` may lie from the server's clock, either way.
MAX_SKEW = timedelta(seconds=300)

#: The components every signature must cover, and no others.
COMPONENTS = ("@method", "@path", "content-digest", "date")

ALG = "ed25519"
MAX_NONCE = 128
_PARAMS = frozenset({"created", "keyid", "alg", "nonce", "expires", "tag"})

#: Problem codes (``/problems/<code>``).
BAD_SIGNATURE = "bad-signature"
SIGNATURE_REQUIRED = "signature-required"

#: Entry attributes holding the evidence.
SIGNATURE_ATTRIBUTE = "request_signature"
KEY_ATTRIBUTE = "signing_key"
DATE_ATTRIBUTE = "request_date"


class BadSignature(SignatureError):
    """A request signature that is malformed, stale, replayed or does not verify."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ParsedSignature:
    """One signature of a request, as ``Signature-Input`` and ``Signature`` give it."""

    label: str
    components: tuple[str, ...]
    params: Mapping[str, Any]
    signature_params: str
    """The serialized inner list with its parameters: the ``@signature-params`` value."""
    signature: bytes
    input_member: str
    signature_member: str

    @property
    def created(self) -> datetime:
        return datetime.fromtimestamp(self.params["created"], UTC)


# -- the RFC 9421 subset ---------------------------------------------------------------------------


def content_digest(body: bytes) -> str:
    """The ``Content-Digest`` value of a body (RFC 9530, sha-256)."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def parse_signature(signature_input: str, signature: str) -> ParsedSignature:
    """Parse the two headers, accepting only the subset this module documents."""
    inputs, values = (
        _dictionary(signature_input, "Signature-Input"),
        _dictionary(signature, "Signature"),
    )
    if len(inputs) != 1 or len(values) != 1:
        raise BadSignature("send exactly one signature", "malformed")
    (label,) = inputs.keys()
    if label not in values:
        raise BadSignature(f"Signature has no member {label!r}", "malformed")
    covered, value = inputs[label], values[label]
    if not isinstance(covered, http_sfv.InnerList):
        raise BadSignature("Signature-Input must hold an inner list", "malformed")
    if not isinstance(value, http_sfv.Item) or not isinstance(value.value, bytes):
        raise BadSignature("Signature must hold a byte sequence", "malformed")
    components = []
    for item in covered:
        if not isinstance(item.value, str) or isinstance(item.value, http_sfv.Token) or item.params:
            raise BadSignature("components are plain strings without parameters", "malformed")
        components.append(item.value)
    if sorted(components) != sorted(COMPONENTS):
        raise BadSignature(f"cover exactly {', '.join(COMPONENTS)}", "malformed")
    params = dict(covered.params)
    _check_params(params)
    return ParsedSignature(
        label=label,
        components=tuple(components),
        params=params,
        signature_params=str(covered),
        signature=value.value,
        input_member=str(_single(label, covered)),
        signature_member=str(_single(label, value)),
    )


def signature_base(
    parsed: ParsedSignature, *, method: str, path: str, digest: str, date: str
) -> bytes:
    """The signature base of RFC 9421 §2.5 for the covered components."""
    values = {"@method": method.upper(), "@path": path, "content-digest": digest, "date": date}
    lines = [f'"{name}": {values[name]}' for name in parsed.components]
    lines.append(f'"@signature-params": {parsed.signature_params}')
    text = "\n".join(lines)
    if not text.isascii() or any(ch in text for ch in "\r\0"):
        raise BadSignature("header values must be printable ASCII", "malformed")
    return text.encode("ascii")


def sign_request(
    private_key: Ed25519PrivateKey,
    key_id: str,
    method: str,
    path: str,
    body: bytes,
    *,
    created: datetime | None = None,
    nonce: str | None = None,
    label: str = "sig1",
) -> dict[str, str]:
    """The headers signing a request (what a partner's client sends); for tests and examples."""
    created = created or datetime.now(UTC)
    date = format_datetime(created.astimezone(UTC), usegmt=True)
    covered = http_sfv.InnerList([http_sfv.Item(name) for name in COMPONENTS])
    covered.params["created"] = int(created.timestamp())
    covered.params["keyid"] = key_id
    covered.params["alg"] = ALG
    covered.params["nonce"] = nonce or secrets.token_urlsafe(24)
    digest = content_digest(body)
    signature_input = str(_single(label, covered))
    unsigned = ParsedSignature(label, COMPONENTS, dict(covered.params), str(covered), b"", "", "")
    base = signature_base(unsigned, method=method, path=path, digest=digest, date=date)
    signature = base64.b64encode(private_key.sign(base)).decode()
    return {
        "Date": date,
        "Content-Digest": digest,
        "Signature-Input": signature_input,
        "Signature": f"{label}=:{signature}:",
    }


# -- checking a request ----------------------------------------------------------------------------


def check_request(
    conn: Connection,
    partner: str | None,
    *,
    method: str,
    path: str,
    headers: Mapping[str, str | None],
    body: bytes,
    now: datetime,
) -> dict[str, str]:
    """Check a request's signature, if any, and return the entry attributes proving it.

    ``headers`` maps ``Signature-Input``, ``Signature``, ``Content-Digest`` and ``Date`` to their
    values (``None`` when absent). An unsigned request returns ``{}`` unless the partner's contract
    in force at ``now`` requires signing. Raises :class:`ApiProblem` (401) otherwise.
    """
    signature_input, signature = headers.get("Signature-Input"), headers.get("Signature")
    if signature_input is None and signature is None:
        if partner is not None and _signing_required(conn, partner, now):
            raise ApiProblem(
                401,
                SIGNATURE_REQUIRED,
                f"the contract of {partner} requires signed requests (RFC 9421, Ed25519)",
            )
        return {}
    try:
        if partner is None:
            raise BadSignature("only partners sign requests", "malformed")
        if signature_input is None or signature is None:
            raise BadSignature("send both Signature-Input and Signature", "malformed")
        parsed = parse_signature(signature_input, signature)
        _check_fresh(parsed, now)
        digest, date = headers.get("Content-Digest"), headers.get("Date")
        if digest is None or date is None:
            raise BadSignature("send Content-Digest and Date", "malformed")
        digest, date = digest.strip(), date.strip()
        if digest != content_digest(body):
            raise BadSignature(
                "Content-Digest is not sha-256=:…: of the body as sent", "digest-mismatch"
            )
        base = signature_base(parsed, method=method, path=path, digest=digest, date=date)
        key_id = parsed.params["keyid"]
        try:
            directory.verify_partner_signature(
                conn, partner, key_id, base, parsed.signature, parsed.created
            )
        except SignatureError as error:
            raise BadSignature(error.message, "unverified") from None
        _record_nonce(conn, partner, parsed.params["nonce"], parsed.created, now)
    except BadSignature as error:
        raise ApiProblem(401, BAD_SIGNATURE, error.message, reason=error.reason) from None
    return {
        SIGNATURE_ATTRIBUTE: f"{parsed.input_member}|{parsed.signature_member}",
        KEY_ATTRIBUTE: key_id,
        DATE_ATTRIBUTE: date,
    }


@contextmanager
def signed(conn: Connection) -> Iterator[dict[str, str]]:
    """Check this Flask request's signature in the booking transaction ``conn``; while inside,
    every entry the kernel books carries the signature in its attributes.

    Use as ``with db.transaction() as conn, signed(conn):`` around a points-moving command.
    """
    evidence = check_request(
        conn,
        current_credential().partner,
        method=request.method,
        path=request.script_root + request.path,
        headers={
            name: _header(name)
            for name in ("Signature-Input", "Signature", "Content-Digest", "Date")
        },
        body=request.get_data(cache=True),
        now=datetime.now(UTC),
    )
    with request_evidence(evidence):
        yield evidence


# -- checking a stored signature -------------------------------------------------------------------


def verify_stored_signature(
    entry: Entry | Mapping[str, Any],
    public_key: bytes | str | Ed25519PublicKey,
    method: str,
    path: str,
    body: bytes,
) -> ParsedSignature:
    """Check, offline, the request signature an entry stores against the request it claims.

    ``entry`` is a journal entry (or its JSON, or a leaf's entry record); ``public_key`` the
    partner's key (raw, base64 or a key object) whose id the entry names. Freshness, nonce and the
    key's validity window were checked when the request was served and are not repeated here;
    ``created`` is returned (in the parsed signature) for the caller to compare with the key's
    window. Raises :class:`~ledger.errors.SignatureError` if anything does not match.
    """
    attributes = entry.attributes if isinstance(entry, Entry) else entry["attributes"]
    stored = attributes.get(SIGNATURE_ATTRIBUTE)
    if not isinstance(stored, str) or "|" not in stored:
        raise BadSignature("the entry stores no request signature", "malformed")
    signature_input, signature = stored.rsplit("|", 1)
    parsed = parse_signature(signature_input, signature)
    if parsed.params["keyid"] != attributes.get(KEY_ATTRIBUTE):
        raise BadSignature("the signature's keyid is not the entry's signing_key", "malformed")
    base = signature_base(
        parsed,
        method=method,
        path=path,
        digest=content_digest(body),
        date=str(attributes.get(DATE_ATTRIBUTE, "")),
    )
    if not isinstance(public_key, Ed25519PublicKey):
        raw = directory.parse_public_key(public_key)
        if directory.partner_key_id(raw) != parsed.params["keyid"]:
            raise BadSignature("this is not the key the entry names", "unverified")
        public_key = Ed25519PublicKey.from_public_bytes(raw)
    try:
        public_key.verify(parsed.signature, base)
    except InvalidSignature:
        raise BadSignature("the stored signature does not verify", "unverified") from None
    return parsed


# -- internals -------------------------------------------------------------------------------------


def _dictionary(value: str, name: str) -> http_sfv.Dictionary:
    parsed = http_sfv.Dictionary()
    try:
        parsed.parse(value.encode("ascii"))
    except (ValueError, UnicodeError):
        raise BadSignature(
            f"{name} is not a structured dictionary (RFC 8941)", "malformed"
        ) from None
    return parsed


def _single(label: str, value: Any) -> http_sfv.Dictionary:
    member = http_sfv.Dictionary()
    member[label] = value
    return member


def _check_params(params: Mapping[str, Any]) -> None:
    unknown = set(params) - _PARAMS
    if unknown:
        raise BadSignature(
            f"unknown signature parameters: {', '.join(sorted(unknown))}", "malformed"
        )
    for name, kind in (("created", int), ("keyid", str), ("alg", str), ("nonce", str)):
        value = params.get(name)
        if value is None:
            raise BadSignature(f"the signature needs a {name} parameter", "malformed")
        if not isinstance(value, kind) or isinstance(value, bool | http_sfv.Token):
            raise BadSignature(
                f"{name} must be a{'n integer' if kind is int else ' string'}", "malformed"
            )
    if params["alg"] != ALG:
        raise BadSignature(f'alg must be "{ALG}"', "malformed")
    if not 1 <= len(params["nonce"]) <= MAX_NONCE:
        raise BadSignature(f"a nonce has 1–{MAX_NONCE} characters", "malformed")
    if not 1 <= len(params["keyid"]) <= 64:
        raise BadSignature("a keyid has 1–64 characters", "malformed")
    expires = params.get("expires")
    if expires is not None and (not isinstance(expires, int) or isinstance(expires, bool)):
        raise BadSignature("expires must be an integer", "malformed")
    if not 0 <= params["created"] < 2**40:
        raise BadSignature("created is not a plausible time", "malformed")


def _check_fresh(parsed: ParsedSignature, now: datetime) -> None:
    if abs(parsed.created - now) > MAX_SKEW:
        raise BadSignature(
            f"created {parsed.created.isoformat()} is more than "
            f"{int(MAX_SKEW.total_seconds())} s from the server's clock {now.isoformat()}",
            "stale",
        )
    expires = parsed.params.get("expires")
    if expires is not None and expires <= now.timestamp():
        raise BadSignature("the signature has expired", "stale")


def _record_nonce(
    conn: Connection, partner: str, nonce: str, created: datetime, now: datetime
) -> None:
    """Record the nonce, or refuse it if the partner used it before (also concurrently)."""
    n = request_nonces.c
    conn.execute(
        request_nonces.delete().where(n.partner == partner, n.created < now - 2 * MAX_SKEW)
    )
    # No savepoint: a collision refuses the request, and the refusal rolls the transaction back.
    try:
        conn.execute(request_nonces.insert().values(partner=partner, nonce=nonce, created=created))
    except sa.exc.IntegrityError:
        raise BadSignature(f"nonce {nonce!r} was already used", "replayed") from None


def _signing_required(conn: Connection, partner: str, now: datetime) -> bool:
    contract = directory.SqlDirectory(conn).contract_at(partner, now)
    return contract is not None and contract.terms.signing_required


def _header(name: str) -> str | None:
    values = request.headers.getlist(name)
    return ", ".join(values) if values else None
