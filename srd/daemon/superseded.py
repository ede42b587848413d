"""A source's earlier outputs under other names, removed once its new output is in place.

srd replaces its own output of a source by writing the same name again. A new output under another name (the
output format changed with a later profile change, or a name someone else held was given back) would leave the
earlier one beside it for good, an outdated picture that looks current. So once the new output is recorded, each
other output the ledger says srd wrote for that source is removed, where it is still as srd wrote it: a regular
file, srd's mark on it naming that very source (on a filesystem that keeps no marks: of the size recorded).
Anything else there (a consumer's own file, a file a consumer replaced it with) is left alone. The ledger keeps
the name as the source's, proving nothing (an ``own`` record without a key), and drops the entry whose output it
was: that content is processed again if it comes back.
"""

from __future__ import annotations

import stat
from collections.abc import Set
from pathlib import Path, PurePosixPath

import structlog

from srd.fs import safefs
from srd.fs.outputmark import marked_for
from srd.ledger import Ledger, State

log = structlog.get_logger(__name__)


def remove_superseded(ledger: Ledger, outbox: Path, inbox_id: str, source: PurePosixPath, current: Path,
                      busy: Set[Path]) -> None:
    """Remove the outputs srd wrote for `source` before its `current` one (below `outbox`), except the targets
    of jobs in `busy` and anything no longer as srd wrote it."""
    earlier = {Path(output): key for output, key in ledger.outputs_of(inbox_id, source).items()
               if key is not None and Path(output) != current}
    if not earlier:
        return  # the common case: one output per source, written again under its name
    ours = (inbox_id, source.as_posix())
    marks_kept = marked_for(outbox, current) == ours
    reserved = set(ledger.reserved_targets().values())
    for output, key in earlier.items():
        if output in busy or output in reserved:
            continue
        entry = ledger.get(key)
        size = entry.output_size if entry is not None and entry.state == State.DONE else None
        if not _as_srd_wrote_it(outbox, output, ours, size, marks_kept):
            continue
        try:
            safefs.unlink(outbox, output)
        except (OSError, ValueError) as exc:
            log.warning("superseded_output_remove_failed", output=str(output), error=str(exc))
            continue
        ledger.record_output(output, inbox=inbox_id, source=source, key=None)
        log.info("superseded_output_removed", output=str(output), by=str(current), source=source.as_posix())


def _as_srd_wrote_it(outbox: Path, output: Path, ours: tuple[str, str], size: int | None, marks_kept: bool) -> bool:
    """Whether `output` is still the file srd wrote for the source `ours`: a regular file that carries srd's mark
    for it, or, where the filesystem keeps no marks (`marks_kept` false), one of the size recorded."""
    try:
        st = safefs.lstat(outbox, output)
    except (OSError, ValueError):
        return False  # gone (a consumer took it) or out of reach
    if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
        return False
    mark = marked_for(outbox, output)
    if mark is not None:
        return mark == ours
    return not marks_kept and size is not None
