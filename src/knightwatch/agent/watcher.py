"""Watching the active release tree (and ``current``) with inotify, through watchfiles.

Every change under the tree arrives as a :class:`WatchBatch` of relative
paths within ``step_ms`` of the last event (at most ``debounce_ms`` after the
first), so the auditor re-hashes just those paths at once.

inotify drops events when its queue overflows, and watchfiles does not pass
that on (its Rust side discards the overflow notice, which carries no path).
A batch of ``flood_paths`` or more paths is therefore reported as
``lost=True`` — a flood is when the queue overflows — and so is a watcher
that failed and had to be restarted; the auditor answers both with a full
re-check. Its periodic stat sweep catches whatever slips through anyway.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from watchfiles import awatch

__all__ = ["WatchBatch", "watch_current_link", "watch_tree"]


@dataclass(frozen=True)
class WatchBatch:
    """Paths (relative to the watched tree) that changed, and whether events may be lost."""

    paths: frozenset[str]
    lost: bool = False


async def watch_tree(
    tree: Path,
    *,
    debounce_ms: int = 400,
    step_ms: int = 50,
    flood_paths: int = 4096,
) -> AsyncIterator[WatchBatch]:
    """Yield the changes under ``tree`` (recursively) until cancelled."""
    top = os.path.realpath(tree)
    async for changes in awatch(
        top,
        watch_filter=None,  # the default filter hides __pycache__ and *.py[cod]: what we need
        debounce=debounce_ms,
        step=step_ms,
        recursive=True,
        ignore_permission_denied=True,
    ):
        paths = frozenset(_relative(path, top) for _change, path in changes)
        yield WatchBatch(paths, lost=len(changes) >= flood_paths)


async def watch_current_link(
    root: Path, *, debounce_ms: int = 200, step_ms: int = 250
) -> AsyncIterator[None]:
    """Yield whenever the ``current`` symlink in ``root`` is replaced, removed or created."""
    top = os.path.realpath(root)
    async for _changes in awatch(
        top,
        watch_filter=lambda _change, path: os.path.basename(path) == "current",
        debounce=debounce_ms,
        step=step_ms,
        recursive=False,
    ):
        yield None


def _relative(path: str, top: str) -> str:
    if path == top:
        return ""
    if path.startswith(top + os.sep):
        return path[len(top) + 1 :]
    return os.path.relpath(path, top)
