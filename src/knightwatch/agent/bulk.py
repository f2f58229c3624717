"""Downloading many blobs in one framed stream (``protocol.blobstream``).

One HTTP request per small blob costs more than the blob, so the agent first
asks its source for every missing blob in one stream. Each blob is written
to its ``.partial`` file and hashed as it arrives; a blob whose size or
SHA-256 is wrong is deleted and refused by name. Verified blobs are flushed
with one ``syncfs`` and then published. If the stream breaks, whatever blob
was arriving keeps its partial file, and the per-blob path resumes it with
``Range``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

from knightwatch.agent.errors import AgentTransportError, StagingError
from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.source import ReleaseSource
from knightwatch.bundle.blobstore import sync_filesystem
from knightwatch.protocol.blobstream import BlobStart, BlobStreamError, BlobStreamWriter

__all__ = ["BATCH", "fetch_bulk"]

BATCH = 10_000
"""Blobs asked for per request (the server accepts far more; this bounds one retry)."""


@dataclass
class _Arrival:
    """One blob arriving into its ``.partial`` file (a BlobTarget)."""

    layout: NodeLayout
    digest: str
    handle: BinaryIO
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)

    def write(self, data: bytes) -> None:
        self.hasher.update(data)
        self.handle.write(data)

    def finish(self) -> None:
        self.handle.close()
        partial = self.layout.partial_dir / self.digest
        actual = self.hasher.hexdigest()
        if actual != self.digest:
            partial.unlink(missing_ok=True)
            raise StagingError(
                f"blob {self.digest[:12]}… served with wrong content (sha256 {actual[:12]}…)",
                digest=self.digest,
            )
        os.chmod(partial, 0o444)

    def discard(self) -> None:
        self.handle.close()  # the partial file stays: the per-blob path resumes it


def fetch_bulk(
    layout: NodeLayout,
    source: ReleaseSource,
    wanted: Mapping[str, int],
    check_stop: Callable[[str], None],
) -> int:
    """Fetch ``wanted`` (digest → size) through the source's framed stream; return blobs published.

    Return 0 without error when the source has no bulk transfer. Raise
    StagingError for a blob with wrong content, AgentTransportError when the
    stream breaks (blobs completed so far are kept).
    """
    digests = sorted(wanted)
    published = 0
    for start in range(0, len(digests), BATCH):
        batch = digests[start : start + BATCH]
        opened = source.open_blobs(batch)
        if opened is None:
            return published
        verified: list[str] = []
        try:
            with opened as chunks:
                _consume(layout, chunks, {d: wanted[d] for d in batch}, verified, check_stop)
        finally:
            published += _publish(layout, verified)
    return published


def _consume(
    layout: NodeLayout,
    chunks: Iterator[bytes],
    sizes: Mapping[str, int],
    verified: list[str],
    check_stop: Callable[[str], None],
) -> None:
    stream = BlobStreamWriter(lambda start: _begin(layout, start, sizes))
    try:
        for data in chunks:
            check_stop(stream.current_digest)
            stream.feed(data)
        stream.close()
    except BlobStreamError as exc:
        raise AgentTransportError(f"bulk blob stream: {exc}") from exc
    finally:
        verified.extend(stream.completed)
        stream.abandon()
    if len(verified) != len(sizes):
        raise AgentTransportError(f"bulk blob stream ended after {len(verified)} of {len(sizes)}")


def _begin(layout: NodeLayout, start: BlobStart, sizes: Mapping[str, int]) -> _Arrival:
    expected = sizes.get(start.digest)
    if expected is None:
        raise StagingError(f"bulk blob stream sent blob {start.digest[:12]}…, never asked for")
    if start.size != expected:
        raise StagingError(
            f"blob {start.digest[:12]}… served with wrong content "
            f"({start.size} bytes, the manifest says {expected})",
            digest=start.digest,
        )
    handle = (layout.partial_dir / start.digest).open("wb")
    return _Arrival(layout, start.digest, handle)


def _publish(layout: NodeLayout, digests: list[str]) -> int:
    if not digests:
        return 0
    sync_filesystem([layout.partial_dir])
    for digest in digests:
        layout.blobs.publish(layout.partial_dir / digest, digest)
    return len(digests)
