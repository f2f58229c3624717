"""Pushing releases to the control plane: verified before they become visible.

An upload is staged under ``DATA/.tmp/upload-<id>/``: the manifest, SBOM and
signature are checked first (digest, canonical form, trusted signature,
signed SBOM digest), then each missing blob is streamed in and hashed, and
only ``commit`` publishes the blobs and inserts the release row in one
transaction. An interrupted or refused upload leaves nothing visible.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from knightwatch.bundle.blobstore import BlobStore, is_digest, sync_filesystem
from knightwatch.bundle.manifest import Manifest
from knightwatch.bundle.sbom import sbom_identity_problems
from knightwatch.bundle.signing import TrustedKey, open_envelope, statement_problems
from knightwatch.canonical import sha256_hex
from knightwatch.clock import Clock
from knightwatch.control.accounting import release_pushed
from knightwatch.control.flags.registry import declare_release_flags, refuse_declarations
from knightwatch.errors import InvalidInputError, NotFoundError, StoreError, VerificationError
from knightwatch.store import Database, Release

__all__ = ["BlobWriter", "ReleaseCatalog", "UploadTicket"]

MAX_MANIFEST_BYTES = 256 * 1024 * 1024
_UPLOAD_ID_BYTES = 16


@dataclass(frozen=True)
class UploadTicket:
    """The answer to starting an upload: which blobs the server still needs."""

    upload_id: str
    digest: str
    release_id: str
    missing: list[str]
    already_present: bool

    def to_json(self) -> dict[str, Any]:
        """Return the ticket as plain JSON data."""
        return dict(self.__dict__)


class BlobWriter:
    """Streams one blob of an upload to disk, hashing as it goes."""

    def __init__(
        self, target: Path, digest: str, size: int, on_write: Callable[[], None] | None = None
    ) -> None:
        self._on_write = on_write
        self._target = target
        self._digest = digest
        self._size = size
        self._temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
        self._handle = self._temp.open("wb")
        self._hash = hashlib.sha256()
        self._seen = 0

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; refuse a blob that grows past its manifest size."""
        self._seen += len(chunk)
        if self._seen > self._size:
            self.discard()
            raise VerificationError(
                self._digest,
                [f"blob {self._digest} is larger than the {self._size} bytes the manifest says"],
            )
        self._hash.update(chunk)
        self._handle.write(chunk)
        if self._on_write is not None:
            self._on_write()

    def finish(self) -> None:
        """Check the digest and keep the blob, or discard it and raise."""
        self._handle.close()
        actual = self._hash.hexdigest()
        if actual != self._digest or self._seen != self._size:
            self._temp.unlink(missing_ok=True)
            raise VerificationError(
                self._digest,
                [f"blob {self._digest} arrived with SHA-256 {actual} and {self._seen} bytes"],
            )
        os.chmod(self._temp, 0o444)
        os.replace(self._temp, self._target)

    def discard(self) -> None:
        """Drop what was written so far."""
        self._handle.close()
        self._temp.unlink(missing_ok=True)


class ReleaseCatalog:
    """Releases known to the control plane, and the uploads that add them."""

    def __init__(
        self, db: Database, data_dir: Path, trusted: list[TrustedKey], clock: Clock
    ) -> None:
        self._db = db
        self._clock = clock
        self._trusted = trusted
        self.blobs = BlobStore(data_dir)
        self._uploads = data_dir / ".tmp"
        self._sizes: dict[str, dict[str, int]] = {}
        self._active: dict[str, float] = {}
        """Upload id -> when (clock.monotonic) it last received anything, or was first seen."""
        self.expired_total = 0
        """Abandoned uploads deleted by :meth:`expire_uploads` since this process started."""

    def begin_upload(
        self, manifest: bytes, sbom: bytes, envelope: bytes, pushed_by: str
    ) -> UploadTicket:
        """Check a release's manifest, SBOM and signature; stage them; list missing blobs."""
        if len(manifest) > MAX_MANIFEST_BYTES:
            raise InvalidInputError("manifest is too large")
        parsed, signer = self._check_documents(manifest, sbom, envelope)
        with self._db.session() as session:
            present = session.get(Release, parsed.digest) is not None
            if not present:
                refuse_declarations(session, parsed.spec.flag)  # before a byte is uploaded
        if present:
            return UploadTicket("", parsed.digest, parsed.release_id, [], True)
        upload_id = secrets.token_hex(_UPLOAD_ID_BYTES)
        directory = self._uploads / f"upload-{upload_id}"
        self._touch(upload_id)
        (directory / "blobs").mkdir(parents=True)
        for name, data in (
            ("manifest.json", manifest),
            ("sbom.cdx.json", sbom),
            ("release.dsse.json", envelope),
            ("signer", signer.encode()),
            ("pushed_by", pushed_by.encode()),
        ):
            (directory / name).write_bytes(data)
        missing = sorted(
            {
                f.digest
                for f in parsed.files
                if f.digest is not None and not self.blobs.has(f.digest)
            }
        )
        return UploadTicket(upload_id, parsed.digest, parsed.release_id, missing, False)

    def blob_writer(self, upload_id: str, digest: str) -> BlobWriter:
        """Return a writer for one blob of an upload (refusing blobs it does not name)."""
        sizes = self._upload_sizes(upload_id)
        if digest not in sizes:
            raise InvalidInputError(f"blob {digest} is not part of this upload's release")
        self._touch(upload_id)
        target = self._upload_dir(upload_id) / "blobs" / digest
        return BlobWriter(target, digest, sizes[digest], lambda: self._touch(upload_id))

    def commit_upload(self, upload_id: str) -> str:
        """Publish an upload's blobs and make the release visible; return its release ID."""
        directory = self._upload_dir(upload_id)
        manifest = self._upload_manifest(upload_id)
        staged = directory / "blobs"
        missing = sorted(
            {
                f.digest
                for f in manifest.files
                if f.digest is not None
                and not self.blobs.has(f.digest)
                and not (staged / f.digest).exists()
            }
        )
        if missing:
            raise InvalidInputError(
                f"{len(missing)} blob(s) were not uploaded (first: {missing[0]})",
                hint="run the push again; it resumes",
            )
        sync_filesystem([directory])
        for blob in staged.iterdir():
            if is_digest(blob.name):
                self.blobs.publish(blob, blob.name)
        sync_filesystem([self.blobs.blobs_dir.parent])
        with self._db.session() as session:
            self._insert(session, directory, manifest)
        shutil.rmtree(directory, ignore_errors=True)
        self._active.pop(upload_id, None)
        return manifest.release_id

    def abort_upload(self, upload_id: str) -> None:
        """Forget an upload and everything it staged."""
        shutil.rmtree(self._upload_dir(upload_id), ignore_errors=True)
        self._active.pop(upload_id, None)

    def pending_uploads(self) -> int:
        """How many uploads are staged and neither committed, aborted nor expired."""
        return len(self._upload_ids())

    def expire_uploads(self, max_idle_s: float) -> list[str]:
        """Delete every upload that received nothing for ``max_idle_s``; return their ids.

        Idleness is measured on the injected clock from the last byte received
        (or, for an upload this process did not start, from when it was first
        seen here), so a slow push in progress is never cut off.
        """
        now = self._clock.monotonic()
        present = self._upload_ids()
        for gone in set(self._active) - set(present):
            del self._active[gone]
        expired = [u for u in present if now - self._active.setdefault(u, now) > max_idle_s]
        for upload_id in expired:
            shutil.rmtree(self._uploads / f"upload-{upload_id}", ignore_errors=True)
            self._active.pop(upload_id, None)
            self._sizes.pop(upload_id, None)
        self.expired_total += len(expired)
        return expired

    def _upload_ids(self) -> list[str]:
        if not self._uploads.is_dir():
            return []
        return sorted(
            p.name.removeprefix("upload-")
            for p in self._uploads.iterdir()
            if p.name.startswith("upload-") and p.is_dir()
        )

    def _touch(self, upload_id: str) -> None:
        self._active[upload_id] = self._clock.monotonic()

    def _insert(self, session: Session, directory: Path, manifest: Manifest) -> None:
        if session.get(Release, manifest.digest) is not None:
            return
        session.add(
            row := Release(
                digest=manifest.digest,
                release_id=manifest.release_id,
                name=manifest.name,
                version=manifest.version,
                manifest=(directory / "manifest.json").read_bytes(),
                sbom=(directory / "sbom.cdx.json").read_bytes(),
                envelope=(directory / "release.dsse.json").read_bytes(),
                signed_by=(directory / "signer").read_text(),
                pushed_at=self._clock.now(),
                pushed_by=(directory / "pushed_by").read_text(),
            )
        )
        release_pushed(session, row, manifest, at=row.pushed_at, actor=row.pushed_by)
        declare_release_flags(session, row, manifest, at=row.pushed_at, actor=row.pushed_by)

    def _check_documents(
        self, manifest: bytes, sbom: bytes, envelope: bytes
    ) -> tuple[Manifest, str]:
        digest = sha256_hex(manifest)
        try:
            parsed = Manifest.from_bytes(manifest, where="manifest")
        except StoreError as exc:
            raise InvalidInputError(exc.message) from None
        problems: list[str] = []
        if parsed.canonical_bytes() != manifest:
            problems.append("manifest is not in canonical JSON form")
        signer = ""
        try:
            statement, keyids = open_envelope(envelope, self._trusted)
            signer = keyids[0]
            problems.extend(
                statement_problems(statement, digest, parsed.release_id, sha256_hex(sbom))
            )
        except (ValueError, TypeError, AttributeError) as exc:
            problems.append(f"signature: {exc}")
        problems.extend(f"SBOM: {p}" for p in sbom_identity_problems(sbom, parsed))
        if problems:
            raise VerificationError(parsed.release_id, problems)
        return parsed, signer

    def _upload_dir(self, upload_id: str) -> Path:
        if len(upload_id) != 2 * _UPLOAD_ID_BYTES or not all(
            c in "0123456789abcdef" for c in upload_id
        ):
            raise InvalidInputError(f"upload {upload_id!r} is not a valid upload id")
        directory = self._uploads / f"upload-{upload_id}"
        if not directory.is_dir():
            raise NotFoundError(
                f"upload {upload_id} does not exist (expired or committed)",
                hint="start the push again",
            )
        return directory

    def _upload_sizes(self, upload_id: str) -> dict[str, int]:
        """Blob sizes of an upload's release, parsed once per upload (not once per blob)."""
        self._upload_dir(upload_id)
        cached = self._sizes.get(upload_id)
        if cached is None:
            manifest = self._upload_manifest(upload_id)
            cached = {f.digest: f.size for f in manifest.files if f.digest is not None}
            self._sizes = {upload_id: cached}  # one upload at a time is the common case
        return cached

    def _upload_manifest(self, upload_id: str) -> Manifest:
        data = (self._upload_dir(upload_id) / "manifest.json").read_bytes()
        return Manifest.from_bytes(data, where=f"upload {upload_id}")
