"""Structured log lines on stderr: ``ts=… level=info event=connect server=…``.

The agent is a long-running daemon read by people (``journalctl``) and by
log shippers alike, so every line is ``key=value`` pairs with a fixed
``event`` name; values with spaces or quotes are JSON-quoted.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["KeyValueFormatter", "configure_logging", "event", "logger"]

logger = logging.getLogger("knightwatch.agent")


def event(name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event with its fields."""
    logger.log(level, name, extra={"kw_fields": fields})


def _quote(value: Any) -> str:
    if isinstance(value, float):
        value = round(value, 3)
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(c in text for c in ' "=\n\t\\'):
        return text
    return json.dumps(text, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    """Render a record as ``ts=… level=… event=… key=value …`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one key=value line."""
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        parts = [f"ts={stamp}", f"level={record.levelname.lower()}"]
        parts.append(f"event={_quote(record.getMessage())}")
        fields: dict[str, Any] = getattr(record, "kw_fields", {})
        parts.extend(f"{key}={_quote(value)}" for key, value in fields.items() if value is not None)
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(f"exception={_quote(repr(record.exc_info[1]))}")
        return " ".join(parts)


def configure_logging(stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Send the agent's events to ``stream`` (stderr by default), once.

    The records skip what no line prints (caller, thread and process names):
    at a kill, every agent logs several events on the path to its halt.
    """
    logging._srcfile = None  # the logging HOWTO's "Optimization"
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
