"""A partner's witness: C2SP tlog-witness ``add-checkpoint``, cosigning only consistent checkpoints.

A witness runs at a partner (or an auditor), away from the operator's database, with its own
Ed25519 ``cosignature/v1`` key (docs/VERIFYING.md §5.5). It is configured with the verifier key of
each log it watches and keeps, per log, the last checkpoint it cosigned: (origin, size, root). For
each ``add-checkpoint`` request (c2sp.org/tlog-witness) it:

1. parses the body: ``old <size>``, up to 63 base64 consistency-proof hashes, a blank line, the
   signed checkpoint note (malformed: 400);
2. picks the log by the note's first line and verifies the note with that log's key only
   (unknown origin: 404; no valid signature from the log's key: 403) — only then reads the text;
3. checks ``old`` is not above the checkpoint's size (400) and equals the size it stored (409, with
   its stored size in the body, so the client can retry with the right proof);
4. at the same size, refuses any other root (409: a fork); otherwise verifies the RFC 6962
   consistency proof from its stored (size, root) to the new one (422); a rollback to a smaller
   size can never pass 3.;
5. cosigns, and records the new state durably *before* answering.

Steps 3 to 5 run inside one ``BEGIN IMMEDIATE`` transaction of the state file, so two concurrent
requests (threads or processes) cannot roll the state back (the race the spec describes).

The state is a small SQLite file of its own (``synchronous=FULL``: a commit is on disk when it
returns), holding the witness's name, the path of its key file, the trusted log keys and the last
cosigned checkpoint of each log, signed note included, as evidence.
"""

from __future__ import annotations

import base64
import binascii
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from ledger import merkle
from ledger.errors import ProofError, SignatureError
from ledger.keys import read_secret_file, write_secret_file
from ledger.note import (
    Checkpoint,
    CosignatureSigner,
    NoteVerifier,
    SignedNote,
    parse_note,
    verify_note,
)

__all__ = [
    "MAX_BODY",
    "MAX_PROOF_LINES",
    "SIZE_CONTENT_TYPE",
    "AddCheckpoint",
    "Latest",
    "Witness",
    "WitnessRefusal",
    "WitnessState",
    "build_request",
    "check_extension",
    "create_witness",
    "load_witness",
    "parse_request",
]

#: tlog-witness: a client MUST NOT send more than 63 consistency proof lines.
MAX_PROOF_LINES = 63
#: A generous bound on a request body: 64 proof lines and a note of 100 signature lines fit.
MAX_BODY = 64 * 1024
#: Content type of a 409 body: the witness's latest cosigned size, in decimal, and a newline.
SIZE_CONTENT_TYPE = "text/x.tlog.size"

_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")
_MAX_TREE_SIZE = 2**64 - 1


class WitnessRefusal(AuditError):
    """The witness refuses to cosign; ``status`` is the tlog-witness HTTP status.

    For a 409, ``latest_size`` is the size of the last checkpoint the witness cosigned for the log.
    """

    code = "witness-refusal"

    def __init__(self, status: int, message: str, latest_size: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.latest_size = latest_size

    def fields(self) -> dict[str, Any]:
        return {"status": self.status, "latest_size": self.latest_size}


# --- The request --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddCheckpoint:
    """A parsed ``add-checkpoint`` body; nothing in ``note`` is trusted yet."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str


def build_request(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    """The ``add-checkpoint`` body: ``old N``, base64 proof lines, a blank line, the note."""
    lines = [f"old {old_size}\n"]
    lines += [base64.b64encode(h).decode("ascii") + "\n" for h in proof]
    return ("".join(lines) + "\n" + note).encode("utf-8")


def parse_request(body: bytes) -> AddCheckpoint:
    """Parse an ``add-checkpoint`` body; any malformation is a 400."""
    if len(body) > MAX_BODY:
        raise WitnessRefusal(400, f"request body is larger than {MAX_BODY} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WitnessRefusal(400, "request body is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise WitnessRefusal(400, "request has no blank line before the checkpoint")
    old_line, *proof_lines = head.split("\n")
    keyword, _, size = old_line.partition(" ")
    if keyword != "old" or not _SIZE.fullmatch(size) or int(size) > _MAX_TREE_SIZE:
        raise WitnessRefusal(400, "the first line must be 'old <size>' in canonical decimal")
    if len(proof_lines) > MAX_PROOF_LINES:
        raise WitnessRefusal(400, f"more than {MAX_PROOF_LINES} consistency proof lines")
    return AddCheckpoint(int(size), tuple(_proof_hash(line) for line in proof_lines), note)


def _proof_hash(line: str) -> bytes:
    try:
        data = base64.b64decode(line.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise WitnessRefusal(400, "a consistency proof line is not base64") from None
    if len(data) != 32 or base64.b64encode(data).decode("ascii") != line:
        raise WitnessRefusal(400, "a consistency proof line is not the base64 of 32 bytes")
    return data


# --- The decision -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latest:
    """The last checkpoint a witness cosigned for one log."""

    origin: str
    size: int
    root: bytes
    note: str
    cosigned_at: datetime


def open_submitted(note: str, logs: dict[str, list[NoteVerifier]]) -> tuple[Checkpoint, SignedNote]:
    """Verify the submitted note with its log's key, then parse it (signature first, text second).

    The first line of the unverified text only chooses the keyring; the origin is then checked
    again on the verified text.
    """
    try:
        unverified = parse_note(note)
    except SignatureError as exc:
        raise WitnessRefusal(400, f"malformed checkpoint note: {exc.message}") from None
    origin = unverified.text.split("\n", 1)[0]
    keys = logs.get(origin)
    if not keys:
        raise WitnessRefusal(404, f"unknown log {origin!r}")
    try:
        signed = verify_note(unverified, keys)
    except SignatureError as exc:
        raise WitnessRefusal(403, f"checkpoint is not signed by the log: {exc.message}") from None
    try:
        checkpoint = Checkpoint.parse(signed.text)
    except SignatureError as exc:
        raise WitnessRefusal(400, f"malformed checkpoint: {exc.message}") from None
    if checkpoint.origin != origin or any(name != origin for name in signed.verified_by):
        raise WitnessRefusal(403, "checkpoint is not signed by its own log's key")
    return checkpoint, signed


def check_extension(request: AddCheckpoint, checkpoint: Checkpoint, latest: Latest | None) -> None:
    """Refuse unless ``checkpoint`` extends ``latest`` as the request's proof shows.

    The pure heart of the witness: no key, no clock, no storage.
    """
    stored = latest.size if latest is not None else 0
    if request.old_size > checkpoint.size:
        raise WitnessRefusal(
            400, f"old size {request.old_size} is larger than the checkpoint's {checkpoint.size}"
        )
    if request.old_size != stored:
        raise WitnessRefusal(
            409, f"old size {request.old_size} is not the last cosigned size {stored}", stored
        )
    if latest is None or request.old_size == 0:
        # Nothing cosigned yet, or only the empty tree: every tree extends it.
        if request.proof:
            raise WitnessRefusal(422, "the consistency proof from size 0 must be empty")
        return
    if checkpoint.size == latest.size:
        if checkpoint.root != latest.root:
            raise WitnessRefusal(
                409, f"fork: another root at the cosigned size {latest.size}", latest.size
            )
        if request.proof:
            raise WitnessRefusal(422, "the consistency proof between equal sizes must be empty")
        return
    try:
        merkle.verify_consistency(
            latest.size, checkpoint.size, list(request.proof), latest.root, checkpoint.root
        )
    except ProofError as exc:
        raise WitnessRefusal(
            422, f"consistency proof from {latest.size} to {checkpoint.size}: {exc.message}"
        ) from None


# --- Durable state ------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS config (
    name TEXT NOT NULL,
    key_file TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS log_keys (
    origin TEXT NOT NULL,
    vkey TEXT NOT NULL PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS latest (
    origin TEXT NOT NULL PRIMARY KEY,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    cosigned_at TEXT NOT NULL
);
"""


class WitnessState:
    """The witness's SQLite state file; each call opens its own connection (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT: one writer at a time, durable once the block ends."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def create(self, name: str, key_file: Path, log_keys: Iterable[NoteVerifier]) -> None:
        """Initialise a new state file; refuse to touch an existing one."""
        if self.path.exists():
            raise AuditError(f"{self.path} exists already; refusing to overwrite witness state")
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO config (name, key_file, created_at) VALUES (?, ?, ?)",
                (name, str(key_file), datetime.now(UTC).isoformat()),
            )
            conn.executemany(
                "INSERT INTO log_keys (origin, vkey) VALUES (?, ?)",
                [(key.name, key.vkey) for key in log_keys],
            )

    def config(self) -> tuple[str, Path]:
        """The witness's name and key file."""
        if not self.path.exists():
            raise AuditError(f"no witness state at {self.path}; run `coalition witness init`")
        with self._connect() as conn:
            row = conn.execute("SELECT name, key_file FROM config").fetchone()
        if row is None:
            raise AuditError(f"{self.path} is not a witness state file")
        return row[0], Path(row[1])

    def log_keys(self) -> dict[str, list[NoteVerifier]]:
        """The trusted log keys, by origin."""
        with self._connect() as conn:
            rows = conn.execute("SELECT origin, vkey FROM log_keys ORDER BY origin").fetchall()
        keys: dict[str, list[NoteVerifier]] = {}
        for origin, vkey in rows:
            keys.setdefault(origin, []).append(NoteVerifier.from_vkey(vkey))
        return keys

    def latest(self, origin: str, conn: sqlite3.Connection | None = None) -> Latest | None:
        """The last checkpoint cosigned for ``origin``, if any."""
        if conn is None:
            with self._connect() as own:
                return self.latest(origin, own)
        row = conn.execute(
            "SELECT origin, size, root, note, cosigned_at FROM latest WHERE origin = ?", (origin,)
        ).fetchone()
        if row is None:
            return None
        return Latest(row[0], int(row[1]), bytes(row[2]), row[3], datetime.fromisoformat(row[4]))

    @staticmethod
    def record(conn: sqlite3.Connection, latest: Latest) -> None:
        conn.execute(
            "INSERT INTO latest (origin, size, root, note, cosigned_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (origin) DO UPDATE SET size = excluded.size, root = excluded.root, "
            "note = excluded.note, cosigned_at = excluded.cosigned_at",
            (latest.origin, latest.size, latest.root, latest.note, latest.cosigned_at.isoformat()),
        )


# --- The witness --------------------------------------------------------------------------------


class Witness:
    """A witness: its cosignature key, the logs it watches, and its state file."""

    def __init__(
        self,
        signer: CosignatureSigner,
        state: WitnessState,
        logs: dict[str, list[NoteVerifier]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signer = signer
        self.state = state
        self.logs = logs if logs is not None else state.log_keys()
        self.clock = clock

    @property
    def vkey(self) -> str:
        return self.signer.vkey

    def add_checkpoint(self, body: bytes) -> str:
        """Handle one ``add-checkpoint`` body: the cosignature line(s), or WitnessRefusal."""
        request = parse_request(body)
        checkpoint, signed = open_submitted(request.note, self.logs)
        with self.state.transaction() as conn:
            latest = self.state.latest(checkpoint.origin, conn)
            check_extension(request, checkpoint, latest)
            timestamp = int(self.clock())
            line = self.signer.cosign(signed.text, timestamp)
            self.state.record(
                conn,
                Latest(
                    checkpoint.origin,
                    checkpoint.size,
                    checkpoint.root,
                    request.note,
                    datetime.fromtimestamp(timestamp, UTC),
                ),
            )
        return line  # only once the new state is committed (synchronous=FULL: on disk)


def create_witness(
    state_path: Path, name: str, log_keys: Iterable[NoteVerifier], key_file: Path | None = None
) -> Witness:
    """A new witness: a fresh key in ``key_file`` (mode 600) and a new state file."""
    state = WitnessState(state_path)
    key_file = key_file or state_path.with_name(state_path.name + ".key")
    keys = list(log_keys)
    if not keys:
        raise AuditError("a witness needs at least one log key to watch")
    if state.path.exists():
        raise AuditError(f"{state.path} exists already; refusing to overwrite witness state")
    signer = CosignatureSigner.generate(name)
    write_secret_file(key_file, signer.skey)
    state.create(name, key_file.resolve(), keys)
    return Witness(signer, state)


def load_witness(state_path: Path, clock: Callable[[], float] = time.time) -> Witness:
    """The witness whose state file is ``state_path`` (its key file is named there)."""
    state = WitnessState(state_path)
    name, key_file = state.config()
    signer = CosignatureSigner.from_skey(read_secret_file(key_file))
    if signer.name != name:
        raise AuditError(f"{key_file} holds the key of {signer.name!r}, not of witness {name!r}")
    return Witness(signer, state, clock=clock)
