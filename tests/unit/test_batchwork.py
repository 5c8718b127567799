"""A batch command collects garbage less often, and leaves the interpreter as it found it."""

from __future__ import annotations

import gc

import pytest

from api.batchwork import collecting_less


def test_thresholds_are_raised_inside_and_restored_after_even_on_error() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), collecting_less():
        assert gc.get_threshold()[0] == 100_000 > before[0]
        raise RuntimeError("the command failed")
    assert gc.get_threshold() == before
