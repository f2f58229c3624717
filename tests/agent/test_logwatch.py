"""Log patterns: following the service log through rotation, and batched alerts with counts.

The log is a real file rotated by the supervisor's own :class:`ServiceLog`
(copy, then truncate), written the way the service writes it: appended.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from knightwatch.agent.logwatch import LogTail, LogWatch
from knightwatch.agent.servicelog import ServiceLog
from knightwatch.bundle.spec import LogPattern
from knightwatch.clock import SystemClock, VirtualClock
from knightwatch.protocol.safety import AlertEvent
from tests.agent.conftest import run

POWER_PEG = LogPattern(name="power-peg", regex="Power Peg disabled", severity="critical")


def append(path: Path, text: str) -> None:
    """Append ``text`` as the service does (O_APPEND)."""
    with path.open("a") as handle:
        handle.write(text)


def watch(path: Path, *patterns: LogPattern) -> tuple[LogWatch, list[AlertEvent]]:
    """A LogWatch over ``path`` with ``patterns`` (POWER_PEG by default) and its sent alerts."""
    sent: list[AlertEvent] = []
    chosen = patterns or (POWER_PEG,)
    return LogWatch(path, lambda: chosen, sent.extend, clock=VirtualClock()), sent


class TestLogTail:
    def test_starts_at_the_end_like_tail_f(self, tmp_path: Path) -> None:
        """Lines written before the watch began are not read."""
        log = tmp_path / "service.log"
        append(log, "old line\n")
        tail = LogTail(log)
        append(log, "new line\n")
        assert tail.read() == ["new line"]
        assert tail.read() == []

    def test_skip_passes_over_what_nobody_wants(self, tmp_path: Path) -> None:
        """Lines appended before a skip (no pattern wanted them) are never read; later ones are."""
        log = tmp_path / "service.log"
        log.touch()
        tail = LogTail(log)
        append(log, "Power Peg disabled while no pattern was declared\n")
        tail.skip()
        append(log, "after\n")
        assert tail.read() == ["after"]

    def test_a_partial_line_waits_for_its_end(self, tmp_path: Path) -> None:
        """A line is read once its newline is written."""
        log = tmp_path / "service.log"
        log.touch()
        tail = LogTail(log)
        append(log, "Power Peg dis")
        assert tail.read() == []
        append(log, "abled\n")
        assert tail.read() == ["Power Peg disabled"]

    def test_copy_truncate_rotation_loses_no_line(self, tmp_path: Path) -> None:
        """Lines not yet read when the log rotates are read from the rotated copy."""
        log = tmp_path / "service.log"
        service_log = ServiceLog(log, max_bytes=10)
        append(log, "one\n")
        tail = LogTail(log)
        append(log, "two\nthree\n")
        assert service_log.rotate_if_needed()
        append(log, "four\n")
        assert tail.read() == ["two", "three", "four"]

    def test_rotation_with_a_shrunken_file_is_seen(self, tmp_path: Path) -> None:
        """After a rotation the new, shorter file is read from its start."""
        log = tmp_path / "service.log"
        service_log = ServiceLog(log, max_bytes=10)
        log.touch()
        tail = LogTail(log)
        append(log, "0123456789 one\n")
        assert tail.read() == ["0123456789 one"]
        append(log, "two\n")
        assert service_log.rotate_if_needed()
        append(log, "3\n")
        assert tail.read() == ["two", "3"]

    def test_a_replaced_file_is_read_from_its_start(self, tmp_path: Path) -> None:
        """A new file (another inode) at the path is read from its first line."""
        log = tmp_path / "service.log"
        append(log, "old\n")
        tail = LogTail(log)
        replacement = tmp_path / "new.log"
        append(replacement, "first\nsecond\n")
        replacement.replace(log)
        assert tail.read() == ["first", "second"]

    def test_a_missing_log_is_no_lines(self, tmp_path: Path) -> None:
        """Before the service ever ran there is nothing to read, and no error."""
        tail = LogTail(tmp_path / "service.log")
        assert tail.read() == []
        append(tmp_path / "service.log", "hello\n")
        assert tail.read() == ["hello"]


class TestLogWatch:
    def test_matches_are_one_alert_with_count_first_and_last_line(self, tmp_path: Path) -> None:
        """Five matching lines in a batch are one alert: count 5, the first and last line."""
        log = tmp_path / "service.log"
        log.touch()
        watcher, _ = watch(log)
        lines = [f"order {i}: Power Peg disabled" for i in range(1, 6)]
        append(log, "routing\n" + "\n".join(lines) + "\nrouted\n")
        assert watcher.scan() == 5
        [alert] = watcher.flush()
        assert (alert.rule, alert.severity, alert.count) == ("log:power-peg", "critical", 5)
        assert "order 1: Power Peg disabled" in alert.detail.splitlines()[0]
        assert "order 5: Power Peg disabled" in alert.detail.splitlines()[1]
        assert watcher.flush() == []

    def test_a_flood_is_one_event(self, tmp_path: Path) -> None:
        """Ten thousand matching lines between two flushes are one event with their count."""
        log = tmp_path / "service.log"
        log.touch()
        watcher, _ = watch(log)
        append(log, "Power Peg disabled\n" * 10_000)
        watcher.scan()
        assert [a.count for a in watcher.flush()] == [10_000]

    def test_the_first_line_stays_the_first_across_batches(self, tmp_path: Path) -> None:
        """A later batch counts its own lines and still names the very first match."""
        log = tmp_path / "service.log"
        log.touch()
        watcher, _ = watch(log)
        append(log, "A: Power Peg disabled\n")
        watcher.scan()
        watcher.flush()
        append(log, "B: Power Peg disabled\nC: Power Peg disabled\n")
        watcher.scan()
        [alert] = watcher.flush()
        assert alert.count == 2
        assert "A: Power Peg" in alert.detail.splitlines()[0]
        assert "C: Power Peg" in alert.detail.splitlines()[1]

    def test_each_pattern_is_its_own_alert(self, tmp_path: Path) -> None:
        """Two patterns matching give two alerts, each with its own severity."""
        log = tmp_path / "service.log"
        log.touch()
        errors = LogPattern(name="errors", regex=r"^ERROR\b", severity="warning")
        watcher, _ = watch(log, POWER_PEG, errors)
        append(log, "ERROR: Power Peg disabled\nERROR x\nfine\n")
        watcher.scan()
        alerts = {a.rule: (a.count, a.severity) for a in watcher.flush()}
        assert alerts == {"log:power-peg": (1, "critical"), "log:errors": (2, "warning")}

    def test_no_patterns_no_alerts(self, tmp_path: Path) -> None:
        """A release without log patterns raises nothing."""
        log = tmp_path / "service.log"
        log.touch()
        watcher = LogWatch(log, lambda: (), lambda _: None, clock=VirtualClock())
        append(log, "Power Peg disabled\n")
        assert watcher.scan() == 0
        assert watcher.flush() == []

    def test_run_sends_batches(self, tmp_path: Path) -> None:
        """Running, the watch sends what matched, batched, until cancelled."""
        log = tmp_path / "service.log"
        log.touch()
        sent: list[AlertEvent] = []
        watcher = LogWatch(
            log, lambda: (POWER_PEG,), sent.extend, clock=SystemClock(), poll_s=0.01, batch_s=0.05
        )

        async def scenario() -> None:
            task = asyncio.create_task(watcher.run())
            try:
                append(log, "Power Peg disabled\n" * 3)
                async with asyncio.timeout(60):
                    while sum(a.count for a in sent) < 3:
                        await asyncio.sleep(0.01)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        run(scenario())
        assert sum(a.count for a in sent) == 3
        assert {a.rule for a in sent} == {"log:power-peg"}
