"""The settlement package's error tree.

Every error settlement raises on purpose is a :class:`SettlementError`, itself a
:class:`~ledger.errors.LedgerError`: it carries machine fields, builds its own message and names a
stable ``code`` that the API maps to a problem type. None of them is a
:class:`~ledger.errors.BusinessRefusal`: a refused close or preparation writes nothing, so there is
nothing to commit.

Tree::

    SettlementError
    ├── InvalidPeriod             a malformed period label or bound; also InvalidRequest
    ├── PeriodNotOver             closing a period before its cut-off (plus the close delay)
    ├── PeriodNotIntegrated       entries booked before the cut-off are not in the log yet
    ├── NoCheckpoint              there is no signed checkpoint to cite
    ├── PeriodOutOfOrder          closing a period that is not the one after the last closed
    ├── EntriesBeforeFirstPeriod  the first close would leave earlier entries unsettled
    ├── PeriodNotClosed           statements of a period that is still open
    ├── PeriodClosed              recording into a period that is closed already
    ├── StatementsNotPrepared     reading, posting or verifying statements never prepared
    └── ControlTotalMismatch      Σ N_i ≠ margin + liability growth: the books do not reconcile
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ledger.errors import InvalidRequest, LedgerError


class SettlementError(LedgerError):
    """Base of every error the settlement package raises on purpose."""

    code = "settlement-error"


class InvalidPeriod(SettlementError, InvalidRequest):
    """A period label, kind or bound that names no settlement period."""

    code = "invalid-period"


class _PeriodError(SettlementError):
    """An error about one period, named by its label."""

    def __init__(self, message: str, period: str, **details: Any) -> None:
        super().__init__(message)
        self.period = period
        self.details = details

    def fields(self) -> dict[str, Any]:
        return {"period": self.period, **self.details}


class PeriodNotOver(_PeriodError):
    """A period can be closed only once its cut-off (and the close delay) has passed."""

    code = "period-not-over"

    def __init__(self, period: str, closable_from: datetime, now: datetime) -> None:
        super().__init__(
            f"period {period} can be closed from {_iso(closable_from)}, not at {_iso(now)}",
            period,
            closable_from=_iso(closable_from),
            now=_iso(now),
        )


class PeriodNotIntegrated(_PeriodError):
    """Entries booked before the cut-off wait in the integrator's queue: no checkpoint has them.

    Pass the integrator to :func:`~settlement.service.close_period`, or run it first.
    """

    code = "period-not-integrated"

    def __init__(self, period: str, waiting: int) -> None:
        super().__init__(
            f"{waiting} entries booked before the end of {period} are not in the log yet; "
            "run the integrator (or pass it to close_period)",
            period,
            waiting=waiting,
        )


class NoCheckpoint(_PeriodError):
    """The log has no signed checkpoint yet, so a close would cite nothing."""

    code = "no-checkpoint"

    def __init__(self, period: str) -> None:
        super().__init__(f"there is no signed checkpoint to close {period} on", period)


class PeriodOutOfOrder(_PeriodError):
    """Periods close one after another, with no gap and no overlap."""

    code = "period-out-of-order"

    def __init__(self, period: str, last_closed: str, expected_start: datetime) -> None:
        super().__init__(
            f"{period} does not follow the last closed period {last_closed}, which ends "
            f"{_iso(expected_start)}",
            period,
            last_closed=last_closed,
            expected_start=_iso(expected_start),
        )


class EntriesBeforeFirstPeriod(_PeriodError):
    """The first close must start early enough to settle every flow booked so far."""

    code = "entries-before-first-period"

    def __init__(self, period: str, earliest: datetime) -> None:
        super().__init__(
            f"{period} would be the first settled period, but flows were booked from "
            f"{_iso(earliest)}; close an earlier period first",
            period,
            earliest=_iso(earliest),
        )


class PeriodNotClosed(_PeriodError):
    """Statements are computed only over a closed period (a signed prefix of the log)."""

    code = "period-not-closed"

    def __init__(self, period: str) -> None:
        super().__init__(f"period {period} is not closed", period)


class PeriodClosed(_PeriodError):
    """Nothing is recorded into a closed period; late facts belong to the next open one."""

    code = "period-closed"

    def __init__(self, period: str, at: datetime) -> None:
        super().__init__(
            f"period {period} is closed: nothing can be recorded at {_iso(at)}",
            period,
            at=_iso(at),
        )


class StatementsNotPrepared(_PeriodError):
    """The statements of a closed period have not been prepared."""

    code = "statements-not-prepared"

    def __init__(self, period: str) -> None:
        super().__init__(f"the statements of {period} have not been prepared", period)


class ControlTotalMismatch(_PeriodError):
    """Σ N_i differs from operator margin + growth of the outstanding-points liability."""

    code = "control-total-mismatch"

    def __init__(self, period: str, expected: str, computed: str) -> None:
        super().__init__(
            f"control total of {period}: Σ N_i − carried in = {expected} €, but margin + "
            f"liability growth = {computed} €",
            period,
            expected=expected,
            computed=computed,
        )


def _iso(moment: datetime) -> str:
    return moment.isoformat()
