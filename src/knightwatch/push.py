"""Pushing a release from a local bundle store to a control plane."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from knightwatch.bundle import ReleaseStore
from knightwatch.bundle.blobstore import BlobStore
from knightwatch.bundle.release_store import ENVELOPE_FILE, MANIFEST_FILE, SBOM_FILE
from knightwatch.client import ApiClient
from knightwatch.protocol import blob_header

__all__ = ["PushResult", "push_release"]

_BATCH_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class PushResult:
    """What a push sent."""

    release_id: str
    digest: str
    blobs_sent: int
    bytes_sent: int
    already_present: bool

    def to_json(self) -> dict[str, Any]:
        """Return the result as plain JSON data."""
        return asdict(self)


def push_release(
    client: ApiClient, store: Path, release: str, on_progress: Callable[[int], None] | None = None
) -> PushResult:
    """Upload ``release`` from ``store``: documents first, then missing blobs, then commit.

    The server verifies the signature before accepting any blob and every
    blob's digest as it arrives; nothing is visible until the commit.
    """
    releases = ReleaseStore(store)
    found = releases.find(release)
    docs = {
        key: base64.b64encode(found.read(name)).decode("ascii")
        for key, name in (
            ("manifest", MANIFEST_FILE),
            ("sbom", SBOM_FILE),
            ("envelope", ENVELOPE_FILE),
        )
    }
    ticket = client.post("/uploads", docs)
    if ticket["already_present"]:
        return PushResult(ticket["release_id"], ticket["digest"], 0, 0, True)
    sizes = {f.digest: f.size for f in found.manifest.files if f.digest}
    missing: list[str] = ticket["missing"]
    for batch in _batches(missing, sizes):
        client.put_stream(
            f"/uploads/{ticket['upload_id']}/blobs",
            _frames(releases.blobs, batch, sizes, on_progress),
        )
    client.post(f"/uploads/{ticket['upload_id']}/commit")
    return PushResult(
        ticket["release_id"], ticket["digest"], len(missing), sum(sizes[d] for d in missing), False
    )


def _batches(digests: list[str], sizes: dict[str, int]) -> Iterator[list[str]]:
    batch: list[str] = []
    total = 0
    for digest in digests:
        batch.append(digest)
        total += sizes[digest]
        if total >= _BATCH_BYTES:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def _frames(
    blobs: BlobStore,
    digests: list[str],
    sizes: dict[str, int],
    on_progress: Callable[[int], None] | None,
) -> Iterator[bytes]:
    for digest in digests:
        data = blobs.read(digest)
        yield blob_header(digest, len(data)) + data
        if on_progress is not None:
            on_progress(sizes[digest])
