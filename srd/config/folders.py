"""Folder layout checks: no folder of srd's may feed another, and none may be a symlink."""

from __future__ import annotations

import os
from pathlib import Path

from srd.config.fields import Problems
from srd.config.schema import Config, Inbox
from srd.errors import ConfigError
from srd.fs.timebox import NoAnswer, timeboxed

_OUTPUT_FOLDERS = ("outbox", "failed", "archive")
# How long the folder layout check may take: it stats every configured folder, on shares too.
FOLDER_CHECK_S = 5.0


def _check_folders(inboxes: list[Inbox], state_dir: Path, problems: Problems) -> None:
    """Refuse layouts where output (or srd's own state) would be fed back as input forever, or where one of
    srd's folders would write into another (an output named like the journal, a failed input landing
    among outputs).

    Paths are compared with symlinks resolved, and folders that exist also by identity (st_dev, st_ino):
    an outbox reached through a link, or a bind mount of the state_dir, is the same folder all the same.
    """
    inside = _inside  # one rule for every pair below
    outputs = [(f"inboxes[{i}].{name}", name, getattr(inbox, name)) for i, inbox in enumerate(inboxes)
               for name in _OUTPUT_FOLDERS if getattr(inbox, name) is not None]
    for i, inbox in enumerate(inboxes):
        where = f"inboxes[{i}]"
        for name in _OUTPUT_FOLDERS:
            folder = getattr(inbox, name)
            for other in inboxes:
                if folder is not None and inside(folder, other.path):
                    problems.add(f"{where}.{name}",
                                 f"{folder} is inside inbox {other.path}: results would be reprocessed")
                if folder is not None and inside(other.path, folder):
                    problems.add(f"{where}.{name}", f"inbox {other.path} is inside {folder}")
        if inside(state_dir, inbox.path):
            problems.add("state_dir", f"{state_dir} is inside inbox {inbox.path}: its files would be taken as input")
        for j, other in enumerate(inboxes):
            if j != i and inside(inbox.path, other.path):
                problems.add(f"{where}.path", f"{inbox.path} overlaps inbox {other.path} (inboxes[{j}])")
    for k, (where, role, folder) in enumerate(outputs):
        if inside(state_dir, folder) or inside(folder, state_dir):
            problems.add("state_dir", f"{state_dir} overlaps {where} {folder}: an output could replace srd's ledger")
        for other_where, other_role, other in outputs[k + 1:]:
            shared = role == other_role and _inside(folder, other) and _inside(other, folder)
            if not shared and (inside(folder, other) or inside(other, folder)):
                problems.add(other_where, f"{other} overlaps {where} {folder}: one would write into the other")


def check_folders_timeboxed(inboxes: list[Inbox], state_dir: Path, problems: Problems) -> None:
    """`_check_folders`, given `FOLDER_CHECK_S`: its stats would wait forever on a share that stops
    answering, and a reload or `srd status` must not wait with it."""
    found = Problems()
    try:
        timeboxed(lambda: _check_folders(inboxes, state_dir, found), FOLDER_CHECK_S, "the configured folders")
    except NoAnswer as exc:
        problems.add("inboxes", f"{exc.strerror}: srd can't check that they don't overlap")
        return
    problems.items.extend(found.items)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _inside(child: Path, parent: Path) -> bool:
    """Whether `child` is `parent` or below it: by resolved path, or by the identity of a folder that exists
    (a bind mount shows one folder under two unrelated paths)."""
    child, parent = Path(os.path.realpath(child)), Path(os.path.realpath(parent))
    if child == parent or parent in child.parents:
        return True
    target = _identity(parent)
    return target is not None and any(_identity(folder) == target for folder in (child, *child.parents))


def check_real_folders(config: Config) -> None:
    """Refuse configured inbox, outbox, failed and archive folders that are symlinks.

    srd never follows a symlink at or below its folders (`srd.fs.safefs`), so such a folder could not be
    used. This is checked by ``srd config check`` and when the daemon starts, not by every config load:
    `srd status` must still work (and report the inbox unhealthy) when someone swaps a folder while srd runs.

    Raises:
        ConfigError: One line per symlinked folder.
    """
    problems = Problems()
    for i, inbox in enumerate(config.inboxes):
        for name in ("path", *_OUTPUT_FOLDERS):
            folder = getattr(inbox, name)
            if folder is not None and folder.is_symlink():
                problems.add(f"inboxes[{i}].{name}", f"{folder} is a symlink (to {os.path.realpath(folder)}): srd "
                                                     "never follows symlinks in its folders; configure the real folder")
    if problems.items:
        raise ConfigError(problems.items, config.source)
