"""Fan-out: one command per node, sent through whatever delivers them, logged as one line.

A halt or a deployment step goes to every node of a fleet at once; a log
line per node was 10,000 lines per fan-out. The hub and the orchestrator
both send through :func:`send_each`, so both log the same summary.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Protocol, TypeVar

__all__ = ["Command", "Sink", "send_each"]


class Command(Protocol):
    """A message to an agent: all a fan-out needs of it is its type."""

    @property
    def type(self) -> str:
        """The message's wire type (``halt``, ``prepare``, …)."""
        ...


M_contra = TypeVar("M_contra", bound=Command, contravariant=True)


class Sink(Protocol[M_contra]):
    """Where commands to agents go (the agent WebSocket hub)."""

    def send(self, node: str, message: M_contra) -> bool:
        """Queue ``message`` for ``node``; False when the node is not connected."""
        ...


def send_each(
    sink: Sink[M_contra], sends: Iterable[tuple[str, M_contra]], log: logging.Logger
) -> list[str]:
    """Send each (node, message) through ``sink``; log one line; return the nodes not connected."""
    sent: Counter[str] = Counter()
    missed: list[str] = []
    for node, message in sends:
        if sink.send(node, message):
            sent[message.type] += 1
        else:
            missed.append(node)
    if sent:
        log.info("sent %s", ", ".join(f"{kind} to {n} node(s)" for kind, n in sorted(sent.items())))
    return missed
