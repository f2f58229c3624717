"""Verifying a stored release: every blob, the manifest, the SBOM, the signature.

Nothing is trusted from the store: each blob is re-hashed, the manifest's
SHA-256 must equal the digest it is filed under, and the DSSE signature must
come from a trusted key and name that digest. Every mismatch is listed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knightwatch.bundle.hashing import HashTask, digest_files
from knightwatch.bundle.manifest import Manifest
from knightwatch.bundle.release_store import (
    ENVELOPE_FILE,
    MANIFEST_FILE,
    SBOM_FILE,
    ReleaseStore,
    StoredRelease,
)
from knightwatch.bundle.sbom import sbom_problems
from knightwatch.bundle.signing import TrustedKey, open_envelope, statement_problems
from knightwatch.bundle.source import IDENTITY_PATH
from knightwatch.canonical import parse_json, sha256_hex
from knightwatch.errors import StoreError

__all__ = ["VerifyReport", "verify_release"]


@dataclass
class VerifyReport:
    """The outcome of verifying one release; ``ok`` only with no problems."""

    ref: str
    release_id: str = ""
    digest: str = ""
    files: int = 0
    blobs: int = 0
    bytes: int = 0
    signed_by: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """Return the report as plain JSON data."""
        return {**self.__dict__, "ok": self.ok}


def verify_release(
    store_root: Path,
    ref: str,
    trusted: list[TrustedKey],
    *,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Re-check every byte and signature of the release ``ref`` in the store."""
    report = VerifyReport(ref)
    store = ReleaseStore(store_root)
    try:
        release = store.find(ref)
    except StoreError as exc:
        report.problems.append(exc.message)
        return report
    report.release_id, report.digest = release.release_id, release.digest
    report.files = len(release.manifest.files)
    _check_manifest(release, report)
    _check_blobs(store, release.manifest, report, workers, on_progress)
    _check_identity(store, release.manifest, report)
    sbom_sha256 = _check_sbom(release, report)
    _check_signature(release, trusted, sbom_sha256, report)
    return report


def _check_manifest(release: StoredRelease, report: VerifyReport) -> None:
    data = release.read(MANIFEST_FILE)
    actual = sha256_hex(data)
    if actual != release.digest:
        report.problems.append(
            f"{MANIFEST_FILE}: SHA-256 is {actual}, but the release is filed as {release.digest}"
        )
    if data != release.manifest.canonical_bytes():
        report.problems.append(f"{MANIFEST_FILE}: not in canonical JSON form")


def _check_blobs(
    store: ReleaseStore,
    manifest: Manifest,
    report: VerifyReport,
    workers: int | None,
    on_progress: Callable[[int], None] | None,
) -> None:
    users: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for entry in manifest.files:
        if entry.digest is not None:
            users.setdefault(entry.digest, []).append(entry.path)
            sizes[entry.digest] = entry.size
    digests = sorted(users)
    tasks = [HashTask(os.fspath(store.blobs.path_of(d))) for d in digests]

    def done(result: Any) -> None:
        if on_progress is not None:
            on_progress(result.size)

    results = digest_files(tasks, workers=workers, on_done=done)
    report.blobs = len(digests)
    for digest, result in zip(digests, results, strict=True):
        paths = users[digest]
        used_by = paths[0] + (f" and {len(paths) - 1} more" if len(paths) > 1 else "")
        if result.error is not None:
            missing = "No such file" in result.error
            report.problems.append(
                f"{used_by}: blob {digest} is {'missing' if missing else result.error}"
            )
        elif result.digest != digest:
            report.problems.append(
                f"{used_by}: blob {digest} is corrupt (its SHA-256 is {result.digest})"
            )
        elif result.size != sizes[digest]:
            report.problems.append(
                f"{used_by}: blob {digest} has {result.size} bytes, the "
                f"manifest says {sizes[digest]}"
            )
        report.bytes += result.size


def _check_identity(store: ReleaseStore, manifest: Manifest, report: VerifyReport) -> None:
    entry = next((f for f in manifest.files if f.path == IDENTITY_PATH), None)
    if entry is None or entry.digest is None:
        report.problems.append(f"{IDENTITY_PATH}: the embedded version ID is missing")
        return
    try:
        identity = parse_json(store.blobs.read(entry.digest))
    except (StoreError, ValueError):
        return  # already reported as a blob problem
    if not isinstance(identity, dict) or (identity.get("name"), identity.get("version")) != (
        manifest.name,
        manifest.version,
    ):
        report.problems.append(f"{IDENTITY_PATH}: does not name {manifest.name}@{manifest.version}")


def _check_sbom(release: StoredRelease, report: VerifyReport) -> str | None:
    try:
        sbom = release.read(SBOM_FILE)
    except StoreError as exc:
        report.problems.append(f"{SBOM_FILE}: {exc.message}")
        return None
    report.problems.extend(f"{SBOM_FILE}: {p}" for p in sbom_problems(sbom))
    return sha256_hex(sbom)


def _check_signature(
    release: StoredRelease, trusted: list[TrustedKey], sbom_sha256: str | None, report: VerifyReport
) -> None:
    try:
        statement, report.signed_by = open_envelope(release.read(ENVELOPE_FILE), trusted)
    except (StoreError, ValueError, TypeError, AttributeError) as exc:
        report.problems.append(f"{ENVELOPE_FILE}: {getattr(exc, 'message', exc)}")
        return
    report.problems.extend(
        f"{ENVELOPE_FILE}: {p}"
        for p in statement_problems(statement, release.digest, release.release_id, sbom_sha256)
    )
