"""The business layer's error tree.

Every error the ``partners`` package raises on purpose is a :class:`PartnersError`, itself a
:class:`~ledger.errors.LedgerError`: it carries machine fields, builds its own message and names a
stable ``code`` that the API maps to a problem type. Refusals a ledger command may record under an
idempotency key (a suspended partner, no contract in force) are also
:class:`~ledger.errors.BusinessRefusal`, so a retry is refused the same way; malformed arguments are
also :class:`~ledger.errors.InvalidRequest`.

Tree::

    PartnersError
    ├── InvalidField            a malformed argument, named (IBAN, BIC, role, ...); InvalidRequest
    ├── UnknownPartner          a partner code that was never onboarded
    ├── PartnerExists           onboarding a code that is taken
    ├── VersionMismatch         an update made against a stale version (a failed If-Match)
    ├── ContractPeriodError     a contract version whose period does not follow the previous one
    │   ├── ContractOverlap     it starts before the previous version ends (or that one never ends)
    │   └── ContractGap         it starts after the previous version ends
    ├── UnknownCredential       a credential id that does not exist
    ├── CredentialRevoked       rotating a credential that is revoked already
    ├── AuthenticationFailed    a token that is malformed, unknown, wrong or revoked
    ├── UnknownPartnerKey       a partner key id that does not exist
    ├── PartnerKeyExists        registering a public key twice
    ├── PartnerSuspended        a suspended or exiting partner cannot issue; BusinessRefusal
    ├── RedemptionBlocked       members cannot spend at this partner; BusinessRefusal
    ├── NoContract              no contract version in force at a business time; BusinessRefusal
    ├── UnknownMember           a member id or card number that was never enrolled
    ├── MemberClosed            a closed (or erased) member cannot be changed; BusinessRefusal
    ├── CustomerRefTaken        a customer reference linked to another member; BusinessRefusal
    ├── ErasureRefused          erasure refused by policy, reason recorded; BusinessRefusal
    ├── PersonalDataErased      the member's data key was destroyed: nothing can be read
    ├── MasterKeyUnavailable    a vault record wrapped by a master key not in the keyring
    ├── VaultIntegrityError     a vault record that does not decrypt (tampered or moved)
    ├── CapReached              an engagement past its per-member cap for a period; BusinessRefusal
    └── VelocityExceeded        past a member's daily earn/burn/transfer cap; BusinessRefusal
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ledger.errors import BusinessRefusal, InvalidRequest, LedgerError


class PartnersError(LedgerError):
    """Base of every error the business layer raises on purpose."""

    code = "partners-error"


class InvalidField(PartnersError, InvalidRequest):
    """A malformed argument; ``field`` names it so a form can point at it."""

    code = "invalid-field"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def fields(self) -> dict[str, Any]:
        return {"field": self.field, "reason": self.reason}


class UnknownPartner(PartnersError):
    code = "unknown-partner"

    def __init__(self, partner: str) -> None:
        super().__init__(f"partner {partner!r} does not exist")
        self.partner = partner

    def fields(self) -> dict[str, Any]:
        return {"partner": self.partner}


class PartnerExists(PartnersError):
    code = "partner-exists"

    def __init__(self, partner: str) -> None:
        super().__init__(f"partner {partner!r} exists already")
        self.partner = partner

    def fields(self) -> dict[str, Any]:
        return {"partner": self.partner}


class VersionMismatch(PartnersError):
    """The caller changed a row it read at another version (the API's failed ``If-Match``)."""

    code = "version-mismatch"

    def __init__(self, what: str, expected: int, current: int) -> None:
        super().__init__(f"{what} is at version {current}, not {expected}")
        self.what = what
        self.expected = expected
        self.current = current

    def fields(self) -> dict[str, Any]:
        return {"resource": self.what, "expected": self.expected, "current": self.current}


class ContractPeriodError(PartnersError):
    """A new contract version must start exactly where the previous one ends."""

    code = "contract-period"

    def __init__(
        self,
        message: str,
        *,
        partner: str,
        previous_version: int,
        previous_valid_to: datetime | None,
        valid_from: datetime,
    ) -> None:
        super().__init__(message)
        self.partner = partner
        self.previous_version = previous_version
        self.previous_valid_to = previous_valid_to
        self.valid_from = valid_from

    def fields(self) -> dict[str, Any]:
        return {
            "partner": self.partner,
            "previous_version": self.previous_version,
            "previous_valid_to": _iso(self.previous_valid_to),
            "valid_from": _iso(self.valid_from),
        }


class ContractOverlap(ContractPeriodError):
    code = "contract-overlap"


class ContractGap(ContractPeriodError):
    code = "contract-gap"


class UnknownCredential(PartnersError):
    code = "unknown-credential"

    def __init__(self, credential_id: str) -> None:
        super().__init__(f"credential {credential_id!r} does not exist")
        self.credential_id = credential_id

    def fields(self) -> dict[str, Any]:
        return {"credential_id": self.credential_id}


class CredentialRevoked(PartnersError):
    code = "credential-revoked"

    def __init__(self, credential_id: str, revoked_at: datetime) -> None:
        super().__init__(f"credential {credential_id!r} was revoked at {_iso(revoked_at)}")
        self.credential_id = credential_id
        self.revoked_at = revoked_at

    def fields(self) -> dict[str, Any]:
        return {"credential_id": self.credential_id, "revoked_at": _iso(self.revoked_at)}


class AuthenticationFailed(PartnersError):
    """A token that does not authenticate.

    The message and fields are the same whatever went wrong, so a caller cannot probe which
    credential ids exist; ``reason`` says why, for the operator's logs only.
    """

    code = "unauthenticated"

    def __init__(self, reason: str) -> None:
        super().__init__("invalid, unknown or revoked credential")
        self.reason = reason


class UnknownPartnerKey(PartnersError):
    code = "unknown-partner-key"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"partner key {key_id!r} does not exist")
        self.key_id = key_id

    def fields(self) -> dict[str, Any]:
        return {"key_id": self.key_id}


class PartnerKeyExists(PartnersError):
    code = "partner-key-exists"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"partner key {key_id} is registered already")
        self.key_id = key_id

    def fields(self) -> dict[str, Any]:
        return {"key_id": self.key_id}


class PartnerSuspended(PartnersError, BusinessRefusal):
    """A partner that is not active cannot issue points."""

    code = "partner-suspended"

    def __init__(self, partner: str, status: str) -> None:
        super().__init__(
            f"partner {partner} is {status} and cannot issue points", partner=partner, status=status
        )


class RedemptionBlocked(PartnersError, BusinessRefusal):
    """Members cannot spend points at a partner whose redemptions are blocked."""

    code = "redemption-blocked"

    def __init__(self, partner: str, status: str) -> None:
        super().__init__(
            f"partner {partner} is {status} and redemptions there are blocked",
            partner=partner,
            status=status,
        )


class NoContract(PartnersError, BusinessRefusal):
    """No contract version is in force for the partner at the event's business time."""

    code = "no-contract"

    def __init__(self, partner: str, at: datetime) -> None:
        super().__init__(
            f"partner {partner} has no contract in force at {_iso(at)}",
            partner=partner,
            at=_iso(at),
        )


class UnknownMember(PartnersError):
    """No such member; a lookup by card or customer reference does not echo the identifier."""

    code = "unknown-member"

    def __init__(self, member_id: str | None = None) -> None:
        super().__init__(f"member {member_id} does not exist" if member_id else "no such member")
        self.member_id = member_id

    def fields(self) -> dict[str, Any]:
        return {"member_id": self.member_id} if self.member_id else {}


class MemberClosed(PartnersError, BusinessRefusal):
    """A closed member's record cannot change (closing is final; erasure closes)."""

    code = "member-closed"

    def __init__(self, member_id: str) -> None:
        super().__init__(f"member {member_id} is closed", member_id=member_id)


class CustomerRefTaken(PartnersError, BusinessRefusal):
    """A partner's customer reference already names another member."""

    code = "customer-ref-taken"

    def __init__(self, partner: str, customer_ref: str) -> None:
        super().__init__(
            f"customer reference {customer_ref!r} of {partner} is linked to another member",
            partner=partner,
            customer_ref=customer_ref,
        )


class ErasureRefused(PartnersError, BusinessRefusal):
    """An erasure the policy refuses; the refusal is recorded in ``erasures`` before raising."""

    code = "erasure-refused"

    def __init__(self, member_id: str, reasons: list[str]) -> None:
        super().__init__(
            f"erasure of {member_id} refused: {'; '.join(reasons)}",
            member_id=member_id,
            reasons=list(reasons),
        )


class PersonalDataErased(PartnersError):
    """The member's data key was destroyed: its personal data is gone for good."""

    code = "personal-data-erased"

    def __init__(self, member_id: str) -> None:
        super().__init__(f"personal data of {member_id} was erased")
        self.member_id = member_id

    def fields(self) -> dict[str, Any]:
        return {"member_id": self.member_id}


class MasterKeyUnavailable(PartnersError):
    """A vault record is wrapped by a master key the caller's keyring does not hold."""

    code = "master-key-unavailable"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"master key {key_id!r} is not in the keyring")
        self.key_id = key_id

    def fields(self) -> dict[str, Any]:
        return {"master_key_id": self.key_id}


class VaultIntegrityError(PartnersError):
    """A vault record does not decrypt: tampered, truncated, or moved to another member."""

    code = "vault-integrity"

    def __init__(self, member_id: str) -> None:
        super().__init__(f"the vault record of {member_id} does not decrypt")
        self.member_id = member_id

    def fields(self) -> dict[str, Any]:
        return {"member_id": self.member_id}


class CapReached(PartnersError, BusinessRefusal):
    """A member was already rewarded as often as the rule allows in this day, month or year."""

    code = "engagement-cap-reached"

    def __init__(self, event_type: str, period: str, cap: int, awarded: int) -> None:
        super().__init__(
            f"{event_type} is capped at {cap} per {period} and {awarded} were already rewarded",
            event_type=event_type,
            period=period,
            cap=cap,
            awarded=awarded,
        )


class VelocityExceeded(PartnersError, BusinessRefusal):
    """An operation would take a member past its daily velocity cap (an abuse control)."""

    code = "velocity-exceeded"

    def __init__(self, kind: str, cap: int, already_today: int, requested: int) -> None:
        super().__init__(
            f"{kind} of {requested} points would exceed the daily cap {cap} "
            f"({already_today} already today)",
            kind=kind,
            cap=cap,
            already_today=already_today,
            requested=requested,
        )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
