"""A store of built releases: ``ROOT/releases/<digest>/`` beside the blobs.

Each release directory holds ``manifest.json`` (canonical JSON; its
``sha256sum`` is the digest), ``sbom.cdx.json`` and ``release.dsse.json``.
A directory appears only by ``rename(2)`` of a complete staged one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from knightwatch.bundle.blobstore import BlobStore, fsync_directory, is_digest
from knightwatch.bundle.manifest import Manifest
from knightwatch.errors import ReleaseNotFoundError, StoreError

__all__ = ["ENVELOPE_FILE", "MANIFEST_FILE", "SBOM_FILE", "ReleaseStore", "StoredRelease"]

MANIFEST_FILE = "manifest.json"
SBOM_FILE = "sbom.cdx.json"
ENVELOPE_FILE = "release.dsse.json"


@dataclass(frozen=True)
class StoredRelease:
    """A release directory found in a store, with its parsed manifest."""

    digest: str
    directory: Path
    manifest: Manifest

    @property
    def release_id(self) -> str:
        """The release ID (``name@version+hex12``)."""
        return self.manifest.release_id

    def read(self, name: str) -> bytes:
        """Return the bytes of one file of the release directory."""
        try:
            return (self.directory / name).read_bytes()
        except OSError as exc:
            raise StoreError(f"{self.directory / name}: {exc.strerror}") from exc


class ReleaseStore:
    """Releases and blobs under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = BlobStore(root)
        self.releases_dir = root / "releases"

    def digests(self) -> list[str]:
        """Return the digests of every release in the store, sorted."""
        if not self.releases_dir.is_dir():
            return []
        return sorted(p.name for p in self.releases_dir.iterdir() if is_digest(p.name))

    def load(self, digest: str) -> StoredRelease:
        """Load the release with this exact digest."""
        directory = self.releases_dir / digest
        path = directory / MANIFEST_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ReleaseNotFoundError(digest) from None
        except OSError as exc:
            raise StoreError(f"{path}: {exc.strerror}") from exc
        return StoredRelease(digest, directory, Manifest.from_bytes(data, where=str(path)))

    def find(self, ref: str) -> StoredRelease:
        """Resolve a digest, digest prefix, ``sha256:…``, release ID, ``name@version`` or name.

        A reference must match exactly one release.
        """
        text = ref.removeprefix("sha256:")
        digests = self.digests()
        if is_digest(text) and text in digests:
            return self.load(text)
        matches = self._matches(text, digests)
        if len(matches) == 1:
            return self.load(matches[0])
        hint = (
            f"{len(matches)} releases match; give more of the digest or the full release ID"
            if matches
            else f"list releases with: ls {self.releases_dir}"
        )
        raise ReleaseNotFoundError(ref, hint=hint)

    def _matches(self, text: str, digests: list[str]) -> list[str]:
        if len(text) >= 8 and all(c in "0123456789abcdef" for c in text):
            return [d for d in digests if d.startswith(text)]
        name_version, _, short = text.partition("+")
        found = []
        for digest in digests:
            if short and not digest.startswith(short):
                continue
            try:
                manifest = self.load(digest).manifest
            except StoreError:
                continue
            if name_version in (manifest.name, f"{manifest.name}@{manifest.version}"):
                found.append(digest)
        return found

    def publish(self, staged_dir: Path, digest: str) -> bool:
        """Move a complete staged release directory into place; False if already there."""
        final = self.releases_dir / digest
        if final.exists():
            return False
        self.releases_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staged_dir, final)
        except OSError as exc:
            if final.exists():
                return False
            raise StoreError(f"cannot publish release {digest}: {exc.strerror}") from exc
        fsync_directory(self.releases_dir)
        return True
