"""Reading a source tree: every path checked against the build rules.

A release is an exact set of regular files (and, when allowed, symlinks that
stay inside the tree). Anything else — devices, FIFOs, sockets, escaping
symlinks, names that are not UTF-8 or that collide after Unicode NFC
normalisation, files over the size limit, files no component owns — is
refused with its path and the rule, before the store is touched.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from knightwatch.bundle.globs import glob_matches
from knightwatch.bundle.hashcache import SourceStat, source_stat
from knightwatch.bundle.spec import SPEC_FILENAME, ReleaseSpec
from knightwatch.errors import SourceTreeError

__all__ = ["IDENTITY_DIR", "IDENTITY_PATH", "SourceEntry", "scan_source"]

IDENTITY_DIR = ".knightwatch"
IDENTITY_PATH = f"{IDENTITY_DIR}/release.json"
_ALWAYS_SKIPPED = {".git"}
_MAX_REPORTED = 8


@dataclass(frozen=True)
class SourceEntry:
    """One path of the release as found in the source tree."""

    path: str
    """Relative POSIX path, valid UTF-8, in NFC."""
    absolute: Path
    size: int
    executable: bool
    component: str
    symlink_target: str | None = None
    mtime: float = 0.0
    stat: SourceStat | None = None
    """The stat key the build's hash cache compares (regular files)."""


def scan_source(source: Path, spec: ReleaseSpec) -> list[SourceEntry]:
    """Walk ``source`` deterministically and return its entries, sorted by path.

    Raise :class:`SourceTreeError` naming every offending path (the first in
    the message, a count of the rest) if any build rule is broken.
    """
    problems: list[tuple[str, str]] = []
    entries: list[SourceEntry] = []
    root = os.fsencode(source)
    for rel, st in _walk(root, b"", spec, problems):
        entry = _entry(source, rel, st, spec, problems)
        if entry is not None:
            entries.append(entry)
    _check_nfc_collisions(entries, problems)
    if problems:
        raise _tree_error(problems)
    entries.sort(key=lambda e: e.path)
    return entries


def _walk(
    root: bytes, rel: bytes, spec: ReleaseSpec, problems: list[tuple[str, str]]
) -> Iterator[tuple[bytes, os.stat_result]]:
    directory = os.path.join(root, rel) if rel else root
    try:
        with os.scandir(directory) as it:
            children = sorted(it, key=lambda entry: entry.name)
    except OSError as exc:
        problems.append((_display(rel or b"."), f"directory cannot be read: {exc.strerror}"))
        return
    for child in children:
        child_rel = os.path.join(rel, child.name) if rel else child.name
        if not rel and child.name in (
            SPEC_FILENAME.encode(),
            *(n.encode() for n in _ALWAYS_SKIPPED),
        ):
            continue
        if _excluded(child_rel, spec):
            continue
        try:
            st = os.lstat(child.path)
        except OSError as exc:
            problems.append((_display(child_rel), f"cannot be read: {exc.strerror}"))
            continue
        if stat.S_ISDIR(st.st_mode):
            if child.name in (n.encode() for n in _ALWAYS_SKIPPED):
                continue
            yield from _walk(root, child_rel, spec, problems)
        else:
            yield child_rel, st


def _excluded(rel: bytes, spec: ReleaseSpec) -> bool:
    if not spec.release.exclude:
        return False
    try:
        text = rel.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return any(glob_matches(glob, text) for glob in spec.release.exclude)


def _entry(
    source: Path, rel: bytes, st: os.stat_result, spec: ReleaseSpec, problems: list[tuple[str, str]]
) -> SourceEntry | None:
    try:
        path = rel.decode("utf-8")
    except UnicodeDecodeError:
        problems.append((_display(rel), "file name is not valid UTF-8"))
        return None
    if path == IDENTITY_DIR or path.startswith(IDENTITY_DIR + "/"):
        problems.append((path, f"{IDENTITY_DIR}/ is reserved for the embedded release identity"))
        return None
    target = _check_type(source, path, st, spec, problems)
    if target is False:
        return None
    if st.st_size > spec.release.max_file_size and target is None:
        problems.append(
            (
                path,
                f"file is {st.st_size} bytes, over the limit of "
                f"{spec.release.max_file_size} (release.max_file_size)",
            )
        )
        return None
    component = _owner(path, spec, problems)
    if component is None:
        return None
    return SourceEntry(
        path=path,
        absolute=source / path,
        size=0 if target is not None else st.st_size,
        mtime=st.st_mtime,
        executable=target is None and bool(st.st_mode & 0o111),
        component=component,
        symlink_target=target if isinstance(target, str) else None,
        stat=source_stat(st) if target is None else None,
    )


def _check_type(
    source: Path, path: str, st: os.stat_result, spec: ReleaseSpec, problems: list[tuple[str, str]]
) -> str | bool | None:
    """Return None for a regular file, the target for an allowed symlink, False if refused."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return _check_symlink(source, path, spec, problems)
    kind = (
        "FIFO"
        if stat.S_ISFIFO(mode)
        else "socket"
        if stat.S_ISSOCK(mode)
        else "device file"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "special file"
    )
    problems.append((path, f"is a {kind}; a release holds only regular files"))
    return False


def _check_symlink(
    source: Path, path: str, spec: ReleaseSpec, problems: list[tuple[str, str]]
) -> str | bool:
    target = os.readlink(source / path)
    if not spec.release.allow_symlinks:
        problems.append(
            (
                path,
                f"is a symlink (to {target!r}); symlinks are refused unless "
                "release.allow_symlinks = true",
            )
        )
        return False
    resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
    root = os.path.realpath(source)
    real = os.path.realpath(source / path)
    escapes = os.path.commonpath([root, real]) != root
    if os.path.isabs(target) or resolved == ".." or resolved.startswith("../") or escapes:
        problems.append((path, f"symlink target {target!r} leaves the source tree"))
        return False
    return target


def _owner(path: str, spec: ReleaseSpec, problems: list[tuple[str, str]]) -> str | None:
    owners = [c.name for c in spec.component if any(glob_matches(g, path) for g in c.paths)]
    if len(owners) == 1:
        return owners[0]
    if not owners:
        problems.append(
            (
                path,
                "matches no component's paths; every file must belong to exactly one [[component]]",
            )
        )
    else:
        problems.append(
            (
                path,
                f"matches several components ({', '.join(owners)}); every "
                "file must belong to exactly one",
            )
        )
    return None


def _check_nfc_collisions(entries: list[SourceEntry], problems: list[tuple[str, str]]) -> None:
    seen: dict[str, str] = {}
    for entry in entries:
        normal = unicodedata.normalize("NFC", entry.path)
        other = seen.get(normal)
        if other is not None:
            problems.append((entry.path, f"equals {other!r} after Unicode NFC normalisation"))
        seen[normal] = entry.path


def _display(rel: bytes) -> str:
    return rel.decode("utf-8", errors="backslashreplace")


def _tree_error(problems: list[tuple[str, str]]) -> SourceTreeError:
    path, rule = problems[0]
    if len(problems) > 1:
        others = "; ".join(f"{p}: {r}" for p, r in problems[1:_MAX_REPORTED])
        more = len(problems) - _MAX_REPORTED
        rule += f" (and {len(problems) - 1} more problem(s): {others}"
        rule += f"; … {more} more)" if more > 0 else ")"
    return SourceTreeError(
        path, rule, hint="fix or exclude these paths (release.exclude), then build again"
    )
