"""The agent's structured events: ``event("connect", server=…)`` on the agent's logger.

The line format is the one of every knightwatch process (:mod:`knightwatch.logs`).
"""

from __future__ import annotations

import logging
from typing import Any

from knightwatch.logs import event as log_event

__all__ = ["event", "logger"]

logger = logging.getLogger("knightwatch.agent")


def event(name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured agent event with its fields."""
    log_event(logger, name, level=level, **fields)
