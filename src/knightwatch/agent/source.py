"""Where the agent gets releases from: a narrow interface and its local backend.

A :class:`ReleaseSource` serves three things by digest: the canonical
manifest bytes, the DSSE envelope bytes, and blobs (from an offset, so an
interrupted download resumes). Nothing it serves is trusted: the stager
checks every digest and the signature. :class:`LocalReleaseSource` reads a
release store directory (as ``knightwatch bundle build`` writes it), e.g. a
disk carried to an air-gapped node; the HTTP backend talks to the control
plane (:mod:`knightwatch.agent.httpsource`).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from knightwatch.agent.errors import StagingError
from knightwatch.bundle.blobstore import BlobStore
from knightwatch.bundle.release_store import ENVELOPE_FILE, MANIFEST_FILE

__all__ = ["BlobStream", "LocalReleaseSource", "ReleaseSource"]

CHUNK = 1024 * 1024
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
MAX_ENVELOPE_BYTES = 1024 * 1024

BlobStream = tuple[int, Iterator[bytes]]
"""Where the served bytes start (the offset asked for, or 0 if the source restarts) and them."""


class ReleaseSource(ABC):
    """Serves releases by digest; every method raises StagingError naming what failed."""

    @abstractmethod
    def manifest(self, digest: str) -> bytes:
        """Return the manifest bytes of release ``digest`` (unverified)."""

    @abstractmethod
    def envelope(self, digest: str) -> bytes:
        """Return the DSSE envelope bytes of release ``digest`` (unverified)."""

    @abstractmethod
    def open_blob(self, digest: str, offset: int) -> AbstractContextManager[BlobStream]:
        """Open blob ``digest`` from byte ``offset``; yields (start, chunks).

        ``start`` is ``offset`` when the source honoured it, else 0 (the
        caller then discards what it had).
        """

    def open_blobs(self, digests: list[str]) -> AbstractContextManager[Iterator[bytes]] | None:
        """Open one framed stream (``protocol.blobstream``) of many blobs, or None.

        Sources for which one request per blob is cheap (a local disk) return
        None and the caller fetches blob by blob.
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, most sources hold nothing
        """Release connections and files (optional)."""

    def describe(self) -> str:
        """Name the source in messages."""
        return type(self).__name__


class LocalReleaseSource(ReleaseSource):
    """Releases from a release store directory on a local or mounted disk."""

    def __init__(self, store_root: Path) -> None:
        self.store_root = store_root
        self._blobs = BlobStore(store_root)

    def describe(self) -> str:
        """Name the store directory."""
        return os.fspath(self.store_root)

    def manifest(self, digest: str) -> bytes:
        """Read ``releases/<digest>/manifest.json`` of the store."""
        return self._read(self.store_root / "releases" / digest / MANIFEST_FILE, MAX_MANIFEST_BYTES)

    def envelope(self, digest: str) -> bytes:
        """Read ``releases/<digest>/release.dsse.json`` of the store."""
        return self._read(self.store_root / "releases" / digest / ENVELOPE_FILE, MAX_ENVELOPE_BYTES)

    def open_blob(self, digest: str, offset: int) -> AbstractContextManager[BlobStream]:
        """Open the blob file of the store at ``offset``."""
        return self._open_blob(digest, offset)

    @contextmanager
    def _open_blob(self, digest: str, offset: int) -> Iterator[BlobStream]:
        path = self._blobs.path_of(digest)
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise StagingError(
                f"blob {digest[:12]} cannot be read from {self.store_root}: {exc.strerror}",
                digest=digest,
            ) from exc
        with handle:
            handle.seek(offset)
            yield offset, iter(lambda: handle.read(CHUNK), b"")

    def _read(self, path: Path, limit: int) -> bytes:
        try:
            with path.open("rb") as handle:
                data = handle.read(limit + 1)
        except OSError as exc:
            raise StagingError(f"cannot read {path}: {exc.strerror}") from exc
        if len(data) > limit:
            raise StagingError(f"{path} is larger than {limit} bytes")
        return data
