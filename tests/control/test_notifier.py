"""The alert notifier against a real store and a real HTTP receiver that can hang.

One receiver that never answers must not hold back the announcement of the
next alert: each delivery runs and is recorded on its own.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from knightwatch.api.notifier import AlertNotifier
from knightwatch.clock import VirtualClock
from knightwatch.control.alerts import fire
from knightwatch.control.routing import AlertRouting
from knightwatch.store import AlertNotification, Database, open_database


class StallingReceiver:
    """Answers 200 at once, except for alerts whose summary says ``hang`` (until released)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen: list[str] = []
        release, seen = self.release, self.seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                summary = body["alerts"][0]["annotations"]["summary"]
                seen.append(summary)
                if "hang" in summary:
                    release.wait(30)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Let any hanging request go, then stop."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[StallingReceiver]:
    """A running receiver."""
    running = StallingReceiver()
    yield running
    running.close()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite store."""
    database = open_database(None, tmp_path)
    yield database
    database.close()


def raise_alert(db: Database, clock: VirtualClock, summary: str) -> int:
    """Fire a critical fleet alert; return its ID."""
    with db.session() as session:
        alert = fire(
            session,
            rule=summary,
            node=None,
            severity="critical",
            summary=summary,
            detail="",
            now=clock.now(),
        )
        session.flush()
        return alert.id


def recorded(db: Database) -> dict[int, str]:
    """Each alert's recorded delivery outcome."""
    with db.session() as session:
        return {n.alert_id: n.detail for n in session.query(AlertNotification)}


def test_a_hanging_receiver_does_not_hold_back_the_next_alert(
    db: Database, receiver: StallingReceiver
) -> None:
    """Alert 1's delivery hangs; alert 2, raised later, is delivered and recorded meanwhile."""
    clock = VirtualClock(datetime(2012, 8, 1, 9, 30, tzinfo=UTC))
    routing = AlertRouting.parse(
        {"receivers": [{"name": "pager", "webhook": receiver.url, "timeout_s": 30}]}
    )
    notifier = AlertNotifier(db, clock, routing, "http://127.0.0.1:1")

    async def scenario() -> None:
        stuck = raise_alert(db, clock, "hang here")
        assert await notifier.tick() == 1
        while "hang here" not in receiver.seen:
            await asyncio.sleep(0.01)
        prompt = raise_alert(db, clock, "deliver now")
        assert await notifier.tick() == 1  # the hanging one stays leased: not claimed twice
        async with asyncio.timeout(20):
            while prompt not in recorded(db):
                await asyncio.sleep(0.01)
        assert stuck not in recorded(db)
        receiver.release.set()
        await notifier.settle()
        assert recorded(db) == {stuck: "firing: HTTP 200", prompt: "firing: HTTP 200"}

    asyncio.run(scenario())
