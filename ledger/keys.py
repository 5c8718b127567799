"""The operator's log key on disk: created once, readable only by its owner.

The file holds the Go/C2SP ``PRIVATE+KEY+name+id+base64`` form of an Ed25519 note key, whose name is
the log origin. It is created with mode 0600 atomically (never world-readable, not even briefly),
and refused if it has become readable by others.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ledger.errors import LedgerError
from ledger.note import NoteSigner


class KeyFileError(LedgerError):
    code = "key-file"


def read_secret_file(path: Path) -> str:
    """The text of a secret file, refusing one that group or others may read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"no key at {path}; run `coalition init`") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600")
    return path.read_text(encoding="ascii").strip()


def write_secret_file(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start; never overwrite an existing key."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists already; refusing to overwrite a key") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text + "\n")


def load_key(path: Path) -> NoteSigner:
    """Read the log key from its file."""
    return NoteSigner.from_skey(read_secret_file(path))


def create_key(path: Path, origin: str) -> NoteSigner:
    """Generate a new log key named ``origin`` and write it to ``path`` (which must not exist)."""
    signer = NoteSigner.generate(origin)
    write_secret_file(path, signer.skey)
    return signer


def next_origin(origin: str) -> str:
    """The origin of the log that follows ``origin`` after a key rotation (``…/2``, ``…/3``)."""
    head, _, tail = origin.rpartition("/")
    if head and tail.isdigit():
        return f"{head}/{int(tail) + 1}"
    return f"{origin}/2"
