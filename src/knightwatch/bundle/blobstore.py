"""The content-addressed blob store: ``ROOT/blobs/sha256/<2 hex>/<62 hex>``.

A blob's name is the SHA-256 of its bytes, so ``sha256sum`` of any blob
equals its name and identical files are stored once. New blobs are written
into a staging area first and published by ``rename(2)`` only after the whole
operation succeeded, so a refused or interrupted build leaves no blob behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from knightwatch.errors import StoreError

__all__ = [
    "BlobStore",
    "StagingArea",
    "fsync_directory",
    "is_digest",
    "start_writeback",
    "sync_filesystem",
]

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def is_digest(text: str) -> bool:
    """Tell whether ``text`` is a lowercase hex SHA-256 digest."""
    return _DIGEST.fullmatch(text) is not None


class BlobStore:
    """Blobs under ``root/blobs/sha256``, addressed by their SHA-256."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs" / "sha256"

    def path_of(self, digest: str) -> Path:
        """Return where the blob with ``digest`` lives (whether or not it exists)."""
        if not is_digest(digest):
            raise StoreError(f"{digest!r} is not a SHA-256 digest")
        return self.blobs_dir / digest[:2] / digest[2:]

    def path_text(self, digest: str) -> str:
        """:meth:`path_of` as a string, for digests already validated (a manifest's, say)."""
        return f"{self._blobs_text}/{digest[:2]}/{digest[2:]}"

    @property
    def _blobs_text(self) -> str:
        return os.fspath(self.blobs_dir)

    def has(self, digest: str) -> bool:
        """Tell whether the blob is present."""
        return self.path_of(digest).is_file()

    def read(self, digest: str) -> bytes:
        """Return the bytes of a blob; raise StoreError if it is missing."""
        try:
            return self.path_of(digest).read_bytes()
        except OSError as exc:
            raise StoreError(f"blob {digest} cannot be read: {exc.strerror}") from exc

    def publish(self, staged: Path, digest: str) -> bool:
        """Move a staged file into place as blob ``digest``; False if it was already there."""
        final = self.path_of(digest)
        if final.exists():
            staged.unlink()
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        return True


class StagingArea:
    """A private directory inside the store for one operation's unpublished files.

    Use as a context manager: on error everything staged is deleted and any
    directory the operation created in an empty store is removed again.
    """

    def __init__(self, store_root: Path, purpose: str) -> None:
        self.store_root = store_root
        self._purpose = purpose
        self._created: list[Path] = []
        self.path = Path()

    def __enter__(self) -> StagingArea:
        missing = [p for p in reversed(self.store_root.parents) if not p.exists()]
        for directory in (*missing, self.store_root, self.store_root / ".tmp"):
            if not directory.exists():
                try:
                    directory.mkdir(parents=True)
                except OSError as exc:
                    self._remove_created()
                    raise StoreError(f"cannot create {directory}: {exc.strerror}") from exc
                self._created.append(directory)
        self.path = Path(tempfile.mkdtemp(prefix=f"{self._purpose}-", dir=self.store_root / ".tmp"))
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if exc_type is not None:
            self._remove_created()
        else:
            _rmdir_if_empty(self.store_root / ".tmp")

    def _remove_created(self) -> None:
        for directory in reversed(self._created):
            _remove_tree_of_empty_dirs(directory)


def _rmdir_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):
        directory.rmdir()


def _remove_tree_of_empty_dirs(directory: Path) -> None:
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            _remove_tree_of_empty_dirs(child)
    _rmdir_if_empty(directory)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


_LIBC = _libc()
_SYNC_FILE_RANGE = getattr(_LIBC, "sync_file_range", None)
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Start writing a just-written file to disk without waiting (``sync_file_range``).

    The one ``syncfs`` that makes a tree durable then finds most of its bytes
    already written, instead of writing them all while everything waits.
    Where the call does not exist this does nothing: the ``syncfs`` still flushes.
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, ctypes.c_int64(0), ctypes.c_int64(0), _SYNC_FILE_RANGE_WRITE)


def sync_filesystem(paths: Iterable[Path]) -> None:
    """Flush every dirty page of the filesystems holding ``paths`` to disk.

    One ``syncfs(2)`` is far cheaper than an ``fsync`` per blob for thousands
    of small files; where it is unavailable we fall back to ``sync(2)``.
    """
    syncfs = getattr(_LIBC, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)


def fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
