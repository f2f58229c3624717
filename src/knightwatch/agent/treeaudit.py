"""The physical audit of the active release's tree: its index, the findings per path, sweeps.

A :class:`TreeAudit` follows one release at a time. It keeps what the tree
must hold (a :class:`~knightwatch.agent.releaseindex.ReleaseIndex`), the
findings of every path it looked at and each path's stat key, and looks
again in three ways:

- :meth:`TreeAudit.recheck` — the paths a file watcher named, and below,
  hashed whatever the hash proofs say;
- :meth:`TreeAudit.sweep_changed` — every path whose stat key changed since
  it was last looked at (:func:`changed_paths`: what inotify lost), hashed
  unless a hash proof still holds (a ctime moved by the agent's own link);
- :meth:`TreeAudit.sweep` — the whole tree re-hashed, no proof trusted (on a
  schedule, after lost events, and for an operator's audit).

A newly followed release is checked in full with the hash proofs staging left
(:mod:`knightwatch.agent.proofs`), so a deploy does not hash its tree twice.

It holds no lock of its own: the :class:`~knightwatch.agent.auditor.Auditor`
serialises the calls (and holds them while a command switches releases).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from knightwatch.agent.events import event
from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.releaseindex import Inspection, ReleaseIndex, StatKey, stat_key
from knightwatch.agent.staging import Stager, data_links
from knightwatch.agent.treecompare import inspect_paths
from knightwatch.clock import Clock
from knightwatch.errors import KnightwatchError
from knightwatch.protocol.audit import AbsentPath, Finding, FindingKind, Severity

__all__ = ["TreeAudit", "changed_paths"]

K, V = FindingKind, Severity


class TreeAudit:
    """The active release's tree compared with its manifest, kept up to date path by path."""

    def __init__(self, *, layout: NodeLayout, stager: Stager, clock: Clock) -> None:
        self._layout = layout
        self._stager = stager
        self._clock = clock
        self.index: ReleaseIndex | None = None
        """What the followed release's tree must hold (None: no release, or no manifest)."""
        self.last_sweep: datetime | None = None
        """When every file of the tree was last checked (hashed, or its hash proof held)."""
        self.load_error: Finding | None = None
        """Why the followed release's manifest could not be read (cleared by the next load)."""
        self._tree_id: tuple[int, int] | None = None
        self._files: dict[str, list[Finding]] = {}
        self._stats: dict[str, StatKey] = {}

    @property
    def digest(self) -> str | None:
        """The release followed (None if none, or its manifest could not be read)."""
        return self.index.digest if self.index else None

    @property
    def release_dir(self) -> Path | None:
        """The directory of the release followed."""
        return self._layout.release_dir(self.index.digest) if self.index else None

    def findings(self) -> list[Finding]:
        """Every finding of the tree as of now, the manifest's load error first."""
        files = [f for found in self._files.values() for f in found]
        return [self.load_error, *files] if self.load_error else files

    def follows(self, digest: str | None) -> bool:
        """Whether ``digest``'s tree, as it is on disk now, is the one followed."""
        tree_id = _tree_id(self._layout.release_dir(digest)) if digest else None
        return digest == self.digest and tree_id == self._tree_id

    async def load(self, digest: str | None) -> None:
        """Follow ``digest`` (None: nothing): index it and check its whole tree."""
        self._files, self._stats = {}, {}
        self.load_error = None  # a manifest that loads now proves an earlier failure stale
        self._tree_id = _tree_id(self._layout.release_dir(digest)) if digest else None
        self.index = self._load_index(digest) if digest else None
        if self.index is not None:
            await self.recheck([""], trust=True)
            self.last_sweep = self._clock.now()

    async def recheck(self, paths: Iterable[str], *, trust: bool = False) -> Inspection | None:
        """Re-inspect ``paths`` (and below) and replace their findings; None if no tree.

        Every file is hashed unless ``trust`` is set and its hash proof holds;
        what is hashed replaces the proofs of those inodes.
        """
        if self.index is None:
            return None
        tree = self._layout.release_dir(self.index.digest)
        proofs = self._stager.proofs
        proven = proofs.snapshot() if trust else None
        inspection = await asyncio.to_thread(
            inspect_paths, tree, self.index, list(paths), proven=proven
        )
        if not trust:
            proofs.forget((key[2], key[3]) for key in inspection.stats.values())
        proofs.record(inspection.verified)
        for rel in inspection.checked:
            self._files.pop(rel, None)
            self._stats.pop(rel, None)
        self._files.update(inspection.findings)
        self._stats.update(inspection.stats)
        return inspection

    async def sweep(self) -> Inspection | None:
        """Re-hash the whole tree; forget what was found on paths no longer there."""
        stale = set(self._files) | set(self._stats)
        inspection = await self.recheck([""])
        if inspection is None:
            return None
        for rel in stale - inspection.checked:
            self._files.pop(rel, None)
            self._stats.pop(rel, None)
        self.last_sweep = self._clock.now()
        return inspection

    async def sweep_changed(self) -> list[str]:
        """Re-check every path whose stat changed since it was last inspected; return them."""
        if self.index is None:
            return []
        tree = self._layout.release_dir(self.index.digest)
        changed = await asyncio.to_thread(changed_paths, tree, self._stats)
        if changed:
            event("audit-stat-changes", paths=len(changed))
            await self.recheck(changed, trust=True)
        return changed

    def forget_proofs(self) -> None:
        """Trust no hash proof from now on (the watch lost events or failed)."""
        self._stager.proofs.forget_all()

    def retired_present(self, absent: list[AbsentPath]) -> list[Finding]:
        """A finding for each path of a retired component still present in the tree."""
        if self.index is None:
            return []
        tree = self._layout.release_dir(self.index.digest)
        return [
            Finding(
                kind=K.RETIRED_PRESENT,
                severity=V.CRITICAL,
                path=item.path,
                detail=f"{item.path}: belongs to the retired component "
                f"{item.component}, still present",
            )
            for item in absent
            if os.path.lexists(tree / item.path)
        ]

    def _load_index(self, digest: str) -> ReleaseIndex | None:
        try:
            manifest = self._stager.load_manifest(digest)
        except KnightwatchError as exc:
            self.load_error = Finding(
                kind=K.AUDIT_ERROR, severity=V.WARNING, detail=exc.message[:2000]
            )
            return None
        return ReleaseIndex(manifest, data_links(self._layout, manifest))


def _tree_id(tree: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(tree)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def changed_paths(tree: Path, known: dict[str, StatKey]) -> list[str]:
    """Paths whose stat differs from ``known``, plus paths that appeared or vanished."""
    changed: list[str] = []
    seen: set[str] = set()
    for directory, subdirs, files in os.walk(tree):
        rel_dir = os.path.relpath(directory, tree)
        for name in [*subdirs, *files]:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            seen.add(rel)
            try:
                key = stat_key(os.lstat(os.path.join(directory, name)))
            except OSError:
                changed.append(rel)
                continue
            if known.get(rel) != key:
                changed.append(rel)
    changed.extend(rel for rel in known if rel not in seen)
    return changed
