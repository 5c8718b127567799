"""The C twins of the bundle verifier's hot loops (``audit/_native.c``), when they were built.

``setup.py`` builds them at install time where a C compiler and OpenSSL's headers are found;
elsewhere the install goes on without them, and every caller runs its Python version, which
gives the same results (tests/unit/test_leafscan.py holds each pair to that). :data:`NATIVE` is
the module, or None: also when it was built from other sources than these (a stale build left
in a working tree), since its functions' arguments may differ.
"""

from __future__ import annotations

from types import ModuleType

#: The version of the functions' arguments and results this code expects (``INTERFACE`` in C).
INTERFACE = 4


def _load() -> ModuleType | None:
    try:
        from audit import _native
    except ImportError:
        return None
    return _native if getattr(_native, "INTERFACE", None) == INTERFACE else None


NATIVE = _load()
