"""Choosing a file's output path under its inbox's collision policy (docs/design.md §4, "Outputs")."""

from __future__ import annotations

import os
from collections.abc import Set
from pathlib import Path, PurePosixPath

from srd.daemon.inboxes import InboxRuntime
from srd.executors.job import output_name
from srd.fs import safefs
from srd.fs.outputmark import marked_at
from srd.fs.sources import numbered_names
from srd.imaging.imageheader import sniff_format
from srd.imaging.imageio import output_format_for
from srd.ledger import Ledger


def choose_target(ledger: Ledger, runtime: InboxRuntime, rel: PurePosixPath, *, key: str | None, head: bytes,
                  in_flight: Set[Path], suffix: str | None = None) -> Path | None:
    """The output path for `rel` under the collision policy, or None to skip the file.

    A name srd wrote for this same source (or reserved for this job before a crash) is reused; a
    name srd wrote for another source is never overwritten; a name it didn't write follows the
    inbox's ``collision`` setting. `in_flight` holds the targets of the jobs submitted now.
    """
    out_dir = runtime.inbox.outbox / rel.parent
    # One walk down the outbox (made where missing) for all the names looked at, never through a symlink.
    with safefs.opened_dir(runtime.inbox.outbox, out_dir, create=True) as folder:
        return _pick(ledger, runtime, rel, folder, out_dir, key=key, head=head, in_flight=in_flight, suffix=suffix)


def _pick(ledger: Ledger, runtime: InboxRuntime, rel: PurePosixPath, folder: int, out_dir: Path, *, key: str | None,
          head: bytes, in_flight: Set[Path], suffix: str | None) -> Path | None:
    """`choose_target` in the output folder `out_dir`, open as `folder`."""
    requested = runtime.profile.output.format
    source_format = sniff_format(head)
    if suffix is not None:
        name = Path(rel.name).stem + suffix
    elif source_format is None:
        name = rel.name  # not an image: the job will fail; the name is never used
    else:
        written = output_format_for(source_format, requested, runtime.profile.output.fallback_format)
        name = output_name(rel.name, source_format, written, requested)
    reserved_by_starts = ledger.reserved_targets()
    claimed = reserved_by_starts.pop(key, None) if key else None
    if claimed is not None and key is not None:
        if _reserved_for(ledger, key, runtime, rel):
            if claimed.parent == out_dir and claimed not in in_flight:
                return claimed
        else:
            # The same content under another name (a copy made while a crash cut its job short): that name's
            # reservation stays its own.
            reserved_by_starts[key] = claimed
    claimed_elsewhere = set(reserved_by_starts.values())
    for candidate in numbered_names(out_dir, name):
        if candidate in in_flight or candidate in claimed_elsewhere:
            continue
        owner = ledger.owner(candidate)
        ours = (runtime.inbox_id, rel.as_posix())
        if owner is not None and (owner.inbox, owner.source) == ours:
            return candidate
        if owner is not None:
            continue
        try:
            os.stat(candidate.name, dir_fd=folder, follow_symlinks=False)
        except OSError:  # missing (or unusable: then the write says why)
            return candidate
        if marked_at(folder, candidate.name, candidate) == ours:  # srd wrote it for this source; its ledger forgot
            return candidate
        if runtime.inbox.collision == "overwrite":
            return candidate
        if runtime.inbox.collision == "skip":
            return None
    raise AssertionError("numbered_names never ends")


def _reserved_for(ledger: Ledger, key: str, runtime: InboxRuntime, rel: PurePosixPath) -> bool:
    """Whether the started entry under `key` (whose target is reserved) was started for this very source."""
    entry = ledger.get(key)
    return entry is not None and entry.inbox == runtime.inbox_id and entry.source == rel
