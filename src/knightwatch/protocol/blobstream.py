"""Many blobs in one HTTP body: the framing used for pushes and agent downloads.

One request per blob costs more than the blob for small files (a 4 KiB file
is a few microseconds of copying but a millisecond of HTTP), so bulk
transfers stream blobs back to back, each framed as::

    <64 lowercase hex digest> SP <decimal size> LF  <size bytes>

The receiver hashes every blob as it arrives and refuses one whose bytes do
not match its digest; framing errors are refused with their offset.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "BlobChunk",
    "BlobEnd",
    "BlobStart",
    "BlobStreamError",
    "BlobStreamReader",
    "blob_header",
]

_HEADER = re.compile(rb"^([0-9a-f]{64}) ([0-9]{1,15})\n$")
_MAX_HEADER = 64 + 1 + 15 + 1


class BlobStreamError(ValueError):
    """The stream is not a valid sequence of framed blobs."""


def blob_header(digest: str, size: int) -> bytes:
    """Return the frame header announcing ``size`` bytes of blob ``digest``."""
    return f"{digest} {size}\n".encode("ascii")


@dataclass(frozen=True)
class BlobStart:
    """A blob begins: ``size`` bytes follow."""

    digest: str
    size: int


@dataclass(frozen=True)
class BlobChunk:
    """Some bytes of the current blob."""

    data: bytes


@dataclass(frozen=True)
class BlobEnd:
    """The current blob is complete."""

    digest: str


BlobEvent = BlobStart | BlobChunk | BlobEnd


class BlobStreamReader:
    """Turns arbitrary chunks of a framed stream into blob events, incrementally."""

    def __init__(self) -> None:
        self._buffer = b""
        self._current: BlobStart | None = None
        self._remaining = 0
        self._offset = 0

    def feed(self, data: bytes) -> Iterator[BlobEvent]:
        """Consume ``data``; yield every event it completes."""
        self._buffer += data
        while self._buffer:
            if self._current is None:
                newline = self._buffer.find(b"\n", 0, _MAX_HEADER)
                if newline < 0:
                    if len(self._buffer) >= _MAX_HEADER:
                        raise BlobStreamError(f"no blob header at byte {self._offset}")
                    return
                yield from self._start(self._buffer[: newline + 1])
                self._buffer = self._buffer[newline + 1 :]
                self._offset += newline + 1
                if self._current is not None and self._remaining == 0:
                    yield from self._end()
                continue
            take = self._buffer[: self._remaining]
            self._buffer = self._buffer[len(take) :]
            self._remaining -= len(take)
            self._offset += len(take)
            yield BlobChunk(take)
            if self._remaining == 0:
                yield from self._end()

    def close(self) -> None:
        """Refuse a stream that ended in the middle of a blob or header."""
        if self._current is not None or self._buffer:
            raise BlobStreamError(f"stream ended inside a blob at byte {self._offset}")

    def _start(self, header: bytes) -> Iterator[BlobEvent]:
        match = _HEADER.match(header)
        if match is None:
            raise BlobStreamError(f"malformed blob header at byte {self._offset}")
        self._current = BlobStart(match.group(1).decode("ascii"), int(match.group(2)))
        self._remaining = self._current.size
        yield self._current

    def _end(self) -> Iterator[BlobEvent]:
        assert self._current is not None
        digest = self._current.digest
        self._current = None
        yield BlobEnd(digest)


class BlobTarget(Protocol):
    """Where one arriving blob goes: written in pieces, then finished or discarded."""

    def write(self, data: bytes) -> None:
        """Append bytes of the blob (hashing them)."""
        ...

    def finish(self) -> None:
        """The blob is complete: check its digest and keep it, or raise."""
        ...

    def discard(self) -> None:
        """The stream stopped inside this blob."""
        ...


class BlobStreamWriter:
    """Feeds a framed stream into one :class:`BlobTarget` per blob.

    ``open_blob`` is called for each blob header; ``completed`` lists the
    digests whose targets finished, even if the stream later fails.
    """

    def __init__(self, open_blob: Callable[[BlobStart], BlobTarget]) -> None:
        self._reader = BlobStreamReader()
        self._open_blob = open_blob
        self._current: BlobTarget | None = None
        self.current_digest = ""
        self.completed: list[str] = []

    def feed(self, data: bytes) -> None:
        """Consume ``data``, opening, writing and finishing targets as blobs go by."""
        for event in self._reader.feed(data):
            if isinstance(event, BlobStart):
                self._current = self._open_blob(event)
                self.current_digest = event.digest
            elif self._current is None:
                raise BlobStreamError("blob data without a header")
            elif isinstance(event, BlobChunk):
                self._current.write(event.data)
            else:
                self._current.finish()
                self.completed.append(event.digest)
                self._current, self.current_digest = None, ""

    def close(self) -> None:
        """Refuse a stream that ended inside a blob."""
        self._reader.close()

    def abandon(self) -> None:
        """Discard the blob in progress, if any (call when the stream failed)."""
        if self._current is not None:
            self._current.discard()
            self._current, self.current_digest = None, ""
