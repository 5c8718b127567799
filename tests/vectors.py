"""Loader for the published known-answer vectors in ``../shared/vectors`` beside the repository.

The files are read-only inputs (see their README); tests load them fresh, so no test can leak a
mutation into another.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"


def load_vector(name: str) -> dict[str, Any]:
    """The parsed JSON of vector file ``name`` (``"rfc6962-vectors"`` or with ``.json``)."""
    filename = name if name.endswith(".json") else f"{name}.json"
    with (VECTORS_DIR / filename).open(encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data
