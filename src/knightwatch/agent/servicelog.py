"""The service's output file, ``ROOT/logs/service.log``, rotated by size.

The service writes straight into the file (``O_APPEND``), not through a
pipe to the agent, so it keeps running and logging when the agent dies.
Rotation is therefore copy-then-truncate (logrotate's ``copytruncate``):
``service.log`` is copied to ``service.log.1`` (older copies shift up to
``.N``) and truncated; the service's next write lands at the new end. Lines
written between the copy and the truncation can be lost; a log is
diagnostics, not a journal.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

__all__ = ["ServiceLog"]


class ServiceLog:
    """A size-rotated log file the service appends to."""

    def __init__(self, path: Path, *, max_bytes: int = 10 * 1024 * 1024, backups: int = 3) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups

    def open_for_child(self) -> int:
        """Return a new append-only descriptor for the service's stdout and stderr."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def rotate_if_needed(self) -> bool:
        """Rotate when the file has grown past ``max_bytes``; True if it rotated."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return False
        if size <= self.max_bytes:
            return False
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        shutil.copyfile(self.path, self.path.with_name(f"{self.path.name}.1"))
        with self.path.open("r+b") as handle:
            handle.truncate(0)
        return True

    def tail(self, lines: int = 5) -> str:
        """Return the last ``lines`` lines of the log (for failure reasons), one line joined."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 4096))
                data = handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        kept = [line.strip() for line in data.splitlines() if line.strip()][-lines:]
        return " | ".join(kept)
