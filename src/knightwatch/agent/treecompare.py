"""Comparing a release tree on disk with its manifest, path by path (the physical audit).

One comparison serves staging (a tree must be exact before the switch) and
the continuous audit (the active tree must stay exact): :func:`inspect_tree`
looks at every path, :func:`inspect_paths` at the paths a file watcher named
and everything below them, against a
:class:`~knightwatch.agent.releaseindex.ReleaseIndex`. Each difference is a
:class:`Finding` with a severity, collected in an
:class:`~knightwatch.agent.releaseindex.Inspection`. Extra code is critical:
an executable, ``*.py``, ``*.pth``, ``*.so`` or a ``__pycache__`` the
release did not ship could run — a ``.pth`` line starting with ``import``
runs in every interpreter that starts. The service's data_dirs (links into
``ROOT/data``) are the only places a service may write, and nothing below
them is audited.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from knightwatch.agent.proofs import Inode, Proof
from knightwatch.agent.releaseindex import Inspection, ReleaseIndex, stat_key
from knightwatch.bundle.hashing import HashTask, digest_files
from knightwatch.bundle.manifest import FileEntry
from knightwatch.protocol.audit import Finding, FindingKind, Severity

__all__ = ["inspect_paths", "inspect_tree"]

_CODE_SUFFIXES = (".py", ".pyc", ".pth", ".so")
_PTH_PEEK_BYTES = 4096
K, V = FindingKind, Severity


def inspect_tree(
    tree: Path,
    index: ReleaseIndex,
    *,
    workers: int | None = None,
    proven: Mapping[Inode, Proof] | None = None,
) -> Inspection:
    """Compare every path of ``tree`` with the release, hashing every file's bytes.

    A file with a hash proof (:mod:`knightwatch.agent.proofs`) for the very
    digest the manifest wants, whose stat has not moved since, is not hashed again.
    """
    return inspect_paths(tree, index, [""], workers=workers, proven=proven)


def inspect_paths(
    tree: Path,
    index: ReleaseIndex,
    paths: Iterable[str],
    *,
    workers: int | None = None,
    proven: Mapping[Inode, Proof] | None = None,
) -> Inspection:
    """Compare the given relative paths, and everything below them, with the release.

    ``""`` names the whole tree. Paths below a data_dirs link are skipped.
    Files whose hash proof in ``proven`` still holds are not hashed; every
    file hashed and found right is returned in ``Inspection.verified``.
    """
    inspection = Inspection()
    candidates = _candidates(tree, index, paths)
    to_hash: list[tuple[str, FileEntry]] = []
    top = os.fspath(tree)
    for rel in sorted(candidates):
        st = _lstat(f"{top}/{rel}" if rel else top)
        inspection.checked.add(rel)
        if st is None:
            _check_absent(rel, index, inspection)
            continue
        inspection.stats[rel] = stat_key(st)
        entry = _check_present(tree, rel, st, index, inspection)
        if entry is not None and not _still_proven(st, entry, proven):
            to_hash.append((rel, entry))
    _check_contents(tree, to_hash, inspection, workers)
    return inspection


def _still_proven(
    st: os.stat_result, entry: FileEntry, proven: Mapping[Inode, Proof] | None
) -> bool:
    if not proven:
        return False
    return proven.get((st.st_dev, st.st_ino)) == (stat_key(st), entry.digest)


def _candidates(tree: Path, index: ReleaseIndex, paths: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for raw in paths:
        rel = posixpath.normpath(raw) if raw else ""
        if rel in (".", ""):
            rel = ""
        if rel.startswith("../") or rel == ".." or index.in_data_dir(rel):
            continue
        if rel:
            found.add(rel)
        found.update(index.expected_under(rel))
        top = tree / rel if rel else tree
        st = _lstat(top)
        if st is not None and stat.S_ISDIR(st.st_mode):
            found.update(p for p in _walk(tree, top) if not index.in_data_dir(p))
    return found


def _walk(tree: Path, top: Path) -> list[str]:
    found: list[str] = []
    for directory, subdirs, files in os.walk(top):
        rel_dir = os.path.relpath(directory, tree)
        for name in [*subdirs, *files]:
            found.append(name if rel_dir == "." else f"{rel_dir}/{name}")
    return found


def _lstat(path: str | Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _check_absent(rel: str, index: ReleaseIndex, inspection: Inspection) -> None:
    entry = index.files.get(rel)
    if entry is not None:
        expected = entry.digest or f"symlink to {entry.symlink}"
        inspection.flag(
            rel,
            kind=K.MISSING,
            severity=V.CRITICAL,
            detail=f"{rel}: missing",
            expected=expected,
        )
    elif rel in index.data_links:
        inspection.flag(
            rel,
            kind=K.MISSING,
            severity=V.CRITICAL,
            detail=f"{rel}: missing (the data_dirs link the agent made)",
            expected=f"symlink to {index.data_links[rel]}",
        )


def _check_present(
    tree: Path, rel: str, st: os.stat_result, index: ReleaseIndex, inspection: Inspection
) -> FileEntry | None:
    """Check one existing path; return its manifest entry when its bytes must be hashed."""
    entry = index.files.get(rel)
    if stat.S_ISDIR(st.st_mode):
        _check_directory(rel, entry, index, inspection)
        return None
    if stat.S_ISLNK(st.st_mode):
        _check_link(tree, rel, entry, index, inspection)
        return None
    if not stat.S_ISREG(st.st_mode):
        kind = K.TYPE if entry is not None else K.UNMANAGED
        what = stat.filemode(st.st_mode)[0]
        inspection.flag(
            rel,
            kind=kind,
            severity=V.CRITICAL,
            detail=f"{rel}: not a regular file (type {what!r})",
        )
        return None
    return _check_regular(tree, rel, st, entry, index, inspection)


def _check_regular(
    tree: Path,
    rel: str,
    st: os.stat_result,
    entry: FileEntry | None,
    index: ReleaseIndex,
    inspection: Inspection,
) -> FileEntry | None:
    if entry is None or rel in index.data_links:
        inspection.add(rel, _unmanaged_file(tree, rel, st))
        return None
    if entry.digest is None:
        inspection.flag(
            rel,
            kind=K.TYPE,
            severity=V.CRITICAL,
            detail=f"{rel}: a regular file where the release has a symlink",
            expected=f"symlink to {entry.symlink}",
        )
        return None
    _check_mode(rel, st, entry, inspection)
    if st.st_size != entry.size:
        inspection.flag(
            rel,
            kind=K.MODIFIED,
            severity=V.CRITICAL,
            detail=f"{rel}: {st.st_size} bytes, the manifest says {entry.size}",
            expected=entry.digest,
        )
        inspection.corrupt.add(entry.digest)
        return None
    return entry


def _check_directory(
    rel: str, entry: FileEntry | None, index: ReleaseIndex, inspection: Inspection
) -> None:
    if rel in index.dirs:
        return
    if entry is not None or rel in index.data_links:
        inspection.flag(
            rel,
            kind=K.TYPE,
            severity=V.CRITICAL,
            detail=f"{rel}/: a directory where the release has a file or link",
        )
        return
    pycache = posixpath.basename(rel) == "__pycache__"
    inspection.flag(
        rel,
        kind=K.UNMANAGED,
        severity=V.CRITICAL if pycache else V.WARNING,
        detail=f"{rel}/: "
        + ("__pycache__ not produced by the release" if pycache else "unexpected directory"),
    )


def _check_link(
    tree: Path, rel: str, entry: FileEntry | None, index: ReleaseIndex, inspection: Inspection
) -> None:
    try:
        target = os.readlink(tree / rel)
    except OSError:
        target = "?"
    if entry is not None and entry.digest is not None:
        inspection.flag(
            rel,
            kind=K.TYPE,
            severity=V.CRITICAL,
            detail=f"{rel}: replaced by a symlink to {target!r}",
            expected=entry.digest,
            actual=f"symlink to {target}",
        )
        return
    wanted = entry.symlink if entry is not None else index.data_links.get(rel)
    if wanted is None:
        inspection.flag(
            rel,
            kind=K.UNMANAGED,
            severity=V.CRITICAL,
            detail=f"{rel}: unexpected symlink (to {target!r})",
            actual=f"symlink to {target}",
        )
    elif target != wanted:
        inspection.flag(
            rel,
            kind=K.SYMLINK,
            severity=V.CRITICAL,
            detail=f"{rel}: symlink to {target!r}, the manifest says {wanted!r}",
            expected=f"symlink to {wanted}",
            actual=f"symlink to {target}",
        )


def _check_mode(rel: str, st: os.stat_result, entry: FileEntry, inspection: Inspection) -> None:
    mode = stat.filemode(st.st_mode)
    executable = bool(st.st_mode & 0o111)
    if executable != entry.executable:
        assert entry.digest is not None
        inspection.corrupt.add(entry.digest)  # a hard-linked cached blob shares the mode
        inspection.flag(
            rel,
            kind=K.MODE,
            severity=V.CRITICAL if executable else V.WARNING,
            detail=f"{rel}: mode {mode}, should be "
            + ("executable" if entry.executable else "not executable"),
            expected="executable" if entry.executable else "not executable",
            actual=mode,
        )
    if st.st_mode & 0o222:
        assert entry.digest is not None
        inspection.corrupt.add(entry.digest)
        inspection.flag(
            rel,
            kind=K.MODE,
            severity=V.WARNING,
            detail=f"{rel}: writable (mode {mode})",
            expected="read-only",
            actual=mode,
        )


def _unmanaged_file(tree: Path, rel: str, st: os.stat_result) -> Finding:
    name = posixpath.basename(rel)
    why = None
    if "__pycache__" in rel.split("/"):
        why = "__pycache__ not produced by the release"
    elif name.endswith(".pth"):
        why = "a .pth file" + _pth_imports(tree / rel)
    elif name.endswith(_CODE_SUFFIXES) or ".so." in name:
        why = "code the release does not contain"
    elif st.st_mode & 0o111:
        why = "an executable the release does not contain"
    detail = f"{rel}: unmanaged file" + (f" — {why}" if why else "")
    return Finding(
        kind=K.UNMANAGED,
        severity=V.CRITICAL if why else V.WARNING,
        path=rel,
        detail=detail,
        actual=f"{st.st_size} bytes, mode {stat.filemode(st.st_mode)}",
    )


def _pth_imports(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            text = handle.read(_PTH_PEEK_BYTES).decode("utf-8", "replace")
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith(("import ", "import\t")):
            return f" that runs code in every interpreter ({line[:80]!r})"
    return ""


def _check_contents(
    tree: Path, files: list[tuple[str, FileEntry]], inspection: Inspection, workers: int | None
) -> None:
    if not files:
        return
    tasks = [HashTask(os.fspath(tree / rel)) for rel, _ in files]
    results = digest_files(tasks, workers=workers, threads=True)
    for (rel, entry), result in zip(files, results, strict=True):
        assert entry.digest is not None
        if result.error is not None:
            inspection.flag(
                rel,
                kind=K.AUDIT_ERROR,
                severity=V.WARNING,
                detail=f"{rel}: {result.error}",
            )
            continue
        inspection.files_hashed += 1
        inspection.bytes_hashed += entry.size
        if result.digest == entry.digest:
            inspection.verified.append((inspection.stats[rel], entry.digest))
        else:
            inspection.corrupt.add(entry.digest)
            inspection.flag(
                rel,
                kind=K.MODIFIED,
                severity=V.CRITICAL,
                detail=f"{rel}: content differs (sha256 {result.digest[:12]}…, "
                f"expected {entry.digest[:12]}…)",
                expected=entry.digest,
                actual=result.digest,
            )
