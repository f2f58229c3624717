"""The agent hub: one WebSocket per connected agent, commands queued per node.

:meth:`AgentHub.send` may be called from any thread (the store worker, a
request's worker thread): off the event loop the message is handed to the
loop with ``call_soon_threadsafe``, so it goes out at once and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from fastapi import WebSocket

from knightwatch.control.fanout import send_each
from knightwatch.protocol import AgentCommand

__all__ = ["AgentHub", "Connection"]

log = logging.getLogger("knightwatch.hub")
_ids = itertools.count(1)


@dataclass
class Connection:
    """One agent's live WebSocket and its outgoing queue."""

    node: str
    socket: WebSocket
    id: int = field(default_factory=lambda: next(_ids))
    outgoing: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    """The event loop that serves the socket (the connection is made on it)."""
    task: asyncio.Task[object] | None = field(default_factory=asyncio.current_task)
    """The task serving the session (the connection is made on it)."""
    protocol: int = 1
    """The protocol version the session speaks (a message a later protocol added must
    not go to an agent of an earlier one)."""


class AgentHub:
    """Knows which agents are connected and delivers commands to them."""

    def __init__(self) -> None:
        self._connections: dict[str, Connection] = {}
        self._last_wire: tuple[AgentCommand | None, str] = (None, "")
        self.heartbeats_dropped = 0
        """Stale heartbeats the sessions of this replica dropped unchecked (server/inbox.py)."""

    def count_dropped(self, count: int) -> None:
        """Add ``count`` heartbeats a session dropped because a later report had arrived."""
        self.heartbeats_dropped += count

    def attach(self, connection: Connection) -> Connection | None:
        """Register a connection; return the one it replaces, if any."""
        previous = self._connections.get(connection.node)
        self._connections[connection.node] = connection
        return previous

    def detach(self, connection: Connection) -> bool:
        """Forget a connection; False if a newer one for the node replaced it already."""
        if self.holds(connection):
            del self._connections[connection.node]
            return True
        return False

    def holds(self, connection: Connection) -> bool:
        """Tell whether ``connection`` is still its node's current one (not replaced)."""
        return self._connections.get(connection.node) is connection

    def is_connected(self, node: str) -> bool:
        """Tell whether ``node`` has a live connection."""
        return node in self._connections

    def connected(self) -> list[str]:
        """Names of every connected node."""
        return sorted(self._connections)

    def send(self, node: str, message: AgentCommand) -> bool:
        """Queue ``message`` for ``node``; False when it is not connected."""
        connection = self._connections.get(node)
        if connection is None:
            return False
        text = self._wire(message)
        if _on(connection.loop):
            connection.outgoing.put_nowait(text)
        else:
            connection.loop.call_soon_threadsafe(connection.outgoing.put_nowait, text)
        log.debug("sent %s to %s", message.type, node)  # a fan-out's callers log it once
        return True

    def send_each(self, sends: Iterable[tuple[str, AgentCommand]]) -> list[str]:
        """Send each (node, message); log one line for the lot; return the nodes not connected."""
        return send_each(self, sends, log)

    def _wire(self, message: AgentCommand) -> str:
        """The message's JSON, made once when the same (frozen) message goes to many nodes."""
        last, text = self._last_wire
        if message is not last:
            text = message.model_dump_json()
            self._last_wire = (message, text)
        return text

    def end_sessions(self) -> int:
        """Cancel every session's task (the server stops); return how many (call on the loop)."""
        tasks = [c.task for c in self._connections.values() if c.task is not None]
        for task in tasks:
            task.cancel()
        return len(tasks)

    async def disconnect(self, node: str, *, code: int = 4403, reason: str = "") -> bool:
        """Close ``node``'s live connection (its session then ends as usual); False if none."""
        connection = self._connections.get(node)
        if connection is None:
            return False
        with contextlib.suppress(Exception):  # already closing or closed: the goal is met
            await connection.socket.close(code=code, reason=reason[:120])
        return True


def _on(loop: asyncio.AbstractEventLoop) -> bool:
    """Tell whether the caller runs on ``loop``'s thread."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
