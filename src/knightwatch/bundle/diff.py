"""Comparing two releases: files, components, and downstream impact.

A component "changed" when its version, its dependencies or any byte or
mode of its files changed. Its downstream impact is every component of the
newer release that depends on a changed one, transitively — what a change
reviewer must look at beyond the patch itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from knightwatch.bundle.manifest import FileEntry, Manifest, component_digest

__all__ = ["ReleaseDiff", "diff_releases", "downstream_of"]


@dataclass
class ReleaseDiff:
    """What differs between release A and release B."""

    a: str
    b: str
    files_added: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    files_changed: list[str] = field(default_factory=list)
    components_added: list[str] = field(default_factory=list)
    components_removed: list[str] = field(default_factory=list)
    components_changed: list[str] = field(default_factory=list)
    downstream: list[str] = field(default_factory=list)
    """Components of B that depend, transitively, on a changed or added one."""

    @property
    def identical(self) -> bool:
        """True when no file and no component differs."""
        return not (
            self.files_added
            or self.files_removed
            or self.files_changed
            or self.components_added
            or self.components_removed
            or self.components_changed
        )

    def to_json(self) -> dict[str, Any]:
        """Return the diff as plain JSON data."""
        return {**self.__dict__, "identical": self.identical}


def diff_releases(a: Manifest, b: Manifest) -> ReleaseDiff:
    """Compare release ``a`` (older) with release ``b`` (newer)."""
    diff = ReleaseDiff(a.release_id, b.release_id)
    files_a = {f.path: f for f in a.files}
    files_b = {f.path: f for f in b.files}
    diff.files_added = sorted(files_b.keys() - files_a.keys())
    diff.files_removed = sorted(files_a.keys() - files_b.keys())
    diff.files_changed = sorted(
        p for p in files_a.keys() & files_b.keys() if _content(files_a[p]) != _content(files_b[p])
    )
    fingerprints_a, fingerprints_b = _fingerprints(a), _fingerprints(b)
    diff.components_added = sorted(fingerprints_b.keys() - fingerprints_a.keys())
    diff.components_removed = sorted(fingerprints_a.keys() - fingerprints_b.keys())
    diff.components_changed = sorted(
        name
        for name in fingerprints_a.keys() & fingerprints_b.keys()
        if fingerprints_a[name] != fingerprints_b[name]
    )
    roots = set(diff.components_changed) | set(diff.components_added)
    diff.downstream = sorted(downstream_of(b, roots) - roots)
    return diff


def downstream_of(manifest: Manifest, changed: set[str]) -> set[str]:
    """Return ``changed`` plus every component that depends on one of them, transitively."""
    dependents: dict[str, set[str]] = {}
    for component in manifest.spec.component:
        for dep in component.depends_on:
            dependents.setdefault(dep, set()).add(component.name)
    seen = set(changed)
    frontier = list(changed)
    while frontier:
        for user in dependents.get(frontier.pop(), set()):
            if user not in seen:
                seen.add(user)
                frontier.append(user)
    return seen


def _content(entry: FileEntry) -> tuple[str | None, bool, str | None, str | None]:
    return entry.digest, entry.executable, entry.symlink, entry.component


def _fingerprints(manifest: Manifest) -> dict[str, tuple[str, tuple[str, ...], str]]:
    return {
        c.name: (
            c.version,
            tuple(sorted(c.depends_on)),
            component_digest(manifest.component_files(c.name)),
        )
        for c in manifest.spec.component
    }
