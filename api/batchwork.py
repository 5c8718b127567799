"""How the long batch commands (the demo, the verifier, the export, the integrator) run.

They allocate millions of short-lived objects (rows, records, parsed leaves) while keeping
hundreds of thousands alive, and with CPython's default thresholds the cycle collector rescans
the live ones again and again: a fifth of the demo's run, a third of reading entry records for
the live verifier. None of these objects form cycles worth collecting early, so a batch command
collects less often, and restores the interpreter's thresholds when it is done.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collecting_less() -> Iterator[None]:
    """Run the block with a young generation of 100,000 objects instead of 700."""
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 50, 1_000)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
