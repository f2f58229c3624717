"""Pause points: deliberate stalls inside a command, for fault tests.

Set ``KNIGHTWATCH_FAULT_PAUSE_IN`` to ``prepare`` or ``commit`` and the agent
stalls at the most dangerous instant of that command — in PREPARE with every
blob fetched and the tree half built but not published; in COMMIT with
``current`` switched but the new service not started — so a test can kill it
exactly there. Unset in production, it costs one dict lookup.
"""

from __future__ import annotations

import asyncio
import os
import threading

from knightwatch.agent.events import event

__all__ = ["PAUSE_ENV", "PAUSE_S", "pause_point", "pause_point_async"]

PAUSE_ENV = "KNIGHTWATCH_FAULT_PAUSE_IN"
PAUSE_S = 600.0


def pause_point(name: str, cancel: threading.Event) -> None:
    """Block this thread (until ``cancel`` is set) if the pause variable names ``name``."""
    if os.environ.get(PAUSE_ENV) == name:
        event("fault-pause", point=name, seconds=PAUSE_S)
        cancel.wait(PAUSE_S)


async def pause_point_async(name: str) -> None:
    """Sleep (cancellably) if the pause variable names ``name``."""
    if os.environ.get(PAUSE_ENV) == name:
        event("fault-pause", point=name, seconds=PAUSE_S)
        await asyncio.sleep(PAUSE_S)
