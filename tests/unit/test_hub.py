"""The agent hub delivers commands from the event loop and from worker threads alike."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any, cast

from fastapi import WebSocket

from knightwatch.protocol import Halt
from knightwatch.server.hub import AgentHub, Connection

NOW = datetime(2012, 8, 1, 9, 30, tzinfo=UTC)


def test_a_command_sent_from_a_worker_thread_wakes_the_loop_at_once() -> None:
    """send() off the loop reaches the connection's queue without waiting for another event."""

    async def scenario() -> list[str]:
        hub = AgentHub()
        connection = Connection("node1", cast(WebSocket, object()))
        hub.attach(connection)
        halt = Halt(halt_id=1, reason="runaway", issued_at=NOW)
        sent: list[bool] = []
        worker = threading.Thread(target=lambda: sent.append(hub.send("node1", halt)))
        worker.start()
        async with asyncio.timeout(1):  # a wake-up that waits for some other event would time out
            text = await connection.outgoing.get()
        worker.join()
        assert sent == [True]
        on_loop = hub.send("node1", halt)
        return [text, str(on_loop), await connection.outgoing.get()]

    first, on_loop, second = asyncio.run(scenario())
    assert '"halt_id":1' in first and first == second
    assert on_loop == "True"


def test_an_unknown_node_is_not_sent_anything() -> None:
    """send() to a node with no connection says False."""
    hub = AgentHub()
    any_message: Any = Halt(halt_id=2, reason="x", issued_at=NOW)
    assert hub.send("ghost", any_message) is False


def test_a_replaced_connection_is_no_longer_held() -> None:
    """A session replaced by a newer one of its node knows it (and stops storing what it holds)."""

    async def scenario() -> tuple[bool, bool, bool, bool]:
        hub = AgentHub()
        old = Connection("node1", cast(WebSocket, object()))
        new = Connection("node1", cast(WebSocket, object()))
        hub.attach(old)
        held_alone = hub.holds(old)
        assert hub.attach(new) is old
        return held_alone, hub.holds(old), hub.holds(new), hub.detach(old)

    assert asyncio.run(scenario()) == (True, False, True, False)
