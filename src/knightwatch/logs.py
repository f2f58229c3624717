"""Structured log lines for every long-running process (server and agent): one format.

One line per record, ``key=value`` pairs, read by people (``journalctl``) and
parsed by log shippers alike::

    ts=2026-12-04T19:30:00.123Z level=info component=agent logger=knightwatch.agent
        event=connect server=https://…      (one line; wrapped here)
    ts=2026-12-04T19:30:00.456Z level=warning component=server logger=knightwatch.deploy
        msg="node1 not connected"

A structured event (:func:`event`) has a fixed ``event`` name and its fields;
any other record carries its text as ``msg``. Values with spaces, quotes or
``=`` are JSON-quoted; a traceback is one ``exception`` value.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["KeyValueFormatter", "configure_logging", "event"]

_FIELDS = "kw_fields"
_QUIET = ("uvicorn.access", "httpx", "httpcore", "websockets")


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event ``name`` with its fields (None values are left out)."""
    logger.log(level, name, extra={_FIELDS: fields})


def quote(value: Any) -> str:
    """``value`` as a log value: bare when it has no space, quote or ``=``; else JSON-quoted."""
    if isinstance(value, float):
        value = round(value, 3)
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(c in text for c in ' "=\n\t\\'):
        return text
    return json.dumps(text, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    """Render a record as ``ts=… level=… component=… logger=… event=…|msg=…`` on one line."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self._component = component

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one key=value line."""
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        parts = [
            f"ts={stamp}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"component={self._component}",
            f"logger={record.name}",
        ]
        fields: dict[str, Any] | None = getattr(record, _FIELDS, None)
        if fields is None:
            parts.append(f"msg={quote(record.getMessage())}")
        else:
            parts.append(f"event={quote(record.getMessage())}")
            parts.extend(f"{k}={quote(v)}" for k, v in fields.items() if v is not None)
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(f"exception={quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def configure_logging(
    component: str, *, stream: TextIO | None = None, level: int = logging.INFO
) -> None:
    """Send every record to ``stream`` (stderr) as one key=value line naming ``component``.

    Records skip what no line prints (caller, thread and process names): at a
    kill, every agent logs several events on the path to its halt.
    """
    logging._srcfile = None  # the logging HOWTO's "Optimization"
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in _QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
