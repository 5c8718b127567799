"""The demo's summary names, per settled period, what the verifier found about it."""

from __future__ import annotations

from api.demo_finish import findings_by_period
from ledger.consistency import Finding


def test_each_period_gets_its_own_and_its_statements_findings_only() -> None:
    findings = [
        Finding("statement-document", "2026-01 RAIL", "aa", "bb"),
        Finding("control-total", "2026-02", "1.00", "2.00"),
        Finding("cached-balance", "member:m1:available", 5, 6),
        Finding("leaf-chain", "demo.coalition.local/ledger#7", "00", "11"),
        Finding("statement-note", "2026-01 SUPER", "x", "y"),
    ]
    assert findings_by_period(findings, ["2026-01", "2026-02", "2026-03"]) == {
        "2026-01": [str(findings[0]), str(findings[4])],
        "2026-02": [str(findings[1])],
        "2026-03": [],
    }
