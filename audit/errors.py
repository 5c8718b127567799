"""The audit package's errors: one base, each with the machine fields a caller needs.

Tree::

    LedgerError (ledger.errors)
    └── AuditError              the audit package refuses a request
        ├── UnsafeAuditValue    before/after would put a secret or a personal value in the log
        └── BundleError         an export bundle cannot be written or read at all
"""

from __future__ import annotations

from typing import Any

from ledger.errors import LedgerError


class AuditError(LedgerError):
    code = "audit-error"


class UnsafeAuditValue(AuditError):
    """An audit event would carry a secret or a personal value (PRODUCT.md §5, §8)."""

    code = "unsafe-audit-value"

    def __init__(self, paths: list[str]) -> None:
        super().__init__(
            "an audit event may not carry secrets or personal values; pass before/after "
            f"through audit.log.redact() first: {', '.join(paths)}"
        )
        self.paths = paths

    def fields(self) -> dict[str, Any]:
        return {"paths": self.paths}


class BundleError(AuditError):
    """The bundle directory cannot be used (missing, not empty on export, unreadable)."""

    code = "bundle-error"
