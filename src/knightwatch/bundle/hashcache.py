"""The build's hash cache: a source file whose stat has not moved keeps its digest.

Rebuilding an unchanged tree of a gigabyte re-read every byte. Like git's
index, the store keeps, for each source tree it built, every regular file's
stat key (size, device, inode, mtime, ctime — all in nanoseconds) and the
digest its bytes had, in ``STORE/cache/source-<id>.json``. The next build
takes the digest of a file whose stat key is unchanged and whose blob is
still in the store, and hashes the rest.

What is trusted, and why: any write through the filesystem moves a file's
ctime, which user space cannot set back, so an unchanged stat key means
unchanged bytes. Two cases are excluded as git excludes "racily clean"
entries: a file changed within ``RACY_NS`` before the build that hashed it
is not cached (timestamps come from a coarse clock, so a second write in the
same tick could leave the stat unchanged), and the cache is only a hint —
a missing, unreadable or malformed cache file means hashing everything.
``bundle build --rehash`` ignores the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["RACY_NS", "SourceHashCache", "SourceStat", "source_stat"]

SourceStat = tuple[int, int, int, int, int]
"""(size, device, inode, mtime_ns, ctime_ns) of a source file."""

RACY_NS = 2_000_000_000
"""Files changed this close before a build are hashed again next time (coarse timestamps)."""

_VERSION = 1


def source_stat(st: os.stat_result) -> SourceStat:
    """The stat key the cache compares."""
    return (st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


class SourceHashCache:
    """Digests of one source tree's files from its last build, keyed by relative path."""

    def __init__(self, store_root: Path, source: Path) -> None:
        tree_id = hashlib.sha256(os.fsencode(os.path.realpath(source))).hexdigest()[:24]
        self.file = store_root / "cache" / f"source-{tree_id}.json"
        self._entries: dict[str, tuple[SourceStat, str]] = {}

    def load(self) -> SourceHashCache:
        """Read the cache file; an absent or damaged one is an empty cache."""
        try:
            data = json.loads(self.file.read_bytes())
            if data.get("version") != _VERSION:
                return self
            self._entries = {
                path: (tuple(key), digest)
                for path, (key, digest) in data["files"].items()
                if len(key) == 5
                and all(isinstance(part, int) for part in key)
                and isinstance(digest, str)
                and len(digest) == 64
            }
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            self._entries = {}
        return self

    def digest(self, path: str, key: SourceStat) -> str | None:
        """The cached digest of ``path`` if its stat key is the one recorded."""
        cached = self._entries.get(path)
        return cached[1] if cached is not None and cached[0] == key else None

    def save(self, files: Iterable[tuple[str, SourceStat, str]], started_ns: int) -> None:
        """Record (path, stat key, digest) of this build; best effort, never fails the build."""
        settled = started_ns - RACY_NS
        entries = {
            path: [list(key), digest]
            for path, key, digest in files
            if key[3] < settled and key[4] < settled
        }
        if not entries:  # nothing settled to remember: no file, and no stale one either
            with contextlib.suppress(OSError):
                self.file.unlink(missing_ok=True)
                self.file.parent.rmdir()
            return
        payload = json.dumps({"version": _VERSION, "files": entries}, separators=(",", ":"))
        temp = self.file.with_name(f".{self.file.name}.{os.getpid()}")
        with contextlib.suppress(OSError):
            self.file.parent.mkdir(parents=True, exist_ok=True)
            temp.write_text(payload)
            os.replace(temp, self.file)
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self._entries)
