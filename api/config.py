"""Settings read from the environment — the only place the project reads it.

Every other package receives plain arguments built from a :class:`Settings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ledger.db import DEFAULT_URL

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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            database_url=env.get("COALITION_DATABASE_URL", DEFAULT_URL),
            database_role=env.get("COALITION_DATABASE_ROLE") or None,
            log_key_file=Path(env.get("COALITION_LOG_KEY_FILE", "coalition-log.key")),
            log_key=env.get("COALITION_LOG_KEY") or None,
            log_origin=env.get("COALITION_LOG_ORIGIN", DEFAULT_ORIGIN),
        )
