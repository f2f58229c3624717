"""An agent session's inbox: a heartbeat a later message caught up with is dropped, nothing else."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from knightwatch.protocol import (
    AlertEvent,
    HaltAck,
    NodeKey,
    NodeState,
    Report,
    is_plain_heartbeat,
    sign_report,
)
from knightwatch.server.inbox import Inbox


def plain(text: str) -> bool:
    """Messages named ``hb…`` are plain heartbeats here."""
    return text.startswith("hb")


async def drain(inbox: Inbox) -> list[str]:
    """Every message left, until the inbox ends."""
    taken: list[str] = []
    with pytest.raises(EOFError):
        while True:
            taken.append(await inbox.take())
    return taken


def test_a_heartbeat_caught_up_with_is_dropped_and_the_order_kept() -> None:
    told: list[int] = []

    async def main() -> tuple[list[str], int]:
        inbox = Inbox(plain, on_drop=told.append)
        for text in ("hb1", "ack1", "hb2", "hb3", "alert1", "hb4"):
            await inbox.put(text)
        inbox.end(EOFError())
        return await drain(inbox), inbox.dropped

    assert asyncio.run(main()) == (["ack1", "alert1", "hb4"], 3)
    assert sum(told) == 3 and 0 not in told, "the replica's counter is told every drop, only drops"


def test_nothing_is_dropped_while_the_session_keeps_up() -> None:
    async def main() -> list[str]:
        inbox = Inbox(plain)
        taken = []
        for text in ("hb1", "hb2", "ack1", "hb3"):
            await inbox.put(text)
            taken.append(await inbox.take())
        return taken

    assert asyncio.run(main()) == ["hb1", "hb2", "ack1", "hb3"]


def test_a_message_that_is_not_looked_at_costs_no_parse() -> None:
    looked: list[str] = []

    def spy(text: str) -> bool:
        looked.append(text)
        return plain(text)

    async def main() -> None:
        inbox = Inbox(spy)
        await inbox.put("hb1")
        await inbox.take()
        await inbox.put("ack1")
        await inbox.put("hb2")  # ack1 waits: it is looked at once, and kept
        await inbox.put("hb3")

    asyncio.run(main())
    assert looked == ["ack1", "hb2"]


def test_a_full_inbox_stops_reading_until_a_message_is_taken() -> None:
    async def main() -> list[str]:
        inbox = Inbox(plain, limit=2)
        await inbox.put("ack1")
        await inbox.put("ack2")
        blocked = asyncio.create_task(inbox.put("ack3"))
        await asyncio.sleep(0.05)
        assert not blocked.done()
        assert await inbox.take() == "ack1"
        await asyncio.wait_for(blocked, 5)
        inbox.end(EOFError())
        return await drain(inbox)

    assert asyncio.run(main()) == ["ack2", "ack3"]


def test_the_end_is_raised_only_once_every_message_was_taken() -> None:
    async def main() -> list[str]:
        inbox = Inbox(plain)
        waiting = asyncio.create_task(drain(inbox))
        await asyncio.sleep(0.01)
        await inbox.put("ack1")
        inbox.end(EOFError())
        return await asyncio.wait_for(waiting, 5)

    assert asyncio.run(main()) == ["ack1"]


def test_only_a_signed_heartbeat_with_nothing_else_is_plain() -> None:
    """The classification reads the unverified payload; anything odd is not plain."""
    key = NodeKey(Ed25519PrivateKey.generate())
    now = datetime.now(UTC)

    def signed(**fields: object) -> str:
        base: dict[str, object] = {
            "node": "node1",
            "nonce": "n" * 24,
            "seq": 1,
            "sent_at": now,
            "kind": "heartbeat",
            "state": NodeState(),
        }
        return sign_report(Report.model_validate(base | fields), key).model_dump_json()

    assert is_plain_heartbeat(signed())
    assert not is_plain_heartbeat(signed(kind="inventory"))
    assert not is_plain_heartbeat(signed(halt=HaltAck(halt_id=1, received_at=now, halted_at=now)))
    alert = AlertEvent(rule="r", severity="warning", summary="s", first_at=now, last_at=now)
    assert not is_plain_heartbeat(signed(alerts=[alert]))
    assert not is_plain_heartbeat("not json")
    assert not is_plain_heartbeat('{"type": "report", "payload": "!!", "signature": "x"}')
