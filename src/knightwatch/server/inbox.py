"""An agent session's inbox: the messages read from its socket and not yet checked.

A session reads its socket as messages arrive and checks and stores them one
at a time. When the control plane falls behind (an operator's large query, a
fleet-wide kill), each agent's heartbeats queue up; checking every stale one
(an Ed25519 verification and a stored row each) kept a loaded 10,000-agent
control plane behind for minutes, and the kill's acknowledgements waited
behind them. Every report carries the node's whole state, so a heartbeat that
a later message has caught up with says nothing the later one does not: it
is dropped unchecked. Nothing else is ever dropped or reordered.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["INBOX_LIMIT", "Inbox"]

INBOX_LIMIT = 64
"""Messages an inbox holds at most; past it the session stops reading its socket."""


@dataclass
class _Message:
    text: str
    plain: bool | None = None
    """Whether it is a plain heartbeat (None: not looked at yet)."""


class Inbox:
    """Messages in arrival order; a plain heartbeat is dropped once a later one arrives."""

    def __init__(
        self,
        is_plain: Callable[[str], bool],
        limit: int = INBOX_LIMIT,
        on_drop: Callable[[int], None] = lambda count: None,
    ) -> None:
        self._is_plain = is_plain
        self._limit = limit
        self._on_drop = on_drop
        """Told how many heartbeats were dropped, each time some are (the replica's metric)."""
        self._messages: deque[_Message] = deque()
        self._end: BaseException | None = None
        self._arrived = asyncio.Event()
        self._taken = asyncio.Event()
        self.dropped = 0
        """Heartbeats dropped because a later message had arrived."""

    async def put(self, text: str) -> None:
        """Add a message; wait while the inbox is full (the socket is not read meanwhile)."""
        self._drop_superseded()
        while len(self._messages) >= self._limit:
            self._taken.clear()
            await self._taken.wait()
            self._drop_superseded()
        self._messages.append(_Message(text))
        self._arrived.set()

    def end(self, reason: BaseException) -> None:
        """No more messages will come: ``take`` raises ``reason`` once the inbox is empty."""
        self._end = reason
        self._arrived.set()

    async def take(self) -> str:
        """The oldest message left; once the inbox is empty and ended, raise why it ended."""
        while not self._messages:
            if self._end is not None:
                raise self._end
            self._arrived.clear()
            await self._arrived.wait()
        self._taken.set()
        return self._messages.popleft().text

    def _drop_superseded(self) -> None:
        """Drop the plain heartbeats waiting here: the message about to arrive is later."""
        if not self._messages:
            return
        kept: deque[_Message] = deque()
        for message in self._messages:
            if message.plain is None:
                message.plain = self._is_plain(message.text)
            if not message.plain:
                kept.append(message)
        dropped = len(self._messages) - len(kept)
        self._messages = kept
        if dropped:
            self.dropped += dropped
            self._on_drop(dropped)
