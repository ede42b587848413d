"""What goes wrong with a ledger: damage, a state directory that takes no writes, a newer srd's format."""

from __future__ import annotations

from srd.errors import SrdError, StateDirError

REPAIR_HINT = "run 'srd ledger check' to see what is wrong and 'srd ledger repair' to keep every intact record"


class LedgerError(SrdError):
    """The ledger's files are corrupt or inconsistent, or the journal can't be written durably.

    Loading never guesses: a damaged ledger is refused with a message naming the way out (``srd ledger
    check`` to see what is wrong, ``srd ledger repair`` to keep every intact record and drop the rest).
    """


class LedgerUnwritableError(LedgerError, StateDirError):
    """The state directory refused a write (full, read-only, no permission): nothing changed, and the same
    write can succeed once the storage takes writes again. `errno` says why."""

    def __init__(self, message: str, *, errno: int | None) -> None:
        super().__init__(message)
        self.errno = errno


class LedgerVersionError(SrdError):
    """The ledger was written by a newer srd, in a format this one can't read.

    Not damage: `check_ledger` and `repair_ledger` refuse it too, since a "repair" would set aside the history
    that the newer srd wrote and start this one without it.
    """
