"""What a release must prove before the agent switches to it.

Three checks, each refusing with a one-line reason: the manifest bytes hash
to the release digest; the DSSE envelope is signed by a trusted key and its
statement names that digest (and the manifest's release ID); and every path
of the staged tree is exactly what the manifest says — same kind, same
executable bit, same size and SHA-256, same symlink target — with nothing
missing and nothing extra except the data_dirs links the agent made.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from knightwatch.agent.errors import StagingError
from knightwatch.bundle.hashing import HashTask, digest_files
from knightwatch.bundle.manifest import FileEntry, Manifest
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
    hashed: frozenset[tuple[int, int]] = frozenset(),
) -> TreeReport:
    """Compare every path under ``tree`` with ``manifest`` (plus the expected data links).

    Every file's bytes are hashed, except a file that is the very inode
    (device, inode in ``hashed``) of a blob the caller hashed moments ago.
    """
    report = TreeReport()
    entries = {entry.path: entry for entry in manifest.files}
    expected_dirs = _parents([*entries, *data_links])
    seen_files: list[FileEntry] = []
    for rel, st in _walk(tree):
        if stat.S_ISDIR(st.st_mode):
            if rel not in expected_dirs:
                report.problems.append(f"{rel}/: unexpected directory")
            continue
        entry = entries.pop(rel, None)
        if stat.S_ISLNK(st.st_mode):
            _check_link(tree, rel, entry, data_links, report)
        elif not stat.S_ISREG(st.st_mode):
            report.problems.append(f"{rel}: not a regular file")
        elif entry is None or entry.digest is None:
            report.problems.append(
                f"{rel}: " + ("unexpected file" if entry is None else "not a symlink")
            )
        else:
            _check_mode(rel, st, entry, report)
            if (st.st_dev, st.st_ino) not in hashed:
                seen_files.append(entry)
    report.problems.extend(f"{rel}: missing" for rel in sorted(entries) if rel not in data_links)
    _check_contents(tree, seen_files, report, workers)
    return report


def _walk(tree: Path) -> list[tuple[str, os.stat_result]]:
    found: list[tuple[str, os.stat_result]] = []
    for directory, subdirs, files in os.walk(tree):
        rel_dir = os.path.relpath(directory, tree)
        for name in [*subdirs, *files]:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            found.append((rel, os.lstat(os.path.join(directory, name))))
    return sorted(found)


def _parents(paths: list[str]) -> set[str]:
    parents: set[str] = set()
    for path in paths:
        parent = posixpath.dirname(path)
        while parent:
            parents.add(parent)
            parent = posixpath.dirname(parent)
    return parents


def _check_link(
    tree: Path,
    rel: str,
    entry: FileEntry | None,
    data_links: Mapping[str, str],
    report: TreeReport,
) -> None:
    target = os.readlink(tree / rel)
    wanted = entry.symlink if entry is not None else data_links.get(rel)
    if wanted is None:
        report.problems.append(f"{rel}: unexpected symlink (to {target!r})")
    elif target != wanted:
        report.problems.append(f"{rel}: symlink to {target!r}, the manifest says {wanted!r}")


def _check_mode(rel: str, st: os.stat_result, entry: FileEntry, report: TreeReport) -> None:
    if bool(st.st_mode & 0o111) != entry.executable:
        state = "executable" if entry.executable else "not executable"
        report.problems.append(f"{rel}: mode {stat.filemode(st.st_mode)}, should be {state}")
    if st.st_mode & 0o222:
        report.problems.append(f"{rel}: writable (mode {stat.filemode(st.st_mode)})")
    if st.st_size != entry.size:
        report.problems.append(f"{rel}: {st.st_size} bytes, the manifest says {entry.size}")


def _check_contents(
    tree: Path, files: list[FileEntry], report: TreeReport, workers: int | None
) -> None:
    tasks = [HashTask(os.fspath(tree / entry.path)) for entry in files]
    for entry, result in zip(
        files, digest_files(tasks, workers=workers, threads=True), strict=True
    ):
        if result.error is not None:
            report.problems.append(f"{entry.path}: {result.error}")
        elif result.digest != entry.digest:
            assert entry.digest is not None
            report.corrupt.add(entry.digest)
            report.problems.append(
                f"{entry.path}: content differs (sha256 {result.digest[:12]}…, "
                f"expected {entry.digest[:12]}…)"
            )
