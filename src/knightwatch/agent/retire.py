"""Removing a retired release from the node, and proving it is gone (P3).

Retired code must not linger on disk for years, as Power Peg did. The tree
and its kept manifest are deleted; then absence is verified, not assumed:
no tree, no half-staged copy, no manifest, and no process whose working
directory, executable or open files lie in the deleted tree.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from knightwatch.agent.layout import NodeLayout, remove_tree
from knightwatch.protocol.audit import Retire, RetireResult

__all__ = ["processes_using", "retire_release"]

_PROC = Path("/proc")


def retire_release(layout: NodeLayout, command: Retire) -> RetireResult:
    """Delete ``command.digest``'s tree and manifest; report whether absence is verified."""
    digest = command.digest
    problems: list[str] = []
    try:
        layout.remove_release(digest)
        layout.manifest_file(digest).unlink(missing_ok=True)
        for leftover in layout.releases_dir.glob(f".*{digest}*"):
            remove_tree(leftover)
    except OSError as exc:
        problems.append(f"cannot delete: {exc.strerror or exc}")
    tree = layout.release_dir(digest)
    if os.path.lexists(tree):
        problems.append(f"{tree} still exists")
    if layout.manifest_file(digest).exists():
        problems.append(f"{layout.manifest_file(digest)} still exists")
    leftovers = [p.name for p in layout.releases_dir.glob(f".*{digest}*")]
    if leftovers:
        problems.append("leftovers: " + ", ".join(sorted(leftovers)))
    users = processes_using(tree)
    if users:
        problems.append("still used by pid " + ", ".join(str(pid) for pid in users))
    if problems:
        return RetireResult(
            retirement_id=command.retirement_id,
            digest=digest,
            absent=False,
            detail="; ".join(problems)[:2000],
        )
    return RetireResult(
        retirement_id=command.retirement_id,
        digest=digest,
        absent=True,
        detail=f"{tree} is gone; no manifest, no leftovers, no process uses it",
    )


def processes_using(tree: Path) -> list[int]:
    """Pids whose cwd, executable, open files or mappings lie in ``tree`` (even deleted)."""
    prefix = os.fspath(tree)
    found = []
    for name in _pids():
        if any(_in_tree(link, prefix) for link in _links(name)):
            found.append(int(name))
    return sorted(found)


def _pids() -> list[str]:
    try:
        return [name for name in os.listdir(_PROC) if name.isdigit()]
    except OSError:
        return []


def _links(pid: str) -> list[str]:
    base = _PROC / pid
    links = []
    for link in ("cwd", "exe"):
        with contextlib.suppress(OSError):
            links.append(os.readlink(base / link))
    try:
        for fd in os.listdir(base / "fd"):
            try:
                links.append(os.readlink(base / "fd" / fd))
            except OSError:
                continue
    except OSError:
        pass
    return links


def _in_tree(path: str, prefix: str) -> bool:
    path = path.removesuffix(" (deleted)")
    return path == prefix or path.startswith(prefix + "/")
