"""A batch command collects garbage less often, and leaves the interpreter as it found it."""

from __future__ import annotations

import gc

import pytest

from api.batchwork import collecting_less


def _fail_inside(seen: list[tuple[int, int, int]]) -> None:
    with collecting_less():
        seen.append(gc.get_threshold())
        raise RuntimeError("the command failed")


def test_thresholds_are_raised_inside_and_restored_after_even_on_error() -> None:
    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []
    with pytest.raises(RuntimeError):
        _fail_inside(seen)
    assert seen == [(100_000, 50, 1_000)]
    assert seen[0][0] > before[0]
    assert gc.get_threshold() == before
