"""Release documents served to agents, kept in memory once read: they never change.

A deploy to N agents asks for the same manifest and envelope N times at
once; a release is addressed by its digest, so after the first read the
bytes come from here without a database transaction.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

__all__ = ["DocumentKind", "ReleaseDocuments"]

DocumentKind = Literal["manifest", "envelope"]
Load = Callable[[], tuple[bytes, bytes] | None]
"""Reads (manifest, envelope) of one release from the store; None when unknown."""


class ReleaseDocuments:
    """The (manifest, envelope) bytes of the most recently served releases."""

    def __init__(self, capacity: int = 16) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, tuple[bytes, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str, kind: DocumentKind, load: Load) -> bytes | None:
        """Return one document of release ``digest``, calling ``load`` on a miss."""
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                self._entries.move_to_end(digest)
        if entry is None:
            entry = load()
            if entry is None:
                return None
            with self._lock:
                self._entries[digest] = entry
                while len(self._entries) > self._capacity:
                    self._entries.popitem(last=False)
        return entry[0] if kind == "manifest" else entry[1]
