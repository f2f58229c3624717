"""Hashing files with SHA-256 in worker processes, staging new blobs as we go.

Processes, not threads: on many small files the per-file Python work holds
the GIL, so threads are slower than one process. Each worker reads a file
once when it is small (hash and, if the blob is new, write the same bytes),
and for a large file hashes first and copies only when the blob is missing,
re-hashing the copy so a file that changes under us is caught.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from knightwatch.bundle.blobstore import start_writeback

__all__ = ["FileDigest", "HashTask", "digest_files", "worker_count"]

_SMALL = 16 * 1024 * 1024
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class HashTask:
    """One file to hash; ``stage_dir`` set means new blobs are written there."""

    source: str
    blobs_dir: str | None = None
    stage_dir: str | None = None


@dataclass(frozen=True)
class FileDigest:
    """The outcome of hashing one file (``error`` set when it could not be read)."""

    source: str
    digest: str = ""
    size: int = 0
    staged: bool = False
    error: str | None = None


def worker_count() -> int:
    """Return how many hashing processes to use on this machine."""
    return max(1, min(os.cpu_count() or 1, 16))


def digest_files(
    tasks: Sequence[HashTask],
    *,
    workers: int | None = None,
    on_done: Callable[[FileDigest], None] | None = None,
    threads: bool = False,
) -> list[FileDigest]:
    """Hash every task's file, in worker processes when there are enough files.

    ``threads`` uses a thread pool instead: right for a long-running,
    multi-threaded process (the agent), which must not fork and would pay a
    forkserver's start-up on every call; hashlib releases the GIL on large
    buffers, so threads still use every core on big files.
    Results come back in task order; ``on_done`` is called as each finishes.
    """
    workers = workers or worker_count()
    results: list[FileDigest] = []
    runs = _run_threads(tasks, workers) if threads else _run(tasks, workers)
    for result in runs:
        results.append(result)
        if on_done is not None:
            on_done(result)
    return results


def _run(tasks: Sequence[HashTask], workers: int) -> Iterator[FileDigest]:
    if workers == 1 or len(tasks) < 64:
        yield from map(hash_task, tasks)
        return
    chunk = max(1, min(256, len(tasks) // (workers * 16)))
    context = multiprocessing.get_context(_start_method())
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(hash_task, tasks, chunksize=chunk)


def _run_threads(tasks: Sequence[HashTask], workers: int) -> Iterator[FileDigest]:
    if workers == 1 or len(tasks) < 64:
        yield from map(hash_task, tasks)
        return
    # Hand threads runs of files: one pool task per file costs more than hashing a small one.
    size = max(1, min(256, len(tasks) // (workers * 8)))
    runs = [tasks[i : i + size] for i in range(0, len(tasks), size)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hash") as pool:
        for results in pool.map(_hash_run, runs):
            yield from results


def _hash_run(tasks: Sequence[HashTask]) -> list[FileDigest]:
    return [hash_task(task) for task in tasks]


def _start_method() -> str:
    # fork starts workers in milliseconds but is only safe while no other thread
    # holds a lock; forkserver is safe always but re-imports the program (~0.5 s).
    return "fork" if threading.active_count() == 1 else "forkserver"


def hash_task(task: HashTask) -> FileDigest:
    """Hash one file (and stage it as a blob if asked); never raises for I/O errors."""
    try:
        return _hash_task(task)
    except OSError as exc:
        return FileDigest(task.source, error=f"cannot be read: {exc.strerror or exc}")


def _hash_task(task: HashTask) -> FileDigest:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(task.source, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return FileDigest(task.source, error="is no longer a regular file")
        if st.st_size <= _SMALL:
            return _small_file(task, fd, st.st_size)
        return _large_file(task, fd, st.st_size)
    finally:
        os.close(fd)


def _small_file(task: HashTask, fd: int, size: int) -> FileDigest:
    data = _read_all(fd, size)
    if len(data) != size:
        return FileDigest(task.source, error="changed while it was being read")
    digest = hashlib.sha256(data).hexdigest()
    staged = False
    if task.stage_dir is not None and not _present(task, digest):
        staged = _write_staged(Path(task.stage_dir), digest, [data])
    return FileDigest(task.source, digest, size, staged)


def _large_file(task: HashTask, fd: int, size: int) -> FileDigest:
    digest, seen = _hash_stream(_chunks(fd))
    if seen != size:
        return FileDigest(task.source, error="changed while it was being read")
    staged = False
    if task.stage_dir is not None and not _present(task, digest):
        os.lseek(fd, 0, os.SEEK_SET)
        copy_digest = hashlib.sha256()

        def hashed_chunks() -> Iterator[bytes]:
            for chunk in _chunks(fd):
                copy_digest.update(chunk)
                yield chunk

        staged = _write_staged(Path(task.stage_dir), digest, hashed_chunks())
        if copy_digest.hexdigest() != digest:
            (Path(task.stage_dir) / digest).unlink(missing_ok=True)
            return FileDigest(task.source, error="changed while it was being read")
    return FileDigest(task.source, digest, size, staged)


def _present(task: HashTask, digest: str) -> bool:
    if task.blobs_dir is None:
        return False
    return os.path.exists(os.path.join(task.blobs_dir, digest[:2], digest[2:]))


def _write_staged(stage_dir: Path, digest: str, chunks: Iterable[bytes]) -> bool:
    final = stage_dir / digest
    temp = stage_dir / f".{digest}.{os.getpid()}"
    with temp.open("wb") as out:
        for chunk in chunks:
            out.write(chunk)
        out.flush()
        start_writeback(out.fileno())
    os.chmod(temp, 0o444)
    try:
        os.link(temp, final)
    except FileExistsError:
        return False
    finally:
        temp.unlink()
    return True


def _read_all(fd: int, size: int) -> bytes:
    parts: list[bytes] = []
    remaining = size + 1
    while remaining > 0:
        part = os.read(fd, min(remaining, _SMALL + 1))
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _chunks(fd: int) -> Iterator[bytes]:
    while True:
        chunk = os.read(fd, _CHUNK)
        if not chunk:
            return
        yield chunk


def _hash_stream(chunks: Iterable[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    seen = 0
    for chunk in chunks:
        digest.update(chunk)
        seen += len(chunk)
    return digest.hexdigest(), seen
