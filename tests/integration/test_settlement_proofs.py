"""Inclusion proofs for the entries a statement line sums, on SQLite and PostgreSQL.

Every line of the golden March 2026 statements (issuance net of a refund, reimbursement net of a
cancelled order, breakage of a joint promotion's lots, fees) and of an April with late refunds
(prior-period points, a reversal on an older contract version) is listed page by page: each
entry's leaf is proved against the signed checkpoint the period was closed on, and the points add
up to the line's, net of reversals.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledger import merkle
from ledger.errors import ProofError
from ledger.journal import parse_leaf
from ledger.note import open_checkpoint
from settlement import proofs
from settlement.model import Flow, StatementRun
from settlement.proofs import UnknownStatementLine
from tests.integration.test_settlement import (  # noqa: F401  (golden, repriced are fixtures)
    APRIL,
    MARCH,
    ORIGIN,
    Coalition,
    golden,
    paris,
    repriced,
)


def pages(world: Coalition, period: str, partner: str, number: int, size: int) -> Iterator:
    return iter(
        world.run(
            lambda conn: list(proofs.all_line_proofs(conn, period, partner, number, page=size))
        )
    )


def check_every_line(world: Coalition, run: StatementRun, page: int) -> dict[Flow, int]:
    """Prove every entry of every line of ``run``; the number of entries proved per flow."""
    verifier = world.integrator.signer.verifier
    proved: dict[Flow, int] = {}
    for statement in run.settlement.statements:
        for number, line in enumerate(statement.lines, start=1):
            found = list(pages(world, run.period.label, statement.partner, number, page))
            assert all(p.line == line for p in found)
            checkpoint, _ = open_checkpoint(found[0].checkpoint.note, [verifier], origin=ORIGIN)
            assert (checkpoint.size, checkpoint.root) == (
                run.settlement.checkpoint.size,
                run.settlement.checkpoint.root,
            )
            entries = [entry for p in found for entry in p.entries]
            if line.flow not in proofs.SUMMED_FLOWS:
                assert [p.sums_entries for p in found] == [False]
                assert entries == []
                continue
            assert len(found) == max(1, -(-len(entries) // page))  # pages of ``page`` entries
            assert [e.index for e in entries] == sorted({e.index for e in entries})
            for entry in entries:
                assert entry.tree_size == checkpoint.size
                merkle.verify_inclusion(
                    entry.leaf_hash,
                    entry.index,
                    checkpoint.size,
                    list(entry.proof),
                    checkpoint.root,
                )
                proofs.verify_line_entry(entry, checkpoint.root)
                leaf = parse_leaf(entry.leaf)
                assert (leaf.log, leaf.index, leaf.body["id"]) == (
                    ORIGIN,
                    entry.index,
                    str(entry.entry_id),
                )
                assert leaf.kind == entry.kind
            assert sum(e.points for e in entries) == line.points
            assert sum(e.points for e in entries if e.prior_period) == line.points_prior_period
            assert sum(e.points for e in entries if e.points > 0) == line.points_gross
            assert -sum(e.points for e in entries if e.points < 0) == line.points_reversed
            proved[line.flow] = proved.get(line.flow, 0) + len(entries)
    return proved


def test_every_golden_line_is_proved_entry_by_entry(golden: Coalition) -> None:  # noqa: F811
    golden.after(MARCH).close("2026-03")
    run = golden.prepare("2026-03")
    proved = check_every_line(golden, run, page=2)
    # 4 earns, the joint promotion on 3 funders' lines, 1 refund; 3 burns + 1 cancelled order;
    # 1 expiry on 3 funders' lines.
    assert proved == {Flow.ISSUANCE: 8, Flow.REIMBURSEMENT: 4, Flow.BREAKAGE: 3}
    super_issuance = run.settlement.statement("SUPER").lines[0]
    assert (super_issuance.flow, super_issuance.points) == (Flow.ISSUANCE, 1_980_000)
    (page,) = pages(golden, "2026-03", "SUPER", 1, 100)
    assert sorted(e.points for e in page.entries) == [-20_000, 90_000, 1_910_000]


def test_late_refunds_and_older_contract_versions_are_proved(
    repriced: Coalition,  # noqa: F811
) -> None:
    """April's SUPER v1 line is a late refund alone; v2 an April earn net of an April refund."""
    world = repriced
    purchase = world.at(paris(3, 10)).earn("SUPER", "alice", 100_000)
    world.after(MARCH).close("2026-03")
    world.prepare("2026-03")
    world.reverse("SUPER", purchase, 10_000, business_time=paris(3, 31, 23))
    world.at(paris(4, 5)).reverse("SUPER", purchase, 5_000)
    world.at(paris(4, 6)).earn("SUPER", "bob", 20_000)
    world.after(APRIL).close("2026-04")
    april = world.prepare("2026-04")
    assert check_every_line(world, april, page=1) == {Flow.ISSUANCE: 3}
    (late,) = pages(world, "2026-04", "SUPER", 1, 10)
    assert (late.line.contract_version, late.line.points_prior_period) == (1, -10_000)
    assert [(e.kind, e.points, e.prior_period) for e in late.entries] == [
        ("EARN_REVERSAL", -10_000, True)
    ]
    (current,) = pages(world, "2026-04", "SUPER", 2, 10)
    assert [(e.kind, e.points, e.prior_period) for e in current.entries] == [
        ("EARN_REVERSAL", -5_000, False),
        ("EARN", 20_000, False),
    ]
    (fee,) = pages(world, "2026-04", "SUPER", 3, 10)
    assert (fee.line.flow, fee.sums_entries, fee.entries) == (Flow.FEE, False, ())


def test_a_tampered_proof_or_leaf_does_not_verify(golden: Coalition) -> None:  # noqa: F811
    golden.after(MARCH).close("2026-03")
    run = golden.prepare("2026-03")
    (page,) = pages(golden, "2026-03", "RAIL", 1, 10)
    (entry,) = page.entries
    root = run.settlement.checkpoint.root
    proofs.verify_line_entry(entry, root)
    forged = proofs.LineEntry(
        entry.entry_id,
        entry.kind,
        entry.business_time,
        entry.points,
        entry.prior_period,
        entry.log,
        entry.index,
        entry.leaf.replace(b"400000", b"400001"),
        entry.tree_size,
        entry.proof,
    )
    assert forged.leaf != entry.leaf
    with pytest.raises(ProofError):
        proofs.verify_line_entry(forged, root)


def test_unknown_lines_and_statements_are_refused(golden: Coalition) -> None:  # noqa: F811
    golden.after(MARCH).close("2026-03")
    golden.prepare("2026-03")
    lines = len(golden.prepare("2026-03").settlement.statement("RAIL").lines)
    for partner, number in (("RAIL", 0), ("RAIL", lines + 1), ("NOPE", 1)):
        with pytest.raises(UnknownStatementLine):
            golden.run(lambda conn, p=partner, n=number: proofs.line_proofs(conn, "2026-03", p, n))
