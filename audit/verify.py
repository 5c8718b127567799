"""``coalition audit verify``: every check the ledger can make of itself, as one report.

Runs the journal-versus-cache checks of :mod:`ledger.consistency` and the log checks of
:mod:`ledger.logcheck` (canonical leaves, chain, gapless indices, Merkle roots against signed
checkpoints, tree nodes, entries against leaves) and reports every finding, as text or JSON. It
only reads: run it against a live database with a read-only role if you like.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from ledger.consistency import Finding, check_consistency
from ledger.logcheck import verify_log
from ledger.logstore import SqlLogStore
from ledger.note import NoteVerifier


@dataclass(frozen=True)
class Report:
    """The verifier's result: what was checked and everything found wrong."""

    logs: list[str]
    leaves: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "logs": self.logs,
            "leaves": self.leaves,
            "findings": [
                {k: (v.hex() if isinstance(v, bytes) else v) for k, v in asdict(f).items()}
                for f in self.findings
            ],
        }

    def to_text(self) -> str:
        lines = [f"logs: {', '.join(self.logs) or '(none)'}", f"leaves checked: {self.leaves}"]
        lines += [f"FINDING {finding}" for finding in self.findings]
        lines.append(
            "OK: the ledger verifies" if self.ok else f"FAILED: {len(self.findings)} finding(s)"
        )
        return "\n".join(lines)


def verify_database(conn: Connection, trusted: Iterable[NoteVerifier] | None = None) -> Report:
    """Verify everything in the database. ``trusted`` keys default to the logs' own keys.

    An auditor should pass the log keys it obtained out of band: a database can carry a forged
    key alongside forged checkpoints.
    """
    store = SqlLogStore(conn)
    logs = store.logs()
    keyring = (
        list(trusted) if trusted is not None else [NoteVerifier.from_vkey(v) for _, v, _ in logs]
    )
    findings = [*check_consistency(conn), *verify_log(conn, keyring)]
    leaves = sum(store.tip(origin).size for origin, _, _ in logs)
    return Report([origin for origin, _, _ in logs], leaves, findings)
