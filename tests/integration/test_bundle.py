"""The audit bundle: exported from the database, verified with nothing but the log key.

A journal with every common entry kind, a pending earn, a hold and its capture, reversals, a
transfer, an adjustment, a settlement in euros, and audit events, is integrated (audit events
with it), exported with ``coalition audit export`` semantics and verified offline. These tests run
on SQLite and, with ``COALITION_TEST_DATABASE_URL``, on PostgreSQL: a bundle exported from either
verifies. The tamper classes are in test_tamper_suite.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.bundle import FILES, export_database, verify_bundle
from audit.log import AuditQueue, record, redact
from ledger.db import Database
from ledger.integrator import Integrator
from ledger.model import EntryKind, Posting
from ledger.note import NoteSigner
from tests.integration.conftest import DEPT, RAIL, STAFF, SUPER, Books, new_key

ORIGIN = "bundle.coalition.local/ledger"
EXPORTED_AT = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)


@dataclass
class Journal:
    """A booked, integrated journal and the key that signs its log."""

    db: Database
    signer: NoteSigner
    entries: dict[str, UUID]
    events: list[UUID]


def audit_event(db: Database, action: str, subject: str, **fields: object) -> UUID:
    """Record one audit event in its own transaction, as an admin action would."""
    with db.transaction() as conn:
        event = record(
            conn,
            actor="staff-alice",
            role="admin",
            credential="cred-0001",
            request_id=f"req-{action}",
            source="192.0.2.10",
            action=action,
            subject=subject,
            now=datetime.now(UTC),
            **fields,  # type: ignore[arg-type]
        )
    return event.id


def build_journal(books: Books, signer: NoteSigner, *, batch_size: int = 4) -> Journal:
    """Book a small but varied journal with audit events, and integrate it in several batches."""
    now = books.clock
    ids: dict[str, UUID] = {}
    ids["earn"] = books.earn(
        SUPER, new_key(), member="alice", funding={"SUPER": 500}, business_time=now()
    ).entry.id
    ids["joint"] = books.earn(
        SUPER, new_key(), member="bob", funding={"SUPER": 120, "DEPT": 80}, business_time=now()
    ).entry.id
    ids["pending"] = books.earn(
        DEPT,
        new_key(),
        member="bob",
        funding={"DEPT": 60},
        business_time=now(),
        pending_until=now() + timedelta(days=14),
    ).entry.id
    events = [
        audit_event(
            books.db,
            "partner.status",
            "RAIL",
            before={"status": "active"},
            after={"status": "suspended"},
            reason="ticket OPS-12",
        )
    ]
    books.clock.advance(hours=1)
    ids["burn"] = books.burn(
        RAIL, new_key(), member="alice", points=150, business_time=now()
    ).entry.id
    hold = books.hold(RAIL, new_key(), member="bob", points=90, business_time=now()).entry.id
    ids["capture"] = books.capture(
        RAIL, new_key(), hold_id=hold, points=70, business_time=now()
    ).entry.id
    ids["burn-reversal"] = books.reverse(
        RAIL,
        new_key(),
        entry_id=ids["burn"],
        business_time=now(),
        points=50,
        reason="order cancelled",
    ).entry.id
    events.append(
        audit_event(
            books.db,
            "member.read",
            "alice",
            before=None,
            after=redact({"email": "a@example.org", "tier": "gold"}),
            reason="support call 4411",
        )
    )
    ids["transfer"] = books.transfer(
        STAFF, new_key(), from_member="alice", to_member="bob", points=40, business_time=now()
    ).entry.id
    ids["adjustment"] = books.adjust(
        STAFF,
        new_key(),
        member="alice",
        points=25,
        reason="goodwill, complaint 77",
        business_time=now(),
    ).entry.id
    ids["settlement"] = books.post(
        STAFF,
        new_key(),
        kind=EntryKind.SETTLEMENT,
        business_time=now(),
        postings=[Posting("partner:SUPER:settlement", -1234), Posting("operator:bank", 1234)],
    ).entry.id
    events.append(
        audit_event(
            books.db,
            "credential.issue",
            "cred-0002",
            after=redact({"role": "finance", "token": "s3cr3t", "label": "x"}),
            reason="new finance clerk",
        )
    )
    integrator = Integrator(signer, batch_size=batch_size, queues=[AuditQueue()])
    assert integrator.integrate_all(books.db) == len(ids) + 1 + len(events)  # + the hold
    return Journal(books.db, signer, ids, events)


def export(journal: Journal, tmp_path: Path, name: str = "bundle") -> Path:
    out = tmp_path / name
    export_database(journal.db.engine, out, now=EXPORTED_AT)
    return out


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def journal(books: Books, signer: NoteSigner) -> Journal:
    return build_journal(books, signer)


@pytest.fixture
def bundle(journal: Journal, tmp_path: Path) -> Path:
    return export(journal, tmp_path)


# -- an honest bundle ---------------------------------------------------------------------------


def test_an_exported_bundle_verifies_with_only_the_log_key(
    bundle: Path, signer: NoteSigner, journal: Journal
) -> None:
    """A bundle from this backend verifies offline under the vkey alone, with no finding."""
    report = verify_bundle(bundle, [NoteSigner.from_skey(signer.skey).verifier])
    assert report.ok, report.to_text()
    assert report.source == "bundle"
    assert report.logs == [ORIGIN]
    assert report.leaves == len(journal.entries) + 1 + len(journal.events)


def test_the_bundle_holds_every_file_listed_in_its_manifest(bundle: Path) -> None:
    """manifest.json names every other file with its SHA-256, size and line count."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"] == "coalition-audit-bundle/1"
    assert set(manifest["files"]) == set(FILES)
    for name, info in manifest["files"].items():
        data = (bundle / name).read_bytes()
        assert info == {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "lines": data.count(b"\n"),
        }


def test_each_line_of_leaves_jsonl_is_a_leaf_whose_hash_the_log_signed(
    bundle: Path, journal: Journal
) -> None:
    """A line of leaves.jsonl is the leaf's exact bytes: H(0x00 || line) chains to the next."""
    lines = (bundle / "leaves.jsonl").read_bytes().splitlines()
    prev = bytes(32)
    for index, line in enumerate(lines):
        leaf = json.loads(line)
        assert (leaf["log"], leaf["index"], leaf["prev"]) == (ORIGIN, index, prev.hex())
        prev = hashlib.sha256(b"\x00" + line).digest()
    kinds = [json.loads(line)["kind"] for line in lines]
    assert kinds.count("AUDIT") == len(journal.events)


def test_audit_events_are_leaves_without_secrets_or_personal_values(bundle: Path) -> None:
    """The audit log is in the bundle twice (leaves and audit.jsonl) and never holds a secret."""
    text = (bundle / "leaves.jsonl").read_text() + (bundle / "audit.jsonl").read_text()
    assert "s3cr3t" not in text
    assert "a@example.org" not in text
    events = [
        json.loads(line)["record"] for line in (bundle / "audit.jsonl").read_text().splitlines()
    ]
    assert [e["action"] for e in events] == ["partner.status", "member.read", "credential.issue"]
    assert events[1]["after"] == {"email": "[redacted]", "tier": "gold"}
    assert events[2]["after"]["token"] == "[redacted]"


def test_verifying_in_several_processes_gives_the_same_report(
    bundle: Path, signer: NoteSigner
) -> None:
    """The leaves can be checked by worker processes: the result does not change."""
    report = verify_bundle(bundle, [signer.verifier], workers=2)
    assert report.ok, report.to_text()


@pytest.mark.parametrize("workers", [1, 2])
def test_the_manifest_progress_reaches_every_byte_listed(
    bundle: Path, signer: NoteSigner, workers: int
) -> None:
    """leaves.jsonl and entries.jsonl are hashed by the reading that checks them, not by the
    manifest's thread: their bytes still count in its progress, which ends at the total."""
    listed = json.loads((bundle / "manifest.json").read_text())["files"]
    total = sum(info["bytes"] for info in listed.values())
    calls: list[tuple[str, int, int]] = []
    report = verify_bundle(
        bundle, [signer.verifier], workers=workers, progress=lambda *c: calls.append(c)
    )
    assert report.findings == []
    manifest = [(done, of) for phase, done, of in calls if phase == "manifest"]
    assert manifest[-1] == (total, total)
    assert [done for done, _ in manifest] == sorted(done for done, _ in manifest)


def test_small_chunks_in_several_processes_find_the_same_as_one_pass(
    bundle: Path, signer: NoteSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers read their chunks of whole lines from the files by byte range: with chunks of a
    line or two, on a bundle with an edited leaf and an edited lot, the findings (and the line
    numbers they name) equal those of one process reading it in one chunk."""
    import audit.bundle

    leaves = bundle / "leaves.jsonl"
    lines = leaves.read_bytes().splitlines()
    position = next(n for n, line in enumerate(lines) if b'"kind":"BURN"' in line)
    lines[position] = lines[position].replace(b'"amount":-150}', b'"amount":-151}')
    lines.insert(3, b"not a leaf")
    leaves.write_bytes(b"".join(line + b"\n" for line in lines))
    lots = bundle / "lots.jsonl"
    lots.write_bytes(lots.read_bytes().replace(b'"remaining":', b'"remaining":1', 1))
    one = verify_bundle(bundle, [signer.verifier])
    monkeypatch.setattr(audit.bundle, "_CHUNK_BYTES", 600)
    many = verify_bundle(bundle, [signer.verifier], workers=2)
    assert not one.ok
    assert {"entry-amount", "leaf-canonical", "lot-remainder"} <= {f.check for f in one.findings}
    assert ("leaf-canonical", "leaves.jsonl:4") in {(f.check, f.subject) for f in one.findings}
    assert sorted(map(str, many.findings)) == sorted(map(str, one.findings))
    assert many.leaves == one.leaves


def _swap(lines: list[bytes], n: int) -> None:
    lines[n], lines[n + 1] = lines[n + 1], lines[n]


def _edit_record(bundle: Path) -> None:
    entries = bundle / "entries.jsonl"
    entries.write_bytes(entries.read_bytes().replace(b'"amount":-150}', b'"amount":-151}', 1))


@pytest.mark.parametrize(
    "tamper",
    [
        "none",
        "reorder",
        "delete",
        "duplicate",
        "edit-record",
        "drop-record",
        "extra-record",
        "swap-records",
        "chain",
    ],
)
def test_runs_of_leaves_find_the_same_as_leaf_by_leaf(
    bundle: Path, signer: NoteSigner, monkeypatch: pytest.MonkeyPatch, tamper: str
) -> None:
    """Clean chunks come back from the scan as runs, checked where they join the log and then
    all at once (the tree a subtree at a time, the tables' records line against line). With
    chunks of a few lines, in one process and in two, the report equals the leaf-by-leaf one
    on an honest bundle and on bundles tampered around chunk boundaries."""
    import functools

    import audit.bundle
    from audit.leafscan import scan_chunk

    leaves = bundle / "leaves.jsonl"
    lines = leaves.read_bytes().splitlines()
    if tamper == "reorder":
        _swap(lines, 5)
    elif tamper == "delete":
        del lines[6]
    elif tamper == "duplicate":
        lines.insert(7, lines[7])
    elif tamper == "edit-record":
        _edit_record(bundle)
    elif tamper == "drop-record":
        entries = bundle / "entries.jsonl"
        kept = entries.read_bytes().splitlines()
        del kept[4]
        entries.write_bytes(b"".join(line + b"\n" for line in kept))
    elif tamper in ("extra-record", "swap-records"):  # the worker finds its lines elsewhere
        entries = bundle / "entries.jsonl"
        kept = entries.read_bytes().splitlines()
        if tamper == "extra-record":
            kept.insert(3, kept[3].replace(b'"index":', b'"index":1', 1))
        else:
            _swap(kept, 4)
        entries.write_bytes(b"".join(line + b"\n" for line in kept))
    elif tamper == "chain":  # a prev that is not the hash of the leaf before
        at = lines[8].index(b'"prev":"') + 8
        digit = b"1" if lines[8][at : at + 1] != b"1" else b"2"
        lines[8] = lines[8][:at] + digit + lines[8][at + 1 :]
    leaves.write_bytes(b"".join(line + b"\n" for line in lines))
    monkeypatch.setattr(audit.bundle, "scan_chunk", functools.partial(scan_chunk, runs=False))
    monkeypatch.setattr(audit.bundle, "_CHUNK_BYTES", 1 << 30)
    plain = verify_bundle(bundle, [signer.verifier])
    monkeypatch.setattr(audit.bundle, "scan_chunk", scan_chunk)
    assert plain.ok == (tamper == "none"), plain.to_text()
    taken = []
    take_run = audit.bundle._BundleVerifier._take_run

    def counting(self: object, *args: object) -> bool:
        taken.append(take_run(self, *args))  # type: ignore[arg-type]
        return taken[-1]

    monkeypatch.setattr(audit.bundle._BundleVerifier, "_take_run", counting)
    for size, workers in ((1 << 30, 1), (1500, 1), (2500, 1), (1500, 2)):
        monkeypatch.setattr(audit.bundle, "_CHUNK_BYTES", size)
        report = verify_bundle(bundle, [signer.verifier], workers=workers)
        assert sorted(map(str, report.findings)) == sorted(map(str, plain.findings))
        assert report.leaves == plain.leaves
    assert taken.count(True) >= 3  # the runs were taken as runs


def test_a_bundle_checked_against_another_key_fails_every_checkpoint(bundle: Path) -> None:
    """Under a key the auditor trusts that did not sign the log, no checkpoint verifies."""
    stranger = NoteSigner.generate(ORIGIN).verifier
    report = verify_bundle(bundle, [stranger])
    assert not report.ok
    assert {f.check for f in report.findings} >= {"checkpoint-signature", "log-key"}


def test_without_trusted_keys_the_report_says_whom_it_trusted(bundle: Path) -> None:
    """With no key given, the bundle's own keys.json is used, and the report warns."""
    report = verify_bundle(bundle, None)
    assert report.ok
    assert any("keys.json" in note for note in report.notes)


def test_queued_entries_are_exported_and_counted_but_flagged_as_unsigned(
    journal: Journal, books: Books, signer: NoteSigner, tmp_path: Path
) -> None:
    """An entry committed but not yet integrated is in the bundle; its caches reconcile."""
    books.earn(SUPER, new_key(), member="alice", funding={"SUPER": 7}, business_time=books.clock())
    report = verify_bundle(export(journal, tmp_path), [signer.verifier])
    assert report.ok, report.to_text()
    assert any("1 entries were queued" in note for note in report.notes)


def test_a_leaf_that_cannot_be_a_line_is_exported_in_base64(tmp_path: Path) -> None:
    """Bytes with a newline (never a canonical leaf) go out as an escape line, and are flagged."""
    from audit.bundle import _leaf_line
    from audit.leafscan import leaf_bytes

    line = _leaf_line("x/log", 3, b'{"a":\n1}')
    assert json.loads(line) == {
        "index": 3,
        "leaf_base64": base64.b64encode(b'{"a":\n1}').decode(),
        "log": "x/log",
    }
    assert leaf_bytes(line) == (b'{"a":\n1}', ("x/log", 3))


# -- the command line ----------------------------------------------------------------------------


def test_the_cli_exports_and_verifies_a_bundle(
    journal: Journal,
    database_url: str,
    signer: NoteSigner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``audit export --out`` then ``audit verify --bundle --key --json``: ok, exit 0."""
    import api.cli
    from api.cli import main

    opened: list[Database] = []

    def tracked(settings: object) -> Database:  # dispose the command's engine at the end
        opened.append(Database.connect(database_url))
        return opened[-1]

    monkeypatch.setattr(api.cli, "_database", tracked)
    monkeypatch.setenv("COALITION_DATABASE_URL", database_url)
    runner = CliRunner()
    out = tmp_path / "cli-bundle"
    exported = runner.invoke(main, ["audit", "export", "--out", str(out)])
    for db in opened:
        db.dispose()
    assert exported.exit_code == 0, exported.output
    verified = runner.invoke(
        main, ["audit", "verify", "--bundle", str(out), "--key", signer.vkey, "--json"]
    )
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.stdout)
    assert (report["ok"], report["source"], report["findings"]) == (True, "bundle", [])


def test_the_cli_exits_non_zero_and_names_the_class_on_a_finding(
    bundle: Path, signer: NoteSigner
) -> None:
    """A tampered bundle: exit 1, and the text report names the tamper class of each finding."""
    from api.cli import main

    balances = bundle / "balances.jsonl"
    lines = balances.read_text().splitlines()
    row = json.loads(lines[-1])
    row["balance"] += 1
    lines[-1] = json.dumps(row)
    balances.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(
        main, ["audit", "verify", "--bundle", str(bundle), "--key", signer.vkey]
    )
    assert result.exit_code == 1
    assert "[edited-cached-balance] cached-balance" in result.output
    assert "[edited-bundle-file] manifest-hash" in result.output


def test_the_live_verifier_reports_progress(journal: Journal, signer: NoteSigner) -> None:
    """verify_database tells its progress: leaves counted up to all of them, then each phase."""
    from audit.verify import verify_database

    calls: list[tuple[str, int, int]] = []
    with journal.db.engine.connect() as conn:
        report = verify_database(conn, [signer.verifier], progress=lambda *c: calls.append(c))
    assert report.ok, report.to_text()
    leaves = [(done, total) for phase, done, total in calls if phase == "leaves"]
    assert leaves[0] == (0, report.leaves)
    assert leaves[-1] == (report.leaves, report.leaves)
    assert [done for done, _ in leaves] == sorted(done for done, _ in leaves)
    for phase in ("caches", "audit log", "statements"):
        assert [(d, t) for p, d, t in calls if p == phase] == [(0, 1), (1, 1)]


def test_the_cli_shows_progress_of_a_live_verify(
    journal: Journal,
    database_url: str,
    signer: NoteSigner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``audit verify --progress`` on the live database: the verifier's progress calls reach a
    bar on stderr; ``--no-progress`` passes none; the JSON on stdout stays clean either way."""
    import api.cli
    from api.cli import main

    opened: list[Database] = []
    calls: list[tuple[str, int, int]] = []
    verify = api.cli.verify_database

    def tracked(settings: object) -> Database:
        opened.append(Database.connect(database_url))
        return opened[-1]

    workers: list[int] = []

    def spying(conn: object, trusted: object, progress: object = None, **options: int) -> object:
        def relay(phase: str, done: int, total: int) -> None:
            calls.append((phase, done, total))
            progress(phase, done, total)  # type: ignore[operator]

        workers.append(options["workers"])
        return verify(conn, trusted, progress=relay if progress is not None else None, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(api.cli, "_database", tracked)
    monkeypatch.setattr(api.cli, "verify_database", spying)
    runner = CliRunner()
    args = ["audit", "verify", "--key", signer.vkey, "--json"]
    shown = runner.invoke(main, [*args, "--progress"])
    hidden = runner.invoke(main, [*args, "--no-progress", "--workers", "2"])
    for db in opened:
        db.dispose()
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["ok"] is True
    assert ("leaves", 0, json.loads(shown.stdout)["leaves"]) in calls
    assert {"leaves", "caches", "audit log", "statements"} <= {phase for phase, _, _ in calls}
    assert "leaves" in shown.stderr
    assert "statements" in shown.stderr
    count = len(calls)
    assert hidden.exit_code == 0, hidden.output
    assert len(calls) == count  # no progress callback without --progress
    assert "leaves" not in hidden.stderr
    assert workers[1] == 2  # --workers reaches the live verifier too


# -- the fast canonical check ----------------------------------------------------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.sampled_from([2**53 - 1, 2**53, -(2**53), 2**63, 2**64, -(2**64) - 1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra=st.dictionaries(st.text(max_size=6), _VALUES, max_size=4),
    spelling=st.sampled_from(["canonical", "sorted", "ascii", "unsorted", "spaced"]),
)
def test_the_fast_canonical_check_agrees_with_the_exact_one(
    extra: dict[str, object], spelling: str
) -> None:
    """leaf_envelope (C codec fast path) accepts exactly the bytes parse_leaf accepts."""
    from audit.leafscan import leaf_envelope
    from ledger.errors import LedgerError
    from ledger.journal import parse_leaf

    envelope = {
        "v": 1,
        "log": "x/log",
        "index": 3,
        "prev": "ab" * 32,
        "kind": "EARN",
        "entry": {**extra, "kind": "EARN"},
        "committed_at": "2026-03-02T09:00:00.000000Z",
        "nonce": "cd" * 16,
    }
    try:
        if spelling == "canonical":
            from ledger.canonical import canonical_bytes

            data = canonical_bytes(envelope)
        else:
            data = json.dumps(
                envelope,
                sort_keys=spelling != "unsorted",
                ensure_ascii=spelling == "ascii",
                separators=(", ", ": ") if spelling == "spaced" else (",", ":"),
            ).encode("utf-8", "surrogatepass")
    except (LedgerError, ValueError):
        return

    def accepts(check: object) -> bool:
        try:
            check(data)  # type: ignore[operator]
        except LedgerError:
            return False
        return True

    assert accepts(leaf_envelope) == accepts(parse_leaf)


@pytest.mark.parametrize(
    "member",
    [
        b'"a":1.5',
        b'"a":[1.0]',
        b'"a":[1,2E5]',
        b'"a":-0',
        b'"a":9007199254740991',
        b'"a":9007199254740992',
        b'"a":18446744073709551616',
        b'"a":1e2',
        b'"a":NaN',
        b'"a":"12:00.5 [1.5, 2e3]"',
        b'"a":' + b"[" * 70 + b"]" * 70,
        b'"a":' + b"[" * 40 + b"]" * 40,
        b'"a":{"b":1,"b":2}',
        b'"a":"\\u00e9"',
    ],
)
def test_the_fast_canonical_check_agrees_on_numbers_depth_and_escapes(member: bytes) -> None:
    """Hand-picked bytes where a codec's round trip could be fooled: floats that print back the
    same, integers past 2^53 and 2^64, negative zero, deep nesting, duplicate keys, escapes."""
    from audit.leafscan import leaf_envelope
    from ledger.errors import LedgerError
    from ledger.journal import parse_leaf

    data = (
        b'{"committed_at":"2026-03-02T09:00:00.000000Z","entry":{'
        + member
        + b',"kind":"EARN"},"index":3,"kind":"EARN","log":"x/log","nonce":"'
        + b"cd" * 16
        + b'","prev":"'
        + b"ab" * 32
        + b'","v":1}'
    )

    def accepts(check: object) -> bool:
        try:
            check(data)  # type: ignore[operator]
        except LedgerError:
            return False
        return True

    assert accepts(leaf_envelope) == accepts(parse_leaf)
