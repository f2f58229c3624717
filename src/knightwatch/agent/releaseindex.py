"""What a release's tree must hold, and what one look at a tree found.

:class:`ReleaseIndex` indexes a manifest (plus the data_dirs links the agent
made) for path lookups; :class:`Inspection` collects the findings, stat keys
and hashing totals of one comparison (:mod:`knightwatch.agent.treecompare`).
A path's :func:`stat_key` changes whenever the path is touched, which is how
the continuous audit tells which paths to look at again.
"""

from __future__ import annotations

import bisect
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field

from knightwatch.bundle.manifest import FileEntry, Manifest
from knightwatch.protocol.audit import Finding, FindingKind, Severity

__all__ = ["Inspection", "ReleaseIndex", "StatKey", "stat_key"]

StatKey = tuple[int, int, int, int, int, int]
"""(mode, size, device, inode, mtime_ns, ctime_ns): changes whenever a path is touched."""


def stat_key(st: os.stat_result) -> StatKey:
    """Return what a later look compares to tell that a path may have changed."""
    return (st.st_mode, st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


class ReleaseIndex:
    """What a release's tree must hold, indexed for path lookups."""

    def __init__(self, manifest: Manifest, data_links: Mapping[str, str]) -> None:
        self.manifest = manifest
        self.files: dict[str, FileEntry] = {f.path: f for f in manifest.files}
        self.data_links = dict(data_links)
        self.dirs = _parents([*self.files, *self.data_links])
        self._sorted = sorted({*self.files, *self.data_links, *self.dirs})

    @property
    def digest(self) -> str:
        """The release digest."""
        return self.manifest.digest

    def expected_under(self, rel: str) -> list[str]:
        """Every expected path that is ``rel`` or lies below it."""
        if rel == "":
            return list(self._sorted)
        start = bisect.bisect_left(self._sorted, rel)
        found = []
        for path in self._sorted[start:]:
            if path != rel and not path.startswith(rel + "/"):
                if path > rel + "/":
                    break
                continue
            found.append(path)
        return found

    def in_data_dir(self, rel: str) -> bool:
        """True for a path below one of the service's data_dirs links (not audited)."""
        return any(rel.startswith(link + "/") for link in self.data_links)


@dataclass
class Inspection:
    """What one look at (part of) a tree found."""

    checked: set[str] = field(default_factory=set)
    """Every path looked at (a path here without findings is exact)."""
    findings: dict[str, list[Finding]] = field(default_factory=dict)
    stats: dict[str, StatKey] = field(default_factory=dict)
    """The stat key of every checked path that exists."""
    corrupt: set[str] = field(default_factory=set)
    """Digests of blobs whose bytes were seen wrong (a cached blob may share the inode)."""
    files_hashed: int = 0
    bytes_hashed: int = 0
    verified: list[tuple[StatKey, str]] = field(default_factory=list)
    """(stat key before hashing, digest) of every file hashed and found right: hash proofs."""

    def all_findings(self) -> list[Finding]:
        """Every finding, sorted by path."""
        return [f for path in sorted(self.findings) for f in self.findings[path]]

    def add(self, rel: str, finding: Finding) -> None:
        """Record a finding for ``rel``."""
        self.findings.setdefault(rel, []).append(finding)

    def flag(
        self,
        rel: str,
        *,
        kind: FindingKind,
        severity: Severity,
        detail: str,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        """Record a finding about the path ``rel`` itself."""
        finding = Finding(
            kind=kind, severity=severity, detail=detail, path=rel, expected=expected, actual=actual
        )
        self.add(rel, finding)


def _parents(paths: list[str]) -> set[str]:
    parents: set[str] = set()
    for path in paths:
        parent = posixpath.dirname(path)
        while parent:
            parents.add(parent)
            parent = posixpath.dirname(parent)
    return parents
