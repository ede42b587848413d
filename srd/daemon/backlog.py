"""Settled files waiting to be considered, in order, each path at most once.

A reconcile scan hints every file not decided yet, so while the pool is busy each scan settles the
waiting files again: queued once per scan, the backlog (and `srd status`'s QUEUED) grew by the whole
waiting set every `reconcile_interval`. A path queued again keeps its place and takes the newer look.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from srd.daemon.settle import ReadyFile

Item = tuple[str, ReadyFile]  # (inbox id, the settled file)


class Backlog:
    """An ordered queue of (inbox id, settled file), keyed by the file's path."""

    def __init__(self) -> None:
        self._items: OrderedDict[Path, Item] = OrderedDict()

    def append(self, item: Item) -> None:
        """Queue at the back, or update in place a path already queued."""
        self._items[item[1].path] = item

    def appendleft(self, item: Item) -> None:
        """Queue at the front (a file to be decided now)."""
        self._items[item[1].path] = item
        self._items.move_to_end(item[1].path, last=False)

    def popleft(self) -> Item:
        return self._items.popitem(last=False)[1]

    def discard(self, path: Path) -> None:
        """Drop the path if it is queued (its file is gone)."""
        self._items.pop(path, None)

    def keep_only(self, wanted: Callable[[Item], bool]) -> None:
        """Drop the items `wanted` says no to (an inbox a reload removed)."""
        self._items = OrderedDict((path, item) for path, item in self._items.items() if wanted(item))

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self._items.values())
