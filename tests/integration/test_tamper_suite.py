"""The tamper suite: each class of tampering, applied to a bundle and to the live database, is
reported by the verifier with a finding that names its class (audit.findings.TAMPER_CLASSES).

The bundle attacker rewrites files and then re-seals the manifest (it holds no secret, so anyone
who edits a file can recompute it): what catches them is the log's own evidence — the chain, the
signed roots, the journal tables' record against the leaves, the caches against what the leaves
imply. The database attacker is a DBA editing rows; on PostgreSQL it first sets
``session_replication_role = replica`` to get past the append-only triggers, as a DBA can.

Classes: edit an amount, edit an account, delete an entry, reorder two, insert a forged leaf with
recomputed hashes and chain, truncate the tail, fork a checkpoint, edit the audit log, edit a
statement (on the golden March settlement, with signed statement notes), edit a cached balance;
and a cached lot.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest.mock import patch

import pytest
import rfc8785
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from audit import tables as at
from audit.bundle import export_database, verify_bundle
from audit.findings import TAMPER_CLASSES
from audit.verify import Report, verify_database
from ledger import logcheck, merkle
from ledger import tables as t
from ledger.canonical import parse_timestamp
from ledger.db import Database
from ledger.journal import build_leaf
from ledger.note import Checkpoint, CosignatureSigner, NoteSigner
from settlement import notes
from settlement import tables as st
from tests.integration.conftest import Books
from tests.integration.test_bundle import EXPORTED_AT, ORIGIN, Journal, build_journal, export
from tests.integration.test_settlement import (  # noqa: F401  (golden is a fixture)
    MARCH,
    Coalition,
    golden,
)

# -- the bundle attacker --------------------------------------------------------------------------


def read_lines(bundle: Path, name: str) -> list[bytes]:
    return (bundle / name).read_bytes().splitlines()


def write_lines(bundle: Path, name: str, lines: list[bytes]) -> None:
    (bundle / name).write_bytes(b"".join(line + b"\n" for line in lines))
    reseal(bundle)


def reseal(bundle: Path) -> None:
    """Recompute the manifest, as anyone who edits a bundle can."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in manifest["files"]:
        data = (bundle / name).read_bytes()
        manifest["files"][name] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "lines": data.count(b"\n"),
        }
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def leaf_position(bundle: Path, kind: str) -> int:
    """The line (= index) of the first leaf of ``kind``."""
    kinds = [json.loads(line)["kind"] for line in read_lines(bundle, "leaves.jsonl")]
    return kinds.index(kind)


def edit_leaf(bundle: Path, position: int, edit: Callable[[bytes], bytes]) -> None:
    lines = read_lines(bundle, "leaves.jsonl")
    edited = edit(lines[position])
    assert edited != lines[position]
    lines[position] = edited
    write_lines(bundle, "leaves.jsonl", lines)


def rechain(envelopes: list[dict], start: int) -> list[bytes]:
    """The leaves' bytes with indices renumbered and every hash and prev recomputed from start."""
    out: list[bytes] = []
    prev = bytes(32)
    for index, envelope in enumerate(envelopes):
        leaf = build_leaf(
            log=envelope["log"],
            index=index,
            prev=prev,
            kind=envelope["kind"],
            body=envelope["entry"],
            committed_at=parse_timestamp(envelope["committed_at"]),
            nonce=bytes.fromhex(envelope["nonce"]),
        )
        assert index < start or leaf.index == index
        out.append(leaf.data)
        prev = leaf.hash
    return out


def renumber(bundle: Path, name: str, at_or_after: int, insert: bytes | None = None) -> None:
    """Shift the leaf index of entries.jsonl / audit.jsonl lines, as a careful forger would."""
    out = []
    for line in read_lines(bundle, name):
        item = json.loads(line)
        if item["index"] is not None and item["index"] >= at_or_after:
            head = b'{"index":%d,' % (item["index"] + 1)
            line = head + line[line.index(b'"log":') :]
        out.append(line)
    if insert is not None:
        out.insert(
            next(n for n, item in enumerate(out) if json.loads(item)["index"] > at_or_after), insert
        )
    write_lines(bundle, name, out)


# -- the database attacker ------------------------------------------------------------------------


@contextmanager
def tampering(db: Database) -> Iterator[Connection]:
    with db.engine.begin() as conn:
        if db.engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        yield conn


def verify_live(journal: Journal) -> Report:
    return verify_every_way(journal.db, journal.signer)


def verify_every_way(db: Database, signer: NoteSigner) -> Report:
    """The live verifier's report, after checking that it does not depend on how the leaves are
    split: in one range, in ranges of three leaves (so every tamper sits near a boundary), and
    in ranges of three checked by two forked workers, the findings are the same."""
    with db.engine.connect() as conn:
        whole = verify_database(conn, [signer.verifier])
    with patch.object(logcheck, "_BATCH", 3):
        for workers in (1, 2):
            with db.engine.connect() as conn:
                split = verify_database(conn, [signer.verifier], workers=workers)
            assert sorted(map(str, split.findings)) == sorted(map(str, whole.findings)), workers
    return whole


def leaf_index(db: Database, entry_id: uuid.UUID) -> int:
    with db.engine.connect() as conn:
        return int(conn.scalar(sa.select(t.leaves.c.idx).where(t.leaves.c.entry_id == entry_id)))


# -- fixtures and the baseline --------------------------------------------------------------------


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def journal(books: Books, signer: NoteSigner) -> Journal:
    return build_journal(books, signer)


@pytest.fixture
def bundle(journal: Journal, tmp_path: Path) -> Path:
    return export(journal, tmp_path)


def verify(bundle: Path, journal: Journal) -> Report:
    return verify_bundle(bundle, [journal.signer.verifier])


def classes_of(report: Report) -> set[str]:
    return set(report.classes)


def pairs(report: Report) -> set[tuple[str, str]]:
    return {(f.check, f.subject) for f in report.findings}


def checks_of(report: Report) -> set[str]:
    return {f.check for f in report.findings}


def test_the_untouched_journal_verifies_live_and_exported(bundle: Path, journal: Journal) -> None:
    """The baseline every tamper test departs from: no finding, live or offline."""
    assert verify_live(journal).ok, verify_live(journal).to_text()
    assert verify(bundle, journal).ok, verify(bundle, journal).to_text()


def test_every_check_names_a_known_class() -> None:
    """Each check the verifiers can report maps to one of the documented tamper classes."""
    documented = (Path(__file__).parents[2] / "docs" / "AUDITING.md").read_text()
    for check, klass in TAMPER_CLASSES.items():
        assert f"`{check}`" in documented, check
        assert f"`{klass}`" in documented, klass


def test_an_edited_file_without_a_resealed_manifest_is_named(
    bundle: Path, journal: Journal
) -> None:
    """A byte changed in transit (manifest not recomputed): manifest-hash, edited-bundle-file."""
    path = bundle / "lots.jsonl"
    path.write_bytes(path.read_bytes() + b"\n")
    report = verify(bundle, journal)
    assert ("manifest-hash", "lots.jsonl") in pairs(report)
    assert "edited-bundle-file" in classes_of(report)


# -- 1. edit an amount ----------------------------------------------------------------------------


def test_edit_an_amount_in_the_bundle(bundle: Path, journal: Journal) -> None:
    """A burn's amount changed in its leaf: the entry no longer matches the tables, nor balances."""
    position = leaf_position(bundle, "BURN")
    edit_leaf(bundle, position, lambda line: line.replace(b'"amount":-150}', b'"amount":-151}'))
    report = verify(bundle, journal)
    subject = f"{ORIGIN}#{position}"
    assert ("entry-amount", subject) in pairs(report)
    assert ("entry-balance", f"{subject} POINTS") in pairs(report)
    assert ("leaf-chain", f"{ORIGIN}#{position + 1}") in {
        (f.check, f.subject) for f in report.findings
    }
    assert {"edited-amount", "altered-leaf"} <= classes_of(report)


def _escaped(leaf: bytes, index: int, extra: bytes = b"") -> bytes:
    """``leaf`` written as an escape line, as the exporter writes bytes that cannot be a line,
    with ``extra`` members appended (which the exporter never writes)."""
    data = base64.b64encode(leaf)
    return b'{"index":%d,"leaf_base64":"%s","log":"%s"%s}' % (index, data, ORIGIN.encode(), extra)


def test_a_leaf_escaped_without_need_still_verifies(bundle: Path, journal: Journal) -> None:
    position = leaf_position(bundle, "EARN")
    leaves = read_lines(bundle, "leaves.jsonl")
    leaves[position] = _escaped(leaves[position], position)
    write_lines(bundle, "leaves.jsonl", leaves)
    assert verify(bundle, journal).ok, verify(bundle, journal).to_text()


def test_a_record_forged_beside_an_escaped_leaf_is_not_taken_for_the_leafs(
    bundle: Path, journal: Journal
) -> None:
    """The record an escape line stands for is in its decoded bytes. Here the line also carries
    a forged record where a careless reader would cut it from the line, and entries.jsonl was
    edited to match the forgery: the edit is still found."""
    position = leaf_position(bundle, "BURN")
    leaves = read_lines(bundle, "leaves.jsonl")
    leaf = leaves[position]
    record = leaf[leaf.index(b'"entry":') + 8 : leaf.rindex(b',"index":')]
    forged = record.replace(b'"amount":-150}', b'"amount":-15}', 1)
    assert forged != record
    leaves[position] = _escaped(leaf, position, b',"zz":{"entry":' + forged + b',"index":0}')
    write_lines(bundle, "leaves.jsonl", leaves)
    entries = read_lines(bundle, "entries.jsonl")
    edited = [line.replace(record, forged) for line in entries]
    assert edited != entries
    write_lines(bundle, "entries.jsonl", edited)
    report = verify(bundle, journal)
    assert ("entry-altered", f"{ORIGIN}#{position}") in pairs(report), report.to_text()


def test_edit_an_amount_in_the_database(journal: Journal) -> None:
    """A posting amount edited in the journal tables: entry-amount against its leaf."""
    burn = journal.entries["burn"]
    with tampering(journal.db) as conn:
        conn.execute(
            t.postings.update()
            .where(t.postings.c.entry_id == burn, t.postings.c.amount < 0)
            .values(amount=-151)
        )
    report = verify_live(journal)
    subject = f"{ORIGIN}#{leaf_index(journal.db, burn)}"
    assert ("entry-amount", subject) in pairs(report)
    assert "edited-amount" in classes_of(report)
    assert "entry-account" not in checks_of(report)


# -- 2. edit an account ---------------------------------------------------------------------------


def test_edit_an_account_in_the_bundle(bundle: Path, journal: Journal) -> None:
    """A burn's member account swapped for another member's in its leaf: entry-account."""
    position = leaf_position(bundle, "BURN")
    edit_leaf(bundle, position, lambda line: line.replace(b"member:alice:", b"member:bob:", 1))
    report = verify(bundle, journal)
    subject = f"{ORIGIN}#{position}"
    assert ("entry-account", subject) in pairs(report)
    assert "entry-amount" not in checks_of(report)
    assert {"edited-account", "altered-leaf", "edited-cached-balance"} <= classes_of(report)


def test_edit_an_account_in_the_database(journal: Journal) -> None:
    """A posting moved to another member's account in the tables: entry-account."""
    burn = journal.entries["burn"]
    with tampering(journal.db) as conn:
        conn.execute(
            t.postings.update()
            .where(t.postings.c.entry_id == burn, t.postings.c.account == "member:alice:available")
            .values(account="member:bob:available")
        )
    report = verify_live(journal)
    subject = f"{ORIGIN}#{leaf_index(journal.db, burn)}"
    assert ("entry-account", subject) in pairs(report)
    assert "edited-account" in classes_of(report)


# -- 3. delete an entry ---------------------------------------------------------------------------


def test_delete_an_entry_from_the_bundle(bundle: Path, journal: Journal) -> None:
    """A leaf line removed: a gap in the indices, and the tables' entry has no leaf."""
    position = leaf_position(bundle, "TRANSFER")
    lines = read_lines(bundle, "leaves.jsonl")
    del lines[position]
    write_lines(bundle, "leaves.jsonl", lines)
    report = verify(bundle, journal)
    found = pairs(report)
    assert ("leaf-gap", f"{ORIGIN}#{position}") in found
    assert ("entry-not-logged", str(journal.entries["transfer"])) in found
    assert "deleted-entry" in classes_of(report)


def test_delete_an_entry_from_the_database(journal: Journal) -> None:
    """A leaf row deleted: leaf-sequence and entry-not-logged."""
    transfer = journal.entries["transfer"]
    index = leaf_index(journal.db, transfer)
    with tampering(journal.db) as conn:
        conn.execute(t.leaves.delete().where(t.leaves.c.log == ORIGIN, t.leaves.c.idx == index))
    report = verify_live(journal)
    found = pairs(report)
    assert ("entry-not-logged", str(transfer)) in found
    assert ("leaf-sequence", f"{ORIGIN}#{index + 1}") in found
    assert "deleted-entry" in classes_of(report)


# -- 4. reorder two -------------------------------------------------------------------------------


def test_reorder_two_leaves_in_the_bundle(bundle: Path, journal: Journal) -> None:
    """Two leaf lines swapped: leaves out of index order."""
    lines = read_lines(bundle, "leaves.jsonl")
    lines[2], lines[6] = lines[6], lines[2]
    write_lines(bundle, "leaves.jsonl", lines)
    report = verify(bundle, journal)
    assert "leaf-order" in checks_of(report)
    assert "leaf-gap" not in checks_of(report)  # every index is still there
    assert "entry-altered" not in checks_of(report)  # each leaf still matches its table row
    assert "reordered-entries" in classes_of(report)


def test_reorder_two_leaves_in_the_database(journal: Journal) -> None:
    """Two leaf rows' contents swapped: each says another position."""
    with journal.db.engine.connect() as conn:
        rows = {r.idx: r for r in conn.execute(sa.select(t.leaves).where(t.leaves.c.log == ORIGIN))}
    first, second = 0, 3  # two earns, from different integrator batches
    with tampering(journal.db) as conn:
        for index, source in ((first, None), (second, rows[first]), (first, rows[second])):
            values = (
                {"entry_id": None}
                if source is None
                else {"data": source.data, "hash": source.hash, "entry_id": source.entry_id}
            )
            conn.execute(
                t.leaves.update()
                .where(t.leaves.c.log == ORIGIN, t.leaves.c.idx == index)
                .values(**values)
            )
    report = verify_live(journal)
    assert ("leaf-position", f"{ORIGIN}#{first}") in pairs(report)
    assert "reordered-entries" in classes_of(report)


# -- 5. insert a forged leaf, with recomputed hashes and chain ------------------------------------


def test_insert_a_forged_leaf_with_a_recomputed_chain(bundle: Path, journal: Journal) -> None:
    """A forged earn slipped in, every later leaf renumbered and re-chained, the tables' copy and
    audit copy renumbered too: only the signed roots can tell, and they do."""
    envelopes = [json.loads(line) for line in read_lines(bundle, "leaves.jsonl")]
    position = leaf_position(bundle, "BURN")
    forged = json.loads(json.dumps(envelopes[0]))  # an EARN for alice
    entry = forged["entry"]
    entry["id"] = str(uuid.uuid4())
    entry["idempotency_key"] = "forged-1"
    entry["postings"] = [
        {"account": "partner:SUPER:issued", "amount": -1000},
        {"account": "member:alice:available", "amount": 1000},
    ]
    entry["lots_opened"][0].update(id=str(uuid.uuid4()), amount=1000)
    envelopes.insert(position, forged)
    lines = rechain(envelopes, position)
    write_lines(bundle, "leaves.jsonl", lines)
    record = lines[position][
        lines[position].index(b'"entry":') + 8 : lines[position].rindex(b',"index":')
    ]
    forged_line = b'{"index":%d,"log":%s,"queued":false,"record":%s}' % (
        position,
        json.dumps(ORIGIN).encode(),
        record,
    )
    renumber(bundle, "entries.jsonl", position, insert=forged_line)
    renumber(bundle, "audit.jsonl", position)
    report = verify(bundle, journal)
    checks = checks_of(report)
    assert {"leaf-chain", "leaf-gap", "leaf-order", "entry-altered"}.isdisjoint(checks)
    assert {"log-rewritten", "checkpoint-root"} <= checks
    assert "forged-leaf" in classes_of(report)


# -- 6. truncate the tail -------------------------------------------------------------------------


def test_truncate_the_tail_of_the_bundle(bundle: Path, journal: Journal) -> None:
    """The newest leaves cut off: the latest signed checkpoint claims more leaves than exist."""
    lines = read_lines(bundle, "leaves.jsonl")
    write_lines(bundle, "leaves.jsonl", lines[:-3])
    report = verify(bundle, journal)
    size = len(lines)
    assert ("checkpoint-beyond-log", f"{ORIGIN}@{size}") in {
        (f.check, f.subject) for f in report.findings
    }
    assert "truncated-log" in classes_of(report)


def test_truncate_the_tail_of_the_database(journal: Journal) -> None:
    """The newest leaf rows deleted (with the audit links that point at them)."""
    with journal.db.engine.connect() as conn:
        size = int(conn.scalar(sa.select(sa.func.count()).select_from(t.leaves)))
    with tampering(journal.db) as conn:
        conn.execute(at.audit_leaves.delete().where(at.audit_leaves.c.idx >= size - 3))
        conn.execute(t.leaves.delete().where(t.leaves.c.idx >= size - 3))
    report = verify_live(journal)
    assert ("checkpoint-beyond-log", f"{ORIGIN}@{size}") in {
        (f.check, f.subject) for f in report.findings
    }
    assert "truncated-log" in classes_of(report)


# -- 7. fork a checkpoint -------------------------------------------------------------------------


def forked_note(signer: NoteSigner, size: int) -> str:
    """A checkpoint of size ``size`` over another history, signed with the real log key."""
    other = merkle.MemoryTree([f"another history {n}".encode() for n in range(size)]).root()
    return signer.sign(Checkpoint(ORIGIN, size, other).text())


def test_fork_a_checkpoint_in_the_bundle(bundle: Path, journal: Journal) -> None:
    """A second validly signed checkpoint of the same size with another root: a fork."""
    lines = read_lines(bundle, "checkpoints.jsonl")
    size = json.loads(lines[2])["size"]
    fork = {"log": ORIGIN, "size": size, "note": forked_note(journal.signer, size)}
    lines.insert(3, json.dumps(fork).encode())
    write_lines(bundle, "checkpoints.jsonl", lines)
    report = verify(bundle, journal)
    assert [(f.check, f.subject) for f in report.findings] == [
        ("checkpoint-fork", f"{ORIGIN}@{size}")
    ]
    assert report.classes == ["forked-checkpoint"]


def test_fork_a_checkpoint_in_the_database(journal: Journal) -> None:
    """A stored checkpoint replaced by a validly signed one of another tree: a fork."""
    with journal.db.engine.connect() as conn:
        sizes = sorted(conn.scalars(sa.select(t.checkpoints.c.size)))
    size = sizes[2]
    note = forked_note(journal.signer, size)
    with tampering(journal.db) as conn:
        conn.execute(
            t.checkpoints.update()
            .where(t.checkpoints.c.log == ORIGIN, t.checkpoints.c.size == size)
            .values(note=note, root=Checkpoint.parse(note.split("\n\n")[0] + "\n").root)
        )
    report = verify_live(journal)
    assert ("checkpoint-fork", f"{ORIGIN}@{size}") in {
        (f.check, f.subject) for f in report.findings
    }
    assert "forked-checkpoint" in classes_of(report)


# -- 8. edit the audit log ------------------------------------------------------------------------


def test_edit_the_audit_log_in_the_bundle(bundle: Path, journal: Journal) -> None:
    """An audit event's reason rewritten in audit.jsonl: it no longer matches its leaf."""
    lines = read_lines(bundle, "audit.jsonl")
    lines[0] = lines[0].replace(b"ticket OPS-12", b"ticket OPS-99")
    write_lines(bundle, "audit.jsonl", lines)
    report = verify(bundle, journal)
    assert report.classes == ["edited-audit-log"]
    assert checks_of(report) == {"audit-altered"}


def test_edit_an_audit_leaf_in_the_bundle(bundle: Path, journal: Journal) -> None:
    """The AUDIT leaf itself rewritten: its chain breaks and it disagrees with the audit table."""
    position = leaf_position(bundle, "AUDIT")
    edit_leaf(bundle, position, lambda line: line.replace(b"ticket OPS-12", b"ticket OPS-99"))
    report = verify(bundle, journal)
    assert {"audit-altered", "leaf-chain", "checkpoint-root"} <= checks_of(report)
    assert "edited-audit-log" in classes_of(report)


def test_edit_the_audit_log_in_the_database(journal: Journal) -> None:
    """An audit_events row edited by a DBA: audit-altered; a deleted one: audit-missing."""
    first, second = journal.events[:2]
    with tampering(journal.db) as conn:
        conn.execute(
            at.audit_events.update().where(at.audit_events.c.id == first).values(reason="nothing")
        )
        conn.execute(at.audit_leaves.delete().where(at.audit_leaves.c.event_id == second))
        conn.execute(at.audit_events.delete().where(at.audit_events.c.id == second))
    report = verify_live(journal)
    assert {"audit-altered", "audit-missing"} <= checks_of(report)
    assert report.classes == ["edited-audit-log"]


# -- 9. edit a statement --------------------------------------------------------------------------


@pytest.fixture
def settled(golden: Coalition) -> Coalition:  # noqa: F811
    """The golden March closed and prepared; RAIL's and SUPER's statements signed by the log key."""
    golden.after(MARCH).close("2026-03")
    golden.prepare("2026-03")
    for partner in ("RAIL", "SUPER"):
        golden.run(
            lambda conn, partner=partner: notes.statement_note(
                conn, "2026-03", partner, signer=golden.integrator.signer, now=golden.clock.now
            )
        )
    return golden


def verify_settled(world: Coalition) -> Report:
    return verify_every_way(world.db, world.integrator.signer)


def export_settled(world: Coalition, tmp_path: Path) -> Path:
    out = tmp_path / "settled"
    export_database(world.db.engine, out, now=EXPORTED_AT)
    return out


def statement_line(bundle: Path) -> tuple[list[bytes], dict]:
    lines = read_lines(bundle, "statements.jsonl")
    assert len(lines) == 1  # one prepared period
    return lines, json.loads(lines[0])


def test_settled_statements_verify_live_and_exported(settled: Coalition, tmp_path: Path) -> None:
    """The baseline: prepared and signed statements raise no finding, live or offline."""
    live = verify_settled(settled)
    assert live.ok, live.to_text()
    bundle = export_settled(settled, tmp_path)
    _, period = statement_line(bundle)
    assert {s["partner"]: s["note"] is not None for s in period["statements"]} == {
        "BANK": False,
        "DEPT": False,
        "RAIL": True,
        "SUPER": True,
    }
    report = verify_bundle(bundle, [settled.integrator.signer.verifier])
    assert report.ok, report.to_text()


def test_a_key_of_another_type_in_the_keyring_is_a_finding_however_many_workers(
    settled: Coalition,
) -> None:
    """The statements are checked beside the leaves (in a worker, with workers) with the trusted
    keys as given: a witness key among them signs no statement, so the signed statements are
    reported, the same way with one process or two, and nothing raises."""
    keyring = [CosignatureSigner.generate("witness.example").verifier]
    with patch.object(logcheck, "_BATCH", 3):
        reports = []
        for workers in (1, 2):
            with settled.db.engine.connect() as conn:
                reports.append(verify_database(conn, keyring, workers=workers))
    one, two = (sorted(map(str, report.findings)) for report in reports)
    assert one == two
    assert {("statement-signature", "2026-03 RAIL"), ("statement-signature", "2026-03 SUPER")} <= (
        pairs(reports[1])
    )


def test_edit_a_statement_in_the_database(settled: Coalition) -> None:
    """A DBA rewrites RAIL's statement and its recorded hash to match: the signed note's hash and
    the recomputation from the journal both disagree."""
    statements = st.settlement_statements
    with tampering(settled.db) as conn:
        document = conn.scalar(
            sa.select(statements.c.document).where(statements.c.partner == "RAIL")
        )
        forged = bytes(document).replace(b'"-3200.00"', b'"-3900.00"')
        assert forged != bytes(document)
        conn.execute(
            statements.update()
            .where(statements.c.partner == "RAIL")
            .values(document=forged, sha256=hashlib.sha256(forged).digest())
        )
    report = verify_settled(settled)
    assert ("statement-note", "2026-03 RAIL") in pairs(report)
    assert ("statement-document", "2026-03 RAIL") in pairs(report)
    assert "statement-hash" not in checks_of(report)  # the hash column was redone
    assert report.classes == ["edited-statement"]


def test_edit_a_statement_without_its_hash_in_the_database(settled: Coalition) -> None:
    """Only the document edited (an unsigned statement): its recorded hash no longer matches."""
    statements = st.settlement_statements
    with tampering(settled.db) as conn:
        document = conn.scalar(
            sa.select(statements.c.document).where(statements.c.partner == "BANK")
        )
        forged = bytes(document).replace(b'"payable":"', b'"payable":"1')
        conn.execute(
            statements.update().where(statements.c.partner == "BANK").values(document=forged)
        )
    report = verify_settled(settled)
    assert ("statement-hash", "2026-03 BANK") in pairs(report)
    assert report.classes == ["edited-statement"]


def test_a_forged_statement_note_in_the_database(settled: Coalition) -> None:
    """A note re-signed with another key to match an edit: its signature is not the log's."""
    n = st.settlement_notes.c
    intruder = NoteSigner.generate(settled.integrator.origin)
    with tampering(settled.db) as conn:
        note = conn.scalar(
            sa.select(n.note)
            .join(st.settlement_statements)
            .where(st.settlement_statements.c.partner == "SUPER")
        )
        text = note[: note.rfind("\n\n") + 1]
        conn.execute(
            st.settlement_notes.update()
            .where(n.note == note)
            .values(note=intruder.sign(text.replace("net 7580.00", "net 7000.00")))
        )
    report = verify_settled(settled)
    assert ("statement-signature", "2026-03 SUPER") in pairs(report)
    assert report.classes == ["edited-statement"]


def test_edit_a_statement_in_the_bundle(settled: Coalition, tmp_path: Path) -> None:
    """RAIL's net rewritten in statements.jsonl with every hash redone (its own, the run's list
    and the run's): the signed note and the recomputation from its lines both disagree."""
    bundle = export_settled(settled, tmp_path)
    _, period = statement_line(bundle)
    rail = next(s for s in period["statements"] if s["partner"] == "RAIL")
    forged = rail["document"].replace('"net":"-3200.00"', '"net":"-3900.00"')
    assert forged != rail["document"]
    rail["document"] = forged
    rail["sha256"] = hashlib.sha256(forged.encode()).hexdigest()
    run = json.loads(period["run"]["document"])
    for listed in run["statements"]:
        if listed["partner"] == "RAIL":
            listed["sha256"] = rail["sha256"]
    period["run"]["document"] = rfc8785.dumps(run).decode()
    period["run"]["sha256"] = hashlib.sha256(period["run"]["document"].encode()).hexdigest()
    write_lines(bundle, "statements.jsonl", [json.dumps(period).encode()])
    report = verify_bundle(bundle, [settled.integrator.signer.verifier])
    assert ("statement-note", "2026-03 RAIL") in pairs(report)
    assert ("statement-document", "2026-03 RAIL") in pairs(report)
    assert {"statement-hash", "statement-altered", "settlement-hash"}.isdisjoint(checks_of(report))
    assert report.classes == ["edited-statement"]


def test_edit_an_unsigned_statement_price_in_the_bundle(settled: Coalition, tmp_path: Path) -> None:
    """BANK's (unsigned) issuance price lowered in its document, hashes redone: recomputed with
    the contract's price, the statement renders otherwise; its run still lists the old hash."""
    bundle = export_settled(settled, tmp_path)
    _, period = statement_line(bundle)
    bank = next(s for s in period["statements"] if s["partner"] == "BANK")
    forged = bank["document"].replace('"price":"0.0115"', '"price":"0.0105"')
    assert forged != bank["document"]
    bank["document"] = forged
    bank["sha256"] = hashlib.sha256(forged.encode()).hexdigest()
    write_lines(bundle, "statements.jsonl", [json.dumps(period).encode()])
    report = verify_bundle(bundle, [settled.integrator.signer.verifier])
    found = pairs(report)
    assert ("statement-document", "2026-03 BANK") in found
    assert ("statement-altered", "2026-03 BANK") in found
    assert report.classes == ["edited-statement"]


def test_a_statement_close_citing_a_foreign_checkpoint_in_the_bundle(
    settled: Coalition, tmp_path: Path
) -> None:
    """The close's cited checkpoint replaced by one signed by another key: statement-checkpoint."""
    bundle = export_settled(settled, tmp_path)
    _, period = statement_line(bundle)
    close = period["close"]
    intruder = NoteSigner.generate(close["log"])
    root = base64.b64decode(close["root"])
    close["note"] = intruder.sign(Checkpoint(close["log"], close["size"], root).text())
    write_lines(bundle, "statements.jsonl", [json.dumps(period).encode()])
    report = verify_bundle(bundle, [settled.integrator.signer.verifier])
    assert ("statement-checkpoint", "2026-03") in pairs(report)
    assert report.classes == ["edited-statement"]


def test_malformed_statement_lines_are_findings_not_crashes(
    settled: Coalition, tmp_path: Path
) -> None:
    """Garbage in statements.jsonl or contracts.jsonl is reported where it stands."""
    bundle = export_settled(settled, tmp_path)
    lines, period = statement_line(bundle)
    broken = {**period, "close": 5}
    wrong_types = {**period, "statements": [{"partner": "RAIL", "document": 7}]}
    write_lines(bundle, "statements.jsonl", [b"{", json.dumps(broken).encode(), *lines])
    (bundle / "contracts.jsonl").write_bytes(b"[]\n" + (bundle / "contracts.jsonl").read_bytes())
    reseal(bundle)
    found = pairs(verify_bundle(bundle, [settled.integrator.signer.verifier]))
    assert ("bundle-format", "statements.jsonl:1") in found
    assert ("bundle-format", "statements.jsonl:2") in found
    assert ("bundle-format", "contracts.jsonl:1") in found
    write_lines(bundle, "statements.jsonl", [json.dumps(wrong_types).encode()])
    report = verify_bundle(bundle, [settled.integrator.signer.verifier])
    assert ("statement-document", "2026-03 RAIL") in pairs(report)
    assert "edited-statement" in report.classes


# -- 10. edit a cached balance --------------------------------------------------------------------


def test_edit_a_cached_balance_in_the_bundle(bundle: Path, journal: Journal) -> None:
    """A cached balance raised in balances.jsonl: only cached-balance, naming the account."""
    lines = read_lines(bundle, "balances.jsonl")
    position = next(n for n, item in enumerate(lines) if b'"member:bob:available"' in item)
    row = json.loads(lines[position])
    row["balance"] += 1000
    lines[position] = json.dumps(row, separators=(",", ":")).encode()
    write_lines(bundle, "balances.jsonl", lines)
    report = verify(bundle, journal)
    assert [(f.check, f.subject) for f in report.findings] == [
        ("cached-balance", "member:bob:available")
    ]
    assert report.classes == ["edited-cached-balance"]


def test_edit_a_cached_balance_in_the_database(journal: Journal) -> None:
    """A balance row edited: cached-balance against the postings."""
    with tampering(journal.db) as conn:
        conn.execute(
            t.balances.update()
            .where(t.balances.c.account == "member:bob:available")
            .values(balance=t.balances.c.balance + 1000)
        )
    report = verify_live(journal)
    assert ("cached-balance", "member:bob:available") in {
        (f.check, f.subject) for f in report.findings
    }
    assert "edited-cached-balance" in classes_of(report)


def test_edit_a_cached_lot_in_the_bundle(bundle: Path, journal: Journal) -> None:
    """A lot's remainder changed in lots.jsonl: lot-remainder names the lot."""
    lines = read_lines(bundle, "lots.jsonl")
    row = json.loads(lines[0])
    row["remaining"] += 5
    lines[0] = json.dumps(row, separators=(",", ":")).encode()
    write_lines(bundle, "lots.jsonl", lines)
    report = verify(bundle, journal)
    assert ("lot-remainder", row["id"]) in pairs(report)
    assert "edited-lot" in classes_of(report)
