"""One log line format for server and agent: key=value, an event with fields or a msg."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from knightwatch.logs import configure_logging, event

LINE = re.compile(
    r"^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=(\w+) component=(\w+) logger=(\S+) (.*)$"
)


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Every record of the test, formatted as a process would log it."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging("agent", stream=out)
    yield out
    root.handlers[:] = saved
    root.setLevel(level)


def test_an_event_carries_its_fields_quoted_only_when_needed(stream: io.StringIO) -> None:
    """``event=NAME`` then each field; spaces, quotes and ``=`` are JSON-quoted; None dropped."""
    event(
        logging.getLogger("knightwatch.agent"),
        "connect",
        server="https://cp:7400",
        reason='said "no" = bad',
        took=0.12345,
        missing=None,
    )
    match = LINE.match(stream.getvalue().strip())
    assert match is not None, stream.getvalue()
    assert match.groups()[:3] == ("info", "agent", "knightwatch.agent")
    assert (
        match[4] == 'event=connect server=https://cp:7400 reason="said \\"no\\" = bad" took=0.123'
    )


def test_a_plain_record_is_a_msg_and_a_traceback_one_value(stream: io.StringIO) -> None:
    """Any other record is ``msg=…``; an exception stays on the same line."""
    log = logging.getLogger("knightwatch.deploy")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("tick failed for node1")
    [line] = stream.getvalue().splitlines()
    match = LINE.match(line)
    assert match is not None, line
    assert match[1] == "error"
    assert match[4].startswith('msg="tick failed for node1" exception="Traceback')
    assert "ValueError: boom" in match[4]
