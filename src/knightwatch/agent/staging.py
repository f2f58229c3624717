"""Staging a release: fetch, verify, build its tree beside the others, publish by rename.

The order is what keeps ``releases/`` trustworthy: the manifest's digest and
signature are checked before anything is written; the tree is built in
``releases/.staging-<digest>-<rand>/`` (regular files hard-linked from the
blob cache, executables copied with mode 0555, the manifest's symlinks, and
a link for each ``data_dirs`` entry into ``ROOT/data``); every file is then
checked against the manifest — hashed, unless the agent holds a hash proof
for its inode that its stat still matches (:mod:`knightwatch.agent.proofs`:
a blob hashed as it arrived, or a file the agent hashed before) — the tree
made read-only, flushed to disk with one ``syncfs``, and only then renamed to
``releases/<digest>``. Any failure deletes the staging directory and raises
:class:`StagingError` with a one-line reason.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from knightwatch.agent.errors import StagingError
from knightwatch.agent.events import event
from knightwatch.agent.faults import pause_point
from knightwatch.agent.fetch import BlobFetcher, StagingCancelledError
from knightwatch.agent.layout import NodeLayout, atomic_write, remove_tree
from knightwatch.agent.proofs import HashProofs
from knightwatch.agent.source import ReleaseSource
from knightwatch.agent.verification import (
    TreeReport,
    check_signature,
    parse_manifest,
    verify_tree,
)
from knightwatch.bundle.blobstore import fsync_directory, sync_filesystem
from knightwatch.bundle.manifest import FileEntry, Manifest
from knightwatch.bundle.signing import TrustedKey
from knightwatch.canonical import sha256_hex

__all__ = ["StagedRelease", "Stager", "data_links"]

_LINK_FALLBACK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES)
_PARSED_KEPT = 4
"""Parsed manifests kept in memory (current, previous and what is being staged)."""


@dataclass(frozen=True)
class StagedRelease:
    """A release whose verified tree is in ``releases/<digest>``."""

    manifest: Manifest
    directory: Path
    reused: bool
    blobs_fetched: int
    signed_by: list[str]
    files_hashed: int = 0
    """Files whose bytes staging hashed (the rest arrived hashed, or held a hash proof)."""

    @property
    def digest(self) -> str:
        """The release digest."""
        return self.manifest.digest


def data_links(layout: NodeLayout, manifest: Manifest) -> dict[str, str]:
    """Return ``{path in tree: relative link target}`` for the release's data_dirs."""
    service = manifest.spec.service
    if service is None:
        return {}
    links: dict[str, str] = {}
    for entry in service.data_dirs:
        rel = posixpath.normpath(entry)
        start = layout.release_dir(manifest.digest) / posixpath.dirname(rel)
        links[rel] = os.path.relpath(layout.data_dir / rel, start)
    return links


class Stager:
    """Stages releases into a node layout, trusting only the given signing keys."""

    def __init__(
        self,
        layout: NodeLayout,
        trusted: list[TrustedKey],
        *,
        workers: int | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.layout = layout
        self.trusted = trusted
        self.workers = workers
        self.cancel = cancel or threading.Event()
        self._parsed: dict[str, Manifest] = {}
        self.proofs = HashProofs()
        """Inodes this agent hashed, shared with the continuous audit."""

    def prepare(
        self,
        source: ReleaseSource,
        digest: str,
        *,
        release_id: str | None = None,
        protected: frozenset[str] = frozenset(),
    ) -> StagedRelease:
        """Make ``releases/<digest>`` a verified tree of the release; StagingError if not.

        A tree already there is re-verified and kept when it is exact; a
        damaged one is replaced, unless its digest is ``protected`` (the
        active release must never be removed from under its service).
        """
        manifest, manifest_bytes, signed_by = self._checked_manifest(source, digest, release_id)
        final = self.layout.release_dir(digest)
        if final.is_dir():
            report = self.verify(manifest, final)
            if report.ok:
                self._save_manifest(digest, manifest_bytes)
                return StagedRelease(manifest, final, True, 0, signed_by, report.files_hashed)
            if digest in protected:
                raise StagingError(
                    f"the active tree {final} differs from its manifest: {report.summary()}",
                    digest=digest,
                )
            event("release-damaged", digest=digest, problem=report.summary(), action="restage")
            self.layout.remove_release(digest)
        fetched, hashed = self._stage(source, manifest, manifest_bytes, final)
        return StagedRelease(manifest, final, False, fetched, signed_by, hashed)

    def restage(
        self, source: ReleaseSource, digest: str, *, release_id: str | None = None
    ) -> StagedRelease:
        """Build a fresh, verified tree of ``digest`` beside the live one (a reconcile).

        The live tree may have been tampered with, and its files share inodes
        with the blob cache, so every cached blob is re-hashed as the new tree
        is verified, hash proofs or not: a damaged one is evicted and fetched
        again (one retry).
        The fresh tree waits in :meth:`NodeLayout.restaged_dir` for the commit.
        """
        manifest, manifest_bytes, signed_by = self._checked_manifest(source, digest, release_id)
        final = self.layout.restaged_dir(digest)
        if final.exists():
            remove_tree(final)
        try:
            fetched, hashed = self._stage(source, manifest, manifest_bytes, final, trust=False)
        except StagingError as exc:
            event("restage-retry", digest=digest, problem=exc.message)
            fetched, hashed = self._stage(source, manifest, manifest_bytes, final, trust=False)
        return StagedRelease(manifest, final, False, fetched, signed_by, hashed)

    def _checked_manifest(
        self, source: ReleaseSource, digest: str, release_id: str | None
    ) -> tuple[Manifest, bytes, list[str]]:
        """Fetch the manifest and envelope; check the digest, the release ID and the signature."""
        where = source.describe()
        manifest_bytes = source.manifest(digest)
        manifest = parse_manifest(manifest_bytes, digest, where=where)
        self._remember(manifest)
        if release_id is not None and manifest.release_id != release_id:
            raise StagingError(
                f"the command names {release_id}, the manifest is {manifest.release_id}",
                digest=digest,
            )
        signed_by = check_signature(source.envelope(digest), manifest, self.trusted)
        return manifest, manifest_bytes, signed_by

    def verify(self, manifest: Manifest, tree: Path, *, trust: bool = True) -> TreeReport:
        """Check ``tree`` against ``manifest``, hashing every file without a hash proof.

        ``trust=False`` hashes every file. What is hashed and right becomes a
        proof. Data links are relative, and a tree staged beside
        ``releases/<digest>`` sits at the same depth, so they are the same
        wherever it is staged.
        """
        links = data_links(self.layout, manifest)
        proven = self.proofs.snapshot() if trust else None
        report = verify_tree(tree, manifest, links, workers=self.workers, proven=proven)
        self.proofs.record(report.verified)
        return report

    def load_manifest(self, digest: str) -> Manifest:
        """Return the verified manifest kept for a staged release."""
        path = self.layout.manifest_file(digest)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StagingError(
                f"release {digest[:12]}… is not staged here ({path}: {exc.strerror})",
                digest=digest,
            ) from exc
        cached = self._parsed.get(digest)
        if cached is not None and sha256_hex(data) == digest:
            return cached  # the same bytes: skip parsing and validating thousands of entries
        manifest = parse_manifest(data, digest, where=os.fspath(path))
        self._remember(manifest)
        return manifest

    def _remember(self, manifest: Manifest) -> None:
        self._parsed.pop(manifest.digest, None)
        self._parsed[manifest.digest] = manifest
        while len(self._parsed) > _PARSED_KEPT:
            del self._parsed[next(iter(self._parsed))]

    # --- building the tree -----------------------------------------------------------------

    def _stage(
        self,
        source: ReleaseSource,
        manifest: Manifest,
        manifest_bytes: bytes,
        final: Path,
        *,
        trust: bool = True,
    ) -> tuple[int, int]:
        """Build, verify and publish the tree; return (blobs fetched, files hashed)."""
        digest = manifest.digest
        staging = self.layout.staging_dir(digest)
        try:
            staging.mkdir(mode=0o755)
        except OSError as exc:
            raise StagingError(
                f"cannot write {self.layout.releases_dir}: {exc.strerror}", digest=digest
            ) from exc
        try:
            wanted = {f.digest: f.size for f in manifest.files if f.digest is not None}
            fetcher = BlobFetcher(self.layout, source, cancel=self.cancel)
            fetched = fetcher.ensure_all(wanted)
            blobs = self.layout.blobs
            self.proofs.record_files((blobs.path_of(d), d) for d in fetcher.hashed_now)
            self._check_cancel(digest)
            self._materialise(staging, manifest)
            pause_point("prepare", self.cancel)
            report = self.verify(manifest, staging, trust=trust)
            if not report.ok:
                self._evict(report.corrupt)
                raise StagingError(
                    f"staged tree differs from the manifest: {report.summary()}", digest=digest
                )
            self._check_cancel(digest)
            self._save_manifest(digest, manifest_bytes)
            self._publish(staging, final)
        except OSError as exc:
            remove_tree(staging)
            where = exc.filename or staging
            raise StagingError(f"cannot write {where}: {exc.strerror}", digest=digest) from exc
        except BaseException:
            remove_tree(staging)
            raise
        return fetched, report.files_hashed

    def _materialise(self, staging: Path, manifest: Manifest) -> None:
        symlinks = {f.path for f in manifest.files if f.symlink is not None}
        root = os.fspath(staging)
        made: set[str] = set()
        for entry in manifest.files:
            if symlinks:
                _refuse_through_symlink(entry.path, symlinks, manifest.digest)
            target = f"{root}/{entry.path}"
            parent = target.rpartition("/")[0]
            if parent not in made:  # one mkdir per directory, not per file
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            if entry.symlink is not None:
                _refuse_escaping_link(entry, manifest.digest)
                os.symlink(entry.symlink, target)
            else:
                assert entry.digest is not None
                self._place_file(self.layout.blobs.path_text(entry.digest), target, entry)
        paths = {f.path for f in manifest.files}
        for rel, link in data_links(self.layout, manifest).items():
            if (
                rel in paths
                or _parents_of(rel) & paths
                or any(p.startswith(rel + "/") for p in paths)
            ):
                raise StagingError(
                    f"data_dirs entry {rel!r} collides with a file of the release",
                    digest=manifest.digest,
                )
            (self.layout.data_dir / rel).mkdir(parents=True, exist_ok=True)
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(link, staging / rel)

    def _place_file(self, blob: str, target: str, entry: FileEntry) -> None:
        """Hard-link the cached blob (a copy for executables), carrying its hash proof."""
        before = os.lstat(blob)
        if not entry.executable:
            try:
                os.link(blob, target)
            except OSError as exc:
                if exc.errno not in _LINK_FALLBACK:
                    raise
            else:
                self.proofs.carry(before, os.lstat(target))
                return
        shutil.copyfile(blob, target)
        os.chmod(target, 0o555 if entry.executable else 0o444)
        self.proofs.copied(before, os.lstat(blob), target)

    def _publish(self, staging: Path, final: Path) -> None:
        for directory, subdirs, _files in os.walk(staging, topdown=False):
            for name in subdirs:
                path = os.path.join(directory, name)
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    os.chmod(path, 0o555)  # noqa: S103 - r-x for all: read-only
        sync_filesystem([self.layout.root])
        os.rename(staging, final)
        os.chmod(final, 0o555)  # noqa: S103 - r-x for all: read-only
        fsync_directory(self.layout.releases_dir)

    def _save_manifest(self, digest: str, data: bytes) -> None:
        atomic_write(self.layout.manifest_file(digest), data, mode=0o444)

    def _evict(self, digests: set[str]) -> None:
        for digest in digests:
            event("blob-evicted", digest=digest, reason="content differs from its name")
            self.layout.blobs.path_of(digest).unlink(missing_ok=True)

    def _check_cancel(self, digest: str) -> None:
        if self.cancel.is_set():
            raise StagingCancelledError("stopped: the agent is shutting down", digest=digest)


def _parents_of(path: str) -> set[str]:
    parents = set()
    parent = posixpath.dirname(path)
    while parent:
        parents.add(parent)
        parent = posixpath.dirname(parent)
    return parents


def _refuse_through_symlink(path: str, symlinks: set[str], digest: str) -> None:
    for parent in _parents_of(path):
        if parent in symlinks:
            raise StagingError(
                f"manifest path {path!r} lies under the symlink {parent!r}", digest=digest
            )


def _refuse_escaping_link(entry: FileEntry, digest: str) -> None:
    target = entry.symlink or ""
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(entry.path), target))
    if posixpath.isabs(target) or resolved == ".." or resolved.startswith("../"):
        raise StagingError(
            f"manifest symlink {entry.path!r} -> {target!r} leaves the release tree", digest=digest
        )
