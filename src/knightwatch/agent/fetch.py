"""Filling the node's blob cache from a release source, resumably.

Missing blobs are first asked for in one framed stream
(:mod:`knightwatch.agent.bulk`); what that does not deliver is fetched blob
by blob. A blob is downloaded into ``ROOT/blobs/.partial/<digest>``, hashed
as it arrives, and published into the cache (mode 0444) by ``rename(2)``
only when its size and SHA-256 match. An interrupted download keeps its
partial file and resumes from its end next time (HTTP ``Range``); a blob
served with the wrong bytes is deleted and named in the error.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from knightwatch.agent.bulk import fetch_bulk
from knightwatch.agent.errors import AgentTransportError, StagingError
from knightwatch.agent.events import event
from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.source import ReleaseSource

__all__ = ["BlobFetcher", "StagingCancelledError"]

_ATTEMPTS = 3
_READ_CHUNK = 1024 * 1024


class StagingCancelledError(StagingError):
    """The agent is shutting down; the operation stopped between two steps."""


class BlobFetcher:
    """Downloads missing blobs into the cache, verifying each one."""

    def __init__(
        self,
        layout: NodeLayout,
        source: ReleaseSource,
        *,
        cancel: threading.Event | None = None,
        workers: int = 8,
    ) -> None:
        self.layout = layout
        self.source = source
        self.cancel = cancel or threading.Event()
        self.hashed_now: set[str] = set()
        self.workers = workers
        self._abort = threading.Event()

    def missing(self, wanted: Mapping[str, int]) -> dict[str, int]:
        """Return the blobs of ``wanted`` (digest → size) that are not in the cache."""
        blobs = self.layout.blobs
        return {d: n for d, n in wanted.items() if not os.path.isfile(blobs.path_text(d))}

    def ensure_all(self, wanted: Mapping[str, int]) -> int:
        """Fetch every missing blob of ``wanted`` (digest → size); return how many were fetched."""
        missing = self.missing(wanted)
        self.hashed_now = set(missing)  # every blob fetched below is hashed as it arrives
        if not missing:
            return 0
        fresh = {d: n for d, n in missing.items() if not (self.layout.partial_dir / d).exists()}
        if len(fresh) > 1:
            try:
                fetch_bulk(self.layout, self.source, fresh, self._check_stop)
            except AgentTransportError as exc:
                event("bulk-download-interrupted", detail=exc.message, action="per-blob")
        todo = sorted(self.missing(missing).items())
        if todo:
            self._each(todo)
        return len(missing)

    def _each(self, todo: list[tuple[str, int]]) -> None:
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="fetch") as pool:
            futures = [pool.submit(self.ensure, digest, size) for digest, size in todo]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f in done and f.exception() is not None]
            if failed:
                self._abort.set()
                for future in pending:
                    future.cancel()
                wait(pending)
                exc = failed[0].exception()
                assert exc is not None
                raise exc

    def ensure(self, digest: str, size: int) -> bool:
        """Make blob ``digest`` present in the cache; True if it had to be downloaded."""
        if self.layout.blobs.has(digest):
            return False
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                self._download(digest, size)
                return True
            except AgentTransportError as exc:
                if attempt == _ATTEMPTS or self._stopping():
                    raise StagingError(
                        f"blob {digest[:12]}… could not be downloaded: {exc.message}", digest=digest
                    ) from exc
        raise AssertionError("unreachable")

    def _download(self, digest: str, size: int) -> None:
        partial = self.layout.partial_dir / digest
        hasher, have = _resume_state(partial, size)
        if have < size or not os.path.exists(partial):
            hasher, have = self._stream(digest, size, partial, hasher, have)
        if have < size:
            raise AgentTransportError(f"the download ended after {have} of {size} bytes")
        actual = hasher.hexdigest()
        if have > size or actual != digest:
            partial.unlink(missing_ok=True)
            seen = f"more than {size} bytes" if have > size else f"sha256 {actual[:12]}…"
            raise StagingError(
                f"blob {digest[:12]}… served with wrong content ({seen})", digest=digest
            )
        os.chmod(partial, 0o444)
        self.layout.blobs.publish(partial, digest)

    def _stream(
        self, digest: str, size: int, partial: Path, hasher: hashlib._Hash, have: int
    ) -> tuple[hashlib._Hash, int]:
        self._check_stop(digest)
        with self.source.open_blob(digest, have) as (start, chunks):
            if start != have:
                hasher, have = hashlib.sha256(), 0
            with open(partial, "ab" if have else "wb") as out:
                for chunk in chunks:
                    self._check_stop(digest)
                    have += len(chunk)
                    if have > size:
                        break
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        return hasher, have

    def _stopping(self) -> bool:
        return self.cancel.is_set() or self._abort.is_set()

    def _check_stop(self, digest: str) -> None:
        """Raise StagingCancelledError when the agent stops or a sibling download failed."""
        if self.cancel.is_set():
            raise StagingCancelledError("stopped: the agent is shutting down", digest=digest)
        if self._abort.is_set():
            raise StagingCancelledError("stopped: another blob failed", digest=digest)


def _resume_state(partial: Path, size: int) -> tuple[hashlib._Hash, int]:
    """Hash what an earlier download left; start over if it is longer than the blob."""
    hasher = hashlib.sha256()
    try:
        with open(partial, "rb") as handle:
            have = 0
            while chunk := handle.read(_READ_CHUNK):
                hasher.update(chunk)
                have += len(chunk)
    except FileNotFoundError:
        return hasher, 0
    if have > size:
        os.unlink(partial)
        return hashlib.sha256(), 0
    return hasher, have
