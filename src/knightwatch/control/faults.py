"""Crash points: deliberate SIGKILLs at persisted transitions, for fault tests.

Set ``KNIGHTWATCH_FAULT_CRASH_AFTER`` to a transition name (e.g.
``COMMITTING`` or ``node:ACTIVE``) and the control plane kills itself right
after that transition is committed to the store and before it acts on it —
the most dangerous instant. Unset in production, it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_ENV", "crash_point"]

CRASH_ENV = "KNIGHTWATCH_FAULT_CRASH_AFTER"


def crash_point(name: str) -> None:
    """SIGKILL this process if the fault-injection variable names ``name``."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
