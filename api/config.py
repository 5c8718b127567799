"""Settings read from the environment — the only place the project reads it.

Every other package receives plain arguments built from a :class:`Settings`.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ledger.db import DEFAULT_URL
from ledger.keys import KeyFileError, read_secret_file, write_secret_file
from partners.vault import MasterKey

DEFAULT_ORIGIN = "coalition.local/ledger"


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_URL
    """``COALITION_DATABASE_URL``: SQLite file in the working directory by default."""
    database_role: str | None = None
    """``COALITION_DATABASE_ROLE``: PostgreSQL role to ``SET ROLE`` to (e.g. coalition_app)."""
    log_key_file: Path = Path("coalition-log.key")
    """``COALITION_LOG_KEY_FILE``: the operator's Ed25519 log key, readable only by its owner."""
    log_key: str | None = None
    """``COALITION_LOG_KEY``: the log key itself (``PRIVATE+KEY+…``), instead of the file."""
    log_origin: str = DEFAULT_ORIGIN
    """``COALITION_LOG_ORIGIN``: origin (and key name) of a new log."""
    master_key_file: Path = Path("coalition-master.key")
    """``COALITION_MASTER_KEY_FILE``: the vault's master key as ``id:base64``, mode 600."""
    master_key: str | None = None
    """``COALITION_MASTER_KEY``: the master key itself (``id:base64``), instead of the file."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            database_url=env.get("COALITION_DATABASE_URL", DEFAULT_URL),
            database_role=env.get("COALITION_DATABASE_ROLE") or None,
            log_key_file=Path(env.get("COALITION_LOG_KEY_FILE", "coalition-log.key")),
            log_key=env.get("COALITION_LOG_KEY") or None,
            log_origin=env.get("COALITION_LOG_ORIGIN", DEFAULT_ORIGIN),
            master_key_file=Path(env.get("COALITION_MASTER_KEY_FILE", "coalition-master.key")),
            master_key=env.get("COALITION_MASTER_KEY") or None,
        )

    def vault_key(self, *, create: bool = False) -> MasterKey | None:
        """The vault's master key from the environment or its file (created on request)."""
        text = self.master_key
        if text is None and self.master_key_file.exists():
            text = read_secret_file(self.master_key_file)
        if text is None:
            if not create:
                return None
            key = MasterKey.generate("master-1")
            write_secret_file(self.master_key_file, format_master_key(key))
            return key
        return parse_master_key(text)


def format_master_key(key: MasterKey) -> str:
    return f"{key.key_id}:{base64.b64encode(key.secret).decode()}"


def parse_master_key(text: str) -> MasterKey:
    key_id, _, encoded = text.strip().partition(":")
    try:
        secret = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise KeyFileError("the master key must be written as id:base64") from None
    return MasterKey(key_id, secret)
