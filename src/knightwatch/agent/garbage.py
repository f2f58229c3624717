"""Garbage collection after a commit: release trees no deployment needs, blobs no tree uses.

A commit keeps ``current``, ``previous`` and the trees staged by later
deployments; every other tree was staged by an earlier deployment, and is
abandoned (deployments run one at a time, and one that kept its release made
it current). Blobs of the cache that no remaining tree's manifest names go
too — unless a manifest cannot be read, and then none does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from knightwatch.agent.events import event
from knightwatch.agent.journal import Journal
from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.staging import Stager
from knightwatch.errors import KnightwatchError

__all__ = ["collect_garbage", "remove_unused_blobs"]


async def collect_garbage(
    layout: NodeLayout, journal: Journal, stager: Stager, deployment_id: int
) -> None:
    """After ``deployment_id``'s commit: keep current, previous, later stagings; drop the rest."""
    state = journal.state
    keep = {d for d in (state.current, state.previous) if d}
    keep |= {d for d, n in state.staged_for.items() if n > deployment_id}
    doomed = [d for d in layout.release_digests() if d not in keep]
    for digest in doomed:
        try:
            await asyncio.to_thread(layout.remove_release, digest)
        except OSError as exc:
            event("gc-failed", digest=digest, detail=exc.strerror or str(exc))
    if doomed:
        journal.update(
            staged=[d for d in state.staged if d in keep],
            staged_for={d: n for d, n in state.staged_for.items() if d in keep},
        )
    removed = await asyncio.to_thread(remove_unused_blobs, layout, stager)
    event("gc", releases_removed=len(doomed), blobs_removed=removed)


def remove_unused_blobs(layout: NodeLayout, stager: Stager) -> int:
    """Remove the cached blobs no release tree on the node uses; return how many (blocking)."""
    used: set[str] = set()
    for digest in layout.release_digests():
        try:
            manifest = stager.load_manifest(digest)
        except KnightwatchError:
            return 0  # cannot tell what is in use: remove nothing
        used.update(f.digest for f in manifest.files if f.digest is not None)
    removed = 0
    with os.scandir(layout.blobs.blobs_dir) as prefixes:
        for prefix in prefixes:
            for name in os.listdir(prefix.path):
                if prefix.name + name not in used:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{prefix.path}/{name}")
                    removed += 1
    return removed
