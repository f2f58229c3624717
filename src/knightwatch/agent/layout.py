"""The node's directory layout and the few operations that must be atomic.

::

    ROOT/blobs/sha256/ab/cdef…     content-addressed cache (bundle.blobstore layout)
    ROOT/blobs/.partial/<digest>   interrupted downloads, resumed with HTTP Range
    ROOT/releases/<digest>/        one verified, read-only tree per staged release
    ROOT/current -> releases/<d>   replaced by rename(2) of a fresh symlink, then fsync ROOT
    ROOT/state.json                the agent's journal
    ROOT/flags.json                flag values for the service (docs/flags-file.md)
    ROOT/flag-evaluations/<pid>.json  the SDK's evaluation counts, per service process
    ROOT/sdk/knightwatch/sdk/      the flag SDK, on every Python service's PYTHONPATH
    ROOT/agent/                    node.key, credential.json, trusted/*.pub, manifests/
    ROOT/data/<data_dir>           the service's writable data, shared across releases
    ROOT/logs/service.log          the service's output

Every file the agent writes goes through :func:`atomic_write` (temp, fsync,
rename, fsync the directory), so a crash leaves the old or the new content,
never a mix. Trees appear under ``releases/`` only by ``rename(2)`` and
leave it the same way (to ``.trash-…``) before they are deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import stat
from pathlib import Path

from knightwatch.agent.errors import SwitchError
from knightwatch.bundle.blobstore import BlobStore, fsync_directory, is_digest

__all__ = ["NodeLayout", "atomic_write", "exchange_paths", "make_tree_writable", "remove_tree"]

_STAGING_PREFIX = ".staging-"
_RESTAGED_PREFIX = ".restaged-"
_TRASH_PREFIX = ".trash-"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_CURRENT_TMP_PREFIX = "current.tmp-"


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new bytes."""
    temp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def make_tree_writable(top: Path) -> None:
    """Give the owner write permission on every directory of a tree (files keep their mode).

    Deleting a file needs a writable directory, not a writable file; files
    in a release tree may be hard links to cached blobs, whose mode must stay
    read-only, so only directories are touched.
    """
    if top.is_symlink() or not top.is_dir():
        return
    os.chmod(top, stat.S_IMODE(os.lstat(top).st_mode) | stat.S_IWUSR | stat.S_IXUSR)
    for directory, subdirs, _files in os.walk(top):
        for name in subdirs:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IWUSR | stat.S_IXUSR)


class NodeLayout:
    """Paths under the agent's ROOT, and the atomic operations on them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = BlobStore(root)
        self.partial_dir = root / "blobs" / ".partial"
        self.releases_dir = root / "releases"
        self.current = root / "current"
        self.state_file = root / "state.json"
        self.flags_file = root / "flags.json"
        self.agent_dir = root / "agent"
        self.node_key_file = self.agent_dir / "node.key"
        self.credential_file = self.agent_dir / "credential.json"
        self.trusted_dir = self.agent_dir / "trusted"
        self.manifests_dir = self.agent_dir / "manifests"
        self.data_dir = root / "data"
        self.logs_dir = root / "logs"
        self.evaluations_dir = root / "flag-evaluations"
        self.service_log = self.logs_dir / "service.log"

    def ensure(self) -> None:
        """Create every directory of the layout, and an empty flags file if there is none."""
        for directory in (
            self.blobs.blobs_dir,
            self.partial_dir,
            self.releases_dir,
            self.trusted_dir,
            self.manifests_dir,
            self.data_dir,
            self.logs_dir,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.agent_dir, 0o700)
        if not self.flags_file.exists():
            atomic_write(self.flags_file, b"{}\n")

    def release_dir(self, digest: str) -> Path:
        """Return ``ROOT/releases/<digest>`` (whether or not it exists)."""
        if not is_digest(digest):
            raise ValueError(f"{digest!r} is not a SHA-256 digest")
        return self.releases_dir / digest

    def manifest_file(self, digest: str) -> Path:
        """Where the agent keeps the verified manifest of a staged release."""
        return self.manifests_dir / f"{digest}.json"

    def release_digests(self) -> list[str]:
        """Return the digests of every release tree on disk, sorted."""
        try:
            names = os.listdir(self.releases_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_digest(n) and (self.releases_dir / n).is_dir())

    def active_digest(self) -> str | None:
        """The digest ``current`` points at, or None when there is no usable ``current``."""
        try:
            target = os.readlink(self.current)
        except (FileNotFoundError, OSError):
            return None
        parent, _, name = target.rstrip("/").rpartition("/")
        if parent not in ("releases", os.fspath(self.releases_dir)) or not is_digest(name):
            return None
        return name if (self.releases_dir / name).is_dir() else None

    def switch_current(self, digest: str) -> None:
        """Point ``current`` at ``releases/<digest>`` atomically, durably."""
        target = self.release_dir(digest)
        if not target.is_dir():
            raise SwitchError(f"cannot switch to {digest[:12]}: {target} does not exist")
        temp = self.root / f"{_CURRENT_TMP_PREFIX}{secrets.token_hex(6)}"
        try:
            os.symlink(f"releases/{digest}", temp)
            os.replace(temp, self.current)
            fsync_directory(self.root)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise SwitchError(
                f"cannot switch {self.current} to {digest[:12]}: {exc.strerror or exc}"
            ) from exc

    def clear_current(self) -> None:
        """Remove ``current`` (no release active), durably; nothing if already absent."""
        try:
            self.current.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SwitchError(f"cannot remove {self.current}: {exc.strerror or exc}") from exc
        fsync_directory(self.root)

    def staging_dir(self, digest: str) -> Path:
        """Return a fresh, unused name for staging ``digest`` beside its final place."""
        return self.releases_dir / f"{_STAGING_PREFIX}{digest}-{secrets.token_hex(4)}"

    def restaged_dir(self, digest: str) -> Path:
        """Where a reconcile keeps a fresh tree of the active release until it is swapped in."""
        return self.releases_dir / f"{_RESTAGED_PREFIX}{digest}"

    def swap_in_restaged(self, digest: str) -> None:
        """Exchange ``releases/<digest>`` with its restaged tree atomically, then drop the old one.

        ``renameat2(RENAME_EXCHANGE)`` swaps both names in one step, so
        ``releases/<digest>`` is a complete tree at every instant; a crash
        leaves the old tree under the restaged name, removed at the next start.
        """
        fresh, live = self.restaged_dir(digest), self.release_dir(digest)
        if live.is_dir():
            exchange_paths(fresh, live)
        else:
            os.rename(fresh, live)
        fsync_directory(self.releases_dir)
        if fresh.exists():
            trash = self.releases_dir / f"{_TRASH_PREFIX}{digest}-{secrets.token_hex(4)}"
            os.rename(fresh, trash)
            remove_tree(trash)

    def remove_release(self, digest: str) -> None:
        """Remove ``releases/<digest>``: renamed away first, so no half tree is ever visible."""
        path = self.release_dir(digest)
        if not path.exists():
            return
        trash = self.releases_dir / f"{_TRASH_PREFIX}{digest}-{secrets.token_hex(4)}"
        os.rename(path, trash)
        fsync_directory(self.releases_dir)
        remove_tree(trash)
        self.manifest_file(digest).unlink(missing_ok=True)

    def clean_leftovers(self) -> list[str]:
        """Delete what a crash may have left half-done; return the names removed."""
        removed: list[str] = []
        if self.releases_dir.is_dir():
            for path in self.releases_dir.iterdir():
                if path.name.startswith((_STAGING_PREFIX, _RESTAGED_PREFIX, _TRASH_PREFIX)):
                    remove_tree(path)
                    removed.append(path.name)
        for directory in (self.root, self.agent_dir, self.trusted_dir, self.manifests_dir):
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                temporary = path.name.startswith(_CURRENT_TMP_PREFIX) or ".tmp-" in path.name
                if temporary and (path.is_symlink() or not path.is_dir()):
                    path.unlink(missing_ok=True)
                    removed.append(path.name)
        return removed


def exchange_paths(first: Path, second: Path) -> None:
    """Swap two paths in one atomic step (Linux ``renameat2`` with ``RENAME_EXCHANGE``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), os.fspath(first), None, os.fspath(second))


def remove_tree(path: Path) -> None:
    """Delete a (possibly read-only) tree, never following symlinks out of it."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return
    make_tree_writable(path)
    shutil.rmtree(path)
