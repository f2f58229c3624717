"""The immutable version ID embedded in every release tree.

``.knightwatch/release.json`` is an ordinary file of the manifest, so a tree
copied anywhere still says what it is. Its build time comes from
SOURCE_DATE_EPOCH, else the commit time, else the newest source file, so the
same source always gives the same bytes.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from knightwatch.bundle.manifest import SourceInfo
from knightwatch.bundle.spec import ReleaseSpec
from knightwatch.canonical import canonical_json
from knightwatch.errors import InvalidInputError

__all__ = ["IDENTITY_SCHEMA", "identity_bytes", "source_info"]

IDENTITY_SCHEMA = "knightwatch.release/v1"


def source_info(source: Path, newest_mtime: float, environ: Mapping[str, str]) -> SourceInfo:
    """Describe the source: VCS commit (if any) and a reproducible build time."""
    commit, commit_time, dirty = _git_state(source)
    epoch = environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None:
        if not epoch.isdigit():
            raise InvalidInputError(
                f"SOURCE_DATE_EPOCH={epoch!r} is not a whole number of seconds",
                hint="set it to a Unix time, e.g. $(git log -1 --format=%ct)",
            )
        when, origin = int(epoch), "SOURCE_DATE_EPOCH"
    elif commit_time is not None:
        when, origin = commit_time, "commit"
    else:
        when, origin = int(newest_mtime), "newest-file"
    stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return SourceInfo(
        vcs="git" if commit else None,
        commit=commit,
        dirty=dirty,
        build_time=stamp,
        build_time_source=origin,
    )


def identity_bytes(spec: ReleaseSpec, info: SourceInfo) -> bytes:
    """Return the bytes of ``.knightwatch/release.json`` for this release."""
    return (
        canonical_json(
            {
                "schema": IDENTITY_SCHEMA,
                "name": spec.release.name,
                "version": spec.release.version,
                "source": info.model_dump(mode="json"),
            }
        )
        + b"\n"
    )


def _git_state(source: Path) -> tuple[str | None, int | None, bool]:
    head = _git(source, ["log", "-1", "--format=%H %ct"])
    if not head:
        return None, None, False
    commit, _, seconds = head.partition(" ")
    status = _git(source, ["status", "--porcelain", "--untracked-files=normal", "--", "."])
    return commit, int(seconds), bool(status)


def _git(source: Path, args: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", os.fspath(source), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
