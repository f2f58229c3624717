"""Signed checkpoints of the audit log, kept outside the database.

The hash chain shows an edited or removed entry in the middle of the log;
it cannot show that the whole chain was rewritten, or its newest entries cut
off, by someone with write access to the database. So the control plane
signs ``(seq, head hash, time)`` with its own Ed25519 key at an interval and
on shutdown, and appends it to a file elsewhere (``audit_checkpoints``,
default ``DATA/audit/checkpoints.jsonl``). Verification checks every
checkpoint's signature against the configured public key and that the chain
still holds each checkpointed entry with the same hash.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from knightwatch.bundle.blobstore import fsync_directory
from knightwatch.canonical import canonical_json, sha256_hex
from knightwatch.control.auditlog import ChainReport
from knightwatch.errors import StoreError

__all__ = ["Checkpoint", "CheckpointLog", "checkpoint_problems"]


@dataclass(frozen=True)
class Checkpoint:
    """One signed statement: the audit log held entry ``seq`` with hash ``head`` at ``at``."""

    seq: int
    head: str
    at: str
    key_id: str
    signature: str

    def statement(self) -> bytes:
        """The bytes that were signed."""
        return canonical_json({"seq": self.seq, "head": self.head, "at": self.at})


def _key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_hex(raw)[:16]


class CheckpointLog:
    """The checkpoint file and the key that signs it (created on first use, mode 0600)."""

    def __init__(self, path: Path, key_path: Path) -> None:
        self.path = path
        self.key_path = key_path
        self._key: Ed25519PrivateKey | None = None

    def _signing_key(self) -> Ed25519PrivateKey:
        if self._key is None:
            self._key = _load_or_create_key(self.key_path)
        return self._key

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The key checkpoints are verified with."""
        return self._signing_key().public_key()

    def write(self, seq: int, head: str, at: datetime) -> Checkpoint:
        """Sign and append one checkpoint (fsynced before it returns)."""
        key = self._signing_key()
        moment = at.astimezone(UTC).isoformat(timespec="microseconds")
        unsigned = Checkpoint(seq, head, moment, _key_id(key.public_key()), "")
        signature = base64.b64encode(key.sign(unsigned.statement())).decode()
        checkpoint = Checkpoint(seq, head, moment, unsigned.key_id, signature)
        line = json.dumps(checkpoint.__dict__, sort_keys=True) + "\n"
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_directory(self.path.parent)
        return checkpoint

    def read(self) -> tuple[list[Checkpoint], list[str]]:
        """Every checkpoint in the file, and a problem for each line that is not one."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return [], []
        except OSError as exc:
            return [], [f"cannot read {self.path}: {exc.strerror}"]
        found: list[Checkpoint] = []
        problems: list[str] = []
        for number, line in enumerate(lines, start=1):
            try:
                found.append(Checkpoint(**json.loads(line)))
            except (ValueError, TypeError):
                problems.append(f"{self.path} line {number} is not a checkpoint")
        return found, problems


def checkpoint_problems(
    report: ChainReport, checkpoints: list[Checkpoint], public: Ed25519PublicKey
) -> list[str]:
    """What the checkpoints say is wrong with the chain (empty: they agree with it)."""
    problems: list[str] = []
    hashes = report.hashes or {}
    for cp in checkpoints:
        try:
            public.verify(base64.b64decode(cp.signature), cp.statement())
        except (InvalidSignature, ValueError):
            problems.append(
                f"the checkpoint of {cp.at} (entry {cp.seq}) is not signed by this "
                "control plane's checkpoint key"
            )
            continue
        if cp.seq > report.head_seq and report.ok:
            problems.append(
                f"the log ends at entry {report.head_seq}, but the checkpoint of {cp.at} "
                f"recorded entry {cp.seq}: entries were deleted"
            )
        elif cp.seq in hashes and hashes[cp.seq] != cp.head:
            problems.append(
                f"entry {cp.seq} differs from the checkpoint of {cp.at}: the chain was rewritten"
            )
    return problems


def _load_or_create_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            fsync_directory(path.parent)
        data = path.read_bytes()
    loaded: Any = serialization.load_pem_private_key(data, password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise StoreError(f"{path} is not an Ed25519 private key")
    return loaded
