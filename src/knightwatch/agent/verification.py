"""What a release must prove before the agent switches to it.

Three checks, each refusing with a one-line reason: the manifest bytes hash
to the release digest; the DSSE envelope is signed by a trusted key and its
statement names that digest (and the manifest's release ID); and every path
of the staged tree is exactly what the manifest says — same kind, same
executable bit, same size and SHA-256, same symlink target — with nothing
missing and nothing extra except the data_dirs links the agent made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from knightwatch.agent.errors import StagingError
from knightwatch.agent.proofs import Inode, Proof
from knightwatch.agent.releaseindex import ReleaseIndex
from knightwatch.agent.treecompare import inspect_tree
from knightwatch.bundle.manifest import Manifest
from knightwatch.bundle.signing import TrustedKey, open_envelope, statement_problems
from knightwatch.canonical import sha256_hex
from knightwatch.errors import StoreError

__all__ = ["TreeReport", "check_signature", "parse_manifest", "verify_tree"]


def parse_manifest(data: bytes, digest: str, *, where: str) -> Manifest:
    """Return the manifest in ``data`` if its SHA-256 is ``digest``; else StagingError."""
    actual = sha256_hex(data)
    if actual != digest:
        raise StagingError(
            f"manifest from {where} has sha256 {actual[:12]}…, not the release digest",
            digest=digest,
        )
    try:
        return Manifest.from_bytes(data, where=where)
    except StoreError as exc:
        raise StagingError(exc.message, digest=digest) from None


def check_signature(envelope: bytes, manifest: Manifest, trusted: list[TrustedKey]) -> list[str]:
    """Return the key ids that signed ``manifest``; StagingError if none did."""
    if not trusted:
        raise StagingError(
            "signature: this agent trusts no release-signing key (start it with --trust KEY)",
            digest=manifest.digest,
        )
    try:
        statement, keyids = open_envelope(envelope, trusted)
    except (ValueError, TypeError, AttributeError) as exc:
        raise StagingError(f"signature: {exc}", digest=manifest.digest) from None
    problems = statement_problems(statement, manifest.digest, manifest.release_id)
    if problems:
        raise StagingError(f"signature: {'; '.join(problems)}", digest=manifest.digest)
    return keyids


@dataclass
class TreeReport:
    """What differs between a tree and its manifest; ``corrupt`` lists blob digests seen wrong."""

    problems: list[str] = field(default_factory=list)
    corrupt: set[str] = field(default_factory=set)
    verified: list[Proof] = field(default_factory=list)
    files_hashed: int = 0

    @property
    def ok(self) -> bool:
        """True when the tree is exactly the manifest."""
        return not self.problems

    def summary(self) -> str:
        """One line: the first problem and how many more there are."""
        more = len(self.problems) - 1
        return self.problems[0] + (f" (and {more} more)" if more > 0 else "")


def verify_tree(
    tree: Path,
    manifest: Manifest,
    data_links: Mapping[str, str],
    *,
    workers: int | None = None,
    proven: Mapping[Inode, Proof] | None = None,
) -> TreeReport:
    """Compare every path under ``tree`` with ``manifest`` (plus the expected data links).

    Every file's bytes are hashed, except a file whose hash proof in
    ``proven`` still holds (:mod:`knightwatch.agent.proofs`).
    """
    index = ReleaseIndex(manifest, data_links)
    inspection = inspect_tree(tree, index, workers=workers, proven=proven)
    problems = [finding.detail for finding in inspection.all_findings()]
    return TreeReport(
        problems=problems,
        corrupt=inspection.corrupt,
        verified=inspection.verified,
        files_hashed=inspection.files_hashed,
    )
