"""Log patterns: regular expressions over the service's output (P6: nothing fails silently).

The agent follows ``ROOT/logs/service.log`` (the service's stdout and
stderr, see :mod:`knightwatch.agent.servicelog`) from its end at start-up,
like ``tail -f``, and matches every new line against the active release's
``[[service.log_pattern]]`` regular expressions. Matches are batched per
second: each pattern that matched in a batch gives one
:class:`AlertEvent` ``log:<name>`` whose ``count`` is the number of matching
lines in the batch (the control plane adds them up on one alert), with the
first matching line since the watch began and the last one in ``detail``.

Rotation is copy-then-truncate: when the file shrinks below the read
position, the rest of the old content is read from ``service.log.1`` first,
so no line is missed. A file replaced by another (a new inode) is read from
its start.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from knightwatch.agent.events import event, logger
from knightwatch.bundle.spec import LogPattern
from knightwatch.clock import Clock
from knightwatch.protocol.safety import AlertEvent

__all__ = ["LOG_PREFIX", "LogTail", "LogWatch"]

LOG_PREFIX = "log:"
MAX_READ_BYTES = 4 * 1024 * 1024
_IDLE_POLL_S = 1.0  # no pattern declared: only keep the read position near the end
MAX_LINE_BYTES = 64 * 1024
_SHOWN_LINE = 1000


class LogTail:
    """Reads the complete lines appended to a copy-truncate rotated file since the last read.

    A rotation is seen when the file is shorter than the read position, or
    when a new rotated copy (``NAME.1``, another inode or mtime) is larger
    than the file: the service may have written past the old position again
    between two reads.
    """

    def __init__(self, path: Path, *, from_start: bool = False) -> None:
        self.path = path
        self.rotated = path.with_name(f"{path.name}.1")
        self._offset = 0
        self._inode: int | None = None
        self._partial = b""
        self._copy = _identity(self.rotated)
        if not from_start:
            try:
                stat = path.stat()
            except FileNotFoundError:
                return
            self._offset, self._inode = stat.st_size, stat.st_ino

    def skip(self) -> None:
        """Pass over whatever was appended since the last read, unread (nobody wants it)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return
        self._inode, self._offset, self._partial = stat.st_ino, stat.st_size, b""
        self._copy = _identity(self.rotated)

    def read(self) -> list[str]:
        """Return the lines completed since the last call (at most a few MiB per call)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        copy = _identity(self.rotated)
        new_copy = copy is not None and copy[:2] != (self._copy or (0, 0))[:2]
        lines: list[str] = []
        if stat.st_ino != self._inode:  # a new file: read it from its start
            self._inode, self._offset, self._partial = stat.st_ino, 0, b""
            self._copy = copy
        elif stat.st_size < self._offset or (new_copy and copy and copy[2] > stat.st_size):
            # rotated: the rest of what we were reading is in the copy
            lines = self._lines(self._rotated_tail(), finish=True)
            self._offset, self._copy = 0, copy
        chunk = _read_from(self.path, self._offset)
        self._offset += len(chunk)
        return lines + self._lines(chunk)

    def _rotated_tail(self) -> bytes:
        try:
            if self.rotated.stat().st_size < self._offset:
                return b""  # not the copy of what we were reading
        except FileNotFoundError:
            return b""
        return _read_from(self.rotated, self._offset)

    def _lines(self, data: bytes, *, finish: bool = False) -> list[str]:
        *complete, self._partial = (self._partial + data).split(b"\n")
        if finish or len(self._partial) > MAX_LINE_BYTES:  # take an unended line as it is
            complete.append(self._partial)
            self._partial = b""
        return [
            line[:MAX_LINE_BYTES].decode("utf-8", "replace").rstrip("\r")
            for line in complete
            if line.strip()
        ]


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime in ns, size) of ``path``, or None if it does not exist."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(MAX_READ_BYTES)
    except FileNotFoundError:
        return b""


@dataclass
class _Tally:
    """One pattern's matches: those not yet reported, and the first one ever seen."""

    pattern: LogPattern
    first_line: str = ""
    first_at: datetime | None = None
    pending: int = 0
    last_line: str = ""
    last_at: datetime | None = None

    def add(self, line: str, now: datetime) -> None:
        if self.first_at is None:
            self.first_line, self.first_at = line, now
        self.pending += 1
        self.last_line, self.last_at = line, now

    def alert(self) -> AlertEvent:
        assert self.first_at is not None and self.last_at is not None
        pattern, count = self.pattern, self.pending
        self.pending = 0
        return AlertEvent(
            rule=LOG_PREFIX + pattern.name,
            severity=pattern.severity,
            summary=f"{count} service log line{'s' if count != 1 else ''} matched "
            f"log pattern {pattern.name} ({pattern.regex})"[:4096],
            detail=f"first matching line ({self.first_at.isoformat()}): "
            f"{self.first_line[:_SHOWN_LINE]}\n"
            f"last matching line ({self.last_at.isoformat()}): {self.last_line[:_SHOWN_LINE]}",
            count=count,
            first_at=self.first_at,
            last_at=self.last_at,
        )


class LogWatch:
    """Matches the service's new log lines against the release's patterns; batches alerts."""

    def __init__(
        self,
        path: Path,
        patterns: Callable[[], Sequence[LogPattern]],
        send: Callable[[list[AlertEvent]], None],
        *,
        clock: Clock,
        poll_s: float = 0.2,
        batch_s: float = 1.0,
        from_start: bool = False,
    ) -> None:
        self.tail = LogTail(path, from_start=from_start)
        self._patterns = patterns
        self._send = send
        self._clock = clock
        self.poll_s = poll_s
        self.batch_s = batch_s
        self._compiled: dict[LogPattern, re.Pattern[str]] = {}
        self._tallies: dict[str, _Tally] = {}

    def scan(self) -> int:
        """Read the new lines and count the matches; return how many lines matched."""
        lines = self.tail.read()
        patterns = self._patterns()
        if not lines or not patterns:
            return 0
        now, matched = self._clock.now(), 0
        for pattern in patterns:
            regex = self._regex(pattern)
            tally = self._tallies.get(pattern.name)
            if tally is None or tally.pattern != pattern:
                tally = self._tallies[pattern.name] = _Tally(pattern)
            for line in lines:
                if regex.search(line):
                    tally.add(line, now)
                    matched += 1
        return matched

    def flush(self) -> list[AlertEvent]:
        """Return one alert per pattern that matched since the last flush."""
        alerts = [tally.alert() for tally in self._tallies.values() if tally.pending]
        for alert in alerts:
            event("log-pattern-matched", rule=alert.rule, count=alert.count)
        return alerts

    async def run(self) -> None:
        """Scan every ``poll_s`` and send the batch every ``batch_s``, until cancelled."""
        loop = asyncio.get_running_loop()
        next_flush = loop.time() + self.batch_s
        while True:
            watching = bool(self._patterns())
            try:
                if watching:
                    await asyncio.to_thread(self.scan)
                else:  # no pattern: no thread hand-off five times a second for nothing
                    self.tail.skip()
            except OSError as exc:  # an unreadable log must not stop the agent
                event("log-watch-failed", path=str(self.tail.path), reason=str(exc)[:200])
            except Exception:
                logger.exception("log-watch-failed")
            if loop.time() >= next_flush:
                next_flush = loop.time() + self.batch_s
                alerts = self.flush()
                if alerts:
                    self._send(alerts)
            await asyncio.sleep(self.poll_s if watching else max(self.poll_s, _IDLE_POLL_S))

    def _regex(self, pattern: LogPattern) -> re.Pattern[str]:
        regex = self._compiled.get(pattern)
        if regex is None:
            regex = self._compiled[pattern] = re.compile(pattern.regex)
        return regex
