"""Hash proofs: which files the agent hashed, and may take as unchanged while their stat holds.

Re-hashing a 200 MiB tree on every deploy costs seconds, though nearly every
file of a new release is a hard link to a blob the node already hashed. A
:class:`HashProofs` remembers, for each inode whose bytes the agent hashed and
found equal to a digest, that digest and the inode's stat key at that moment
(mode, size, device, inode, mtime, ctime — what git's index compares). Staging,
and the audit's incremental checks, skip hashing a file whose stat key still
equals its proof and whose proven digest is the one the manifest wants there.

What is trusted, and why:

- Any write through the filesystem changes the inode's ctime, and user space
  cannot set ctime back (``utime`` restores mtime, not ctime), so a file whose
  whole stat key is unchanged holds the bytes that were hashed. Only root
  writing the block device underneath, or moving the system clock back, gets
  past that; the scheduled full re-hash, the re-hash after lost watch events
  and an operator's audit never use proofs, and catch both.
- Proofs live in the agent's memory: a restarted agent hashes everything once.
- The watch on the active tree must be unbroken: when it reports lost events
  or fails, every proof is forgotten. A path the watch names is re-hashed in
  full, and the proofs of what it names are replaced by that hash.
- Staging links blobs into a new tree, which changes their ctime itself; a
  proof is carried across such a link only when the inode's stat before the
  link matched it and nothing but ctime and the link count moved.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping

from knightwatch.agent.releaseindex import StatKey, stat_key

__all__ = ["HashProofs", "Inode"]

Inode = tuple[int, int]
"""(device, inode)."""

Proof = tuple[StatKey, str]
"""The inode's stat key when it was hashed, and the digest its bytes had."""


def _inode(key: StatKey) -> Inode:
    return (key[2], key[3])


class HashProofs:
    """Stat keys of inodes whose bytes were hashed and matched, valid while the watch holds."""

    def __init__(self) -> None:
        self._proofs: dict[Inode, Proof] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._proofs)

    def snapshot(self) -> Mapping[Inode, Proof]:
        """A copy of every proof, for one look at a tree."""
        with self._lock:
            return dict(self._proofs)

    def record(self, proofs: Iterable[Proof]) -> None:
        """Remember that each inode held ``digest``'s bytes when it had that stat key."""
        with self._lock:
            for key, digest in proofs:
                self._proofs[_inode(key)] = (key, digest)

    def record_files(self, files: Iterable[tuple[str | os.PathLike[str], str]]) -> None:
        """Record (path, digest) of files the agent has just written and hashed itself."""
        proofs = []
        for path, digest in files:
            try:
                proofs.append((stat_key(os.lstat(path)), digest))
            except OSError:
                continue
        self.record(proofs)

    def carry(self, before: os.stat_result, after: os.stat_result) -> None:
        """Move a proof across the agent's own link or chmod of an inode (ctime moved).

        ``before`` is the stat taken just before, ``after`` just after. The
        proof moves only if ``before`` matched it and mode, size and mtime did
        not change in between; otherwise it is dropped.
        """
        same = (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns) == (
            after.st_dev,
            after.st_ino,
            after.st_size,
            after.st_mtime_ns,
        )
        with self._lock:
            inode = (before.st_dev, before.st_ino)
            proof = self._proofs.pop(inode, None)
            if same and proof is not None and proof[0] == stat_key(before):
                self._proofs[inode] = (stat_key(after), proof[1])

    def copied(self, before: os.stat_result, after: os.stat_result, copy: str) -> None:
        """Prove ``copy`` if its source's proof held ``before`` and still held ``after`` it."""
        with self._lock:
            proof = self._proofs.get((before.st_dev, before.st_ino))
        if proof is None or proof[0] != stat_key(before):
            return
        if stat_key(after) != proof[0]:
            return
        self.record_files([(copy, proof[1])])

    def forget(self, inodes: Iterable[Inode]) -> None:
        """Drop the proofs of ``inodes`` (the watch named them: hash them again)."""
        with self._lock:
            for inode in inodes:
                self._proofs.pop(inode, None)

    def forget_all(self) -> None:
        """Drop every proof (the watch lost events or failed)."""
        with self._lock:
            self._proofs.clear()
