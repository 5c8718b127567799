"""The ledger's error tree.

Every failure the kernel can report is a subclass of :class:`LedgerError`. Each error carries the
machine fields a caller needs (entry id, account, idempotency key, amounts) as attributes, builds
its own human message from them, and names a stable ``code`` that the API layer maps to an RFC 9457
problem type. Nothing else escapes the kernel: a database or programming error is a bug, not an
answer.

Tree::

    LedgerError
    ├── InvalidEntry            an entry that cannot exist (unbalanced, < 2 postings, bad amount)
    ├── InvalidRequest          a command whose arguments are malformed
    ├── UnknownAccount          an account that was never opened
    ├── UnknownEntry            an entry id that is not in the journal
    ├── NotYetIntegrated        a booked entry the integrator has not logged yet
    ├── BusinessRefusal         a well-formed request the ledger refuses (recorded for idempotency)
    │   ├── InsufficientPoints  a debit would take an account below its floor
    │   ├── HoldNotOpen         capture/void of a hold that is captured, voided or expired
    │   ├── CaptureExceedsHold  capture of more than is still held
    │   ├── ReversalExceedsOriginal
    │   └── NotReversible       the entry's kind cannot be reversed
    ├── IdempotencyConflict     the same key was used with a different payload
    └── VerificationError       a hash, proof, signature or canonical form does not check
        ├── ProfileError        data outside the hashed-data profile (floats, naive datetimes, ...)
        ├── ProofError          an inclusion or consistency proof does not verify
        └── SignatureError      a signed note or signature does not verify
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID


class LedgerError(Exception):
    """Base of every error the ledger kernel raises on purpose."""

    code = "ledger-error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def fields(self) -> dict[str, Any]:
        """Machine-readable details; the API puts them beside the message."""
        return {}


class InvalidEntry(LedgerError):
    """An entry that breaks double-entry rules; such an entry object can never be built."""

    code = "invalid-entry"


class InvalidRequest(LedgerError):
    """A command whose arguments are malformed (a negative amount, an unknown kind, ...)."""

    code = "invalid-request"


class UnknownAccount(LedgerError):
    code = "unknown-account"

    def __init__(self, account: str) -> None:
        super().__init__(f"account {account!r} does not exist")
        self.account = account

    def fields(self) -> dict[str, Any]:
        return {"account": self.account}


class UnknownEntry(LedgerError):
    code = "unknown-entry"

    def __init__(self, entry_id: UUID | str) -> None:
        super().__init__(f"entry {entry_id} does not exist")
        self.entry_id = str(entry_id)

    def fields(self) -> dict[str, Any]:
        return {"entry_id": self.entry_id}


class NotYetIntegrated(LedgerError):
    """The entry is booked but the integrator has not put it in the log yet; ask again later."""

    code = "not-yet-integrated"

    def __init__(self, entry_id: UUID | str) -> None:
        super().__init__(f"entry {entry_id} is booked but not yet in the log")
        self.entry_id = str(entry_id)

    def fields(self) -> dict[str, Any]:
        return {"entry_id": self.entry_id}


class BusinessRefusal(LedgerError):
    """A valid request that the ledger refuses for a business reason.

    Refusals are recorded under the caller's idempotency key, so a retry is refused the same way
    even if the reason has gone away in the meantime (the caller must use a new key to try again).
    """

    code = "refused"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details

    def fields(self) -> dict[str, Any]:
        return dict(self.details)

    def to_record(self) -> dict[str, Any]:
        """What the idempotency record keeps of this refusal; :meth:`from_record` rebuilds it."""
        return {"code": self.code, "message": self.message, "fields": self.fields()}

    @classmethod
    def from_record(cls, code: str, message: str, details: Mapping[str, Any]) -> BusinessRefusal:
        """Rebuild a recorded refusal so a retry raises the same error class."""
        for sub in _all_subclasses(BusinessRefusal):
            if sub.code == code:
                err = BusinessRefusal.__new__(sub)
                BusinessRefusal.__init__(err, message, **details)
                return err
        return cls(message, **details)


class InsufficientPoints(BusinessRefusal):
    code = "insufficient-points"

    def __init__(self, account: str, balance: int, requested: int) -> None:
        super().__init__(
            f"account {account} holds {balance}, cannot debit {requested}",
            account=account,
            balance=balance,
            requested=requested,
        )


class HoldNotOpen(BusinessRefusal):
    code = "hold-not-open"

    def __init__(self, hold_id: UUID | str, status: str) -> None:
        super().__init__(f"hold {hold_id} is {status}", hold_id=str(hold_id), status=status)


class CaptureExceedsHold(BusinessRefusal):
    code = "capture-exceeds-hold"

    def __init__(self, hold_id: UUID | str, held: int, requested: int) -> None:
        super().__init__(
            f"hold {hold_id} has {held} points held, cannot capture {requested}",
            hold_id=str(hold_id),
            held=held,
            requested=requested,
        )


class ReversalExceedsOriginal(BusinessRefusal):
    code = "reversal-exceeds-original"

    def __init__(self, entry_id: UUID | str, reversible: int, requested: int) -> None:
        super().__init__(
            f"entry {entry_id} has {reversible} points left to reverse, cannot reverse {requested}",
            entry_id=str(entry_id),
            reversible=reversible,
            requested=requested,
        )


class NotReversible(BusinessRefusal):
    code = "not-reversible"

    def __init__(self, entry_id: UUID | str, kind: str) -> None:
        super().__init__(
            f"entry {entry_id} of kind {kind} cannot be reversed", entry_id=str(entry_id), kind=kind
        )


class IdempotencyConflict(LedgerError):
    """The idempotency key was used before with another payload."""

    code = "idempotency-conflict"

    def __init__(self, key: str, differing_fields: Sequence[str], entry_id: str | None) -> None:
        names = ", ".join(differing_fields)
        super().__init__(f"idempotency key {key!r} was used with a different {names}")
        self.key = key
        self.differing_fields = list(differing_fields)
        self.entry_id = entry_id

    def fields(self) -> dict[str, Any]:
        return {
            "idempotency_key": self.key,
            "differing_fields": self.differing_fields,
            "original_entry_id": self.entry_id,
        }


class VerificationError(LedgerError):
    """Something that should verify does not; names what was expected and what was computed."""

    code = "verification-failed"

    def __init__(self, message: str, *, expected: object = None, computed: object = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.computed = computed

    def fields(self) -> dict[str, Any]:
        return {"expected": _printable(self.expected), "computed": _printable(self.computed)}


class ProfileError(VerificationError):
    """A value outside the restricted profile of hashed data (PRODUCT.md §4)."""

    code = "profile-violation"


class ProofError(VerificationError):
    code = "proof-invalid"


class SignatureError(VerificationError):
    code = "signature-invalid"


def _printable(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    return value


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found
