"""The alert notifier against a real store and a real HTTP receiver that can hang.

One receiver that never answers must not hold back the announcement of the
next alert: each delivery runs and is recorded on its own. An Alertmanager
receiver holds the alert while it is open: it is posted again, with backoff
after a failure, and its end is posted once.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from knightwatch.clock import VirtualClock
from knightwatch.control.alerts import acknowledge, fire, resolve_alert
from knightwatch.control.routing import AlertRouting
from knightwatch.server.notifier import AlertNotifier
from knightwatch.store import AlertNotification, Database
from knightwatch.testing import free_port


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


# -- Alertmanager receivers -------------------------------------------------------------------


class StandInAlertmanager:
    """Answers ``POST /api/v2/alerts`` with the next status of ``statuses`` (200 when none)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.posts: list[tuple[str, list[dict[str, Any]]]] = []
        statuses, posts = self.statuses, self.posts

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                posts.append((self.path, body))
                self.send_response(statuses.pop(0) if statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def alertmanager() -> Iterator[StandInAlertmanager]:
    """A running stand-in for Alertmanager's API (the real one runs in tests/integration)."""
    running = StandInAlertmanager()
    yield running
    running.close()


def deliveries(db: Database) -> list[tuple[bool, str]]:
    """Every recorded delivery: (ok, detail), oldest first."""
    with db.session() as session:
        rows = session.query(AlertNotification).order_by(AlertNotification.id)
        return [(n.ok, n.detail) for n in rows]


def am_notifier(db: Database, clock: VirtualClock, *urls: str) -> AlertNotifier:
    """A notifier whose only receiver is an Alertmanager receiver (re-post every 8 s)."""
    routing = AlertRouting.parse(
        {"receivers": [{"name": "am", "alertmanager": list(urls), "resend_s": 8}]}
    )
    return AlertNotifier(db, clock, routing, "http://kw.example:7400")


async def step(notifier: AlertNotifier, clock: VirtualClock, seconds: float) -> None:
    """Let ``seconds`` pass, run one round and wait for what it started."""
    clock.advance(seconds)
    await notifier.tick()
    await notifier.settle()


def test_a_failing_alertmanager_is_retried_with_backoff_and_recorded_once(
    db: Database, alertmanager: StandInAlertmanager
) -> None:
    """Posts retry after 1, 2, 4 s; the first failure and the recovery are recorded, not each."""
    clock = VirtualClock(datetime(2012, 8, 1, 9, 30, tzinfo=UTC))
    notifier = am_notifier(db, clock, alertmanager.url)
    alertmanager.statuses.extend([503, 503, 503])

    async def scenario() -> list[int]:
        raise_alert(db, clock, "order router halted")
        posted = []
        for seconds in (0, 0.9, 0.2, 1.9, 0.2, 3.9, 0.2, 7.9, 0.2):
            await step(notifier, clock, seconds)
            posted.append(len(alertmanager.posts))
        return posted

    assert asyncio.run(scenario()) == [1, 1, 2, 2, 3, 3, 4, 4, 5]
    port = alertmanager.url.rsplit(":", 1)[1]
    assert deliveries(db) == [
        (False, f"firing: 127.0.0.1:{port} HTTP 503"),
        (True, f"firing: 127.0.0.1:{port} HTTP 200 (after 3 failed attempt(s))"),
    ]
    assert {path for path, _ in alertmanager.posts} == {"/api/v2/alerts"}


def test_an_alertmanager_gets_the_alert_while_open_and_its_end_once(
    db: Database, alertmanager: StandInAlertmanager
) -> None:
    """API v2 body: labels, annotations, no endsAt while open (acknowledged too); endsAt once."""
    clock = VirtualClock(datetime(2012, 8, 1, 9, 30, tzinfo=UTC))
    notifier = am_notifier(db, clock, alertmanager.url)

    async def scenario() -> None:
        alert_id = raise_alert(db, clock, "order router halted")
        await step(notifier, clock, 0)
        with db.session() as session:
            acknowledge(session, alert_id, by="alice", now=clock.now())
        await step(notifier, clock, 8.1)  # knightwatch stops escalating; the copy stays
        with db.session() as session:
            resolve_alert(session, alert_id, by="bob", now=clock.now())
        await step(notifier, clock, 0.5)
        for _ in range(3):
            await step(notifier, clock, 8.1)

    asyncio.run(scenario())
    bodies = [body for _, body in alertmanager.posts]
    assert [len(b) for b in bodies] == [1, 1, 1]
    first, acked, ended = (b[0] for b in bodies)
    assert first["labels"] == {
        "alertname": "order router halted",
        "severity": "critical",
        "fleet": "default",
        "source": "knightwatch",
    }
    assert first["annotations"]["summary"] == "order router halted"
    assert first["annotations"]["count"] == "1"
    assert first["generatorURL"] == "http://kw.example:7400/api/v1/alerts/1"
    assert first["startsAt"] == "2012-08-01T09:30:00Z" and "endsAt" not in first
    assert acked["labels"] == first["labels"] and "endsAt" not in acked
    assert acked["annotations"]["acknowledged_by"] == "alice"
    assert ended["labels"] == first["labels"]
    assert ended["endsAt"] == "2012-08-01T09:30:08.100000Z"
    assert [d for _, d in deliveries(db)] == [
        f"firing: 127.0.0.1:{alertmanager.url.rsplit(':', 1)[1]} HTTP 200",
        f"resolved: 127.0.0.1:{alertmanager.url.rsplit(':', 1)[1]} HTTP 200",
    ]


def test_one_member_of_an_ha_pair_taking_the_alert_is_a_delivery(
    db: Database, alertmanager: StandInAlertmanager
) -> None:
    """Posted to both Alertmanagers; one down: delivered, the outcome names each by host:port."""
    clock = VirtualClock(datetime(2012, 8, 1, 9, 30, tzinfo=UTC))
    down = free_port()
    notifier = am_notifier(db, clock, f"http://127.0.0.1:{down}", alertmanager.url)

    async def scenario() -> None:
        raise_alert(db, clock, "order router halted")
        await step(notifier, clock, 0)

    asyncio.run(scenario())
    [(ok, detail)] = deliveries(db)
    assert ok and len(alertmanager.posts) == 1
    assert detail.startswith(f"firing: 127.0.0.1:{down} ConnectError; 127.0.0.1:")
    assert detail.endswith("HTTP 200")


def test_a_resolution_alertmanager_did_not_take_is_posted_again(
    db: Database, alertmanager: StandInAlertmanager
) -> None:
    """The end of an alert, refused once, is posted again after 1 s and then not again."""
    clock = VirtualClock(datetime(2012, 8, 1, 9, 30, tzinfo=UTC))
    notifier = am_notifier(db, clock, alertmanager.url)

    async def scenario() -> None:
        alert_id = raise_alert(db, clock, "order router halted")
        await step(notifier, clock, 0)
        with db.session() as session:
            resolve_alert(session, alert_id, by="bob", now=clock.now())
        alertmanager.statuses.append(500)
        await step(notifier, clock, 0.5)
        for seconds in (0.6, 8.1, 8.1):
            await step(notifier, clock, seconds)

    asyncio.run(scenario())
    ends = [body[0].get("endsAt") for _, body in alertmanager.posts]
    assert ends == [None, "2012-08-01T09:30:00Z", "2012-08-01T09:30:00Z"]
    port = alertmanager.url.rsplit(":", 1)[1]
    assert deliveries(db) == [
        (True, f"firing: 127.0.0.1:{port} HTTP 200"),
        (False, f"resolved: 127.0.0.1:{port} HTTP 500"),
        (True, f"resolved: 127.0.0.1:{port} HTTP 200 (after 1 failed attempt(s))"),
    ]


def test_an_alertmanager_keeps_the_alert_after_the_route_escalates_past_it(
    db: Database, alertmanager: StandInAlertmanager, receiver: StallingReceiver
) -> None:
    """Route am → pager: unacknowledged, the pager is told; Alertmanager is still re-posted to."""
    clock = VirtualClock(datetime(2012, 8, 1, 9, 30, tzinfo=UTC))
    routing = AlertRouting.parse(
        {
            "receivers": [
                {"name": "am", "alertmanager": alertmanager.url, "resend_s": 8},
                {"name": "pager", "webhook": receiver.url},
            ],
            "escalate_after_s": 5,
        }
    )
    notifier = AlertNotifier(db, clock, routing, "http://kw.example:7400")

    async def scenario() -> list[tuple[int, int]]:
        raise_alert(db, clock, "order router halted")
        seen = []
        for seconds in (0, 5.1, 3.0, 8.1):
            await step(notifier, clock, seconds)
            seen.append((len(alertmanager.posts), len(receiver.seen)))
        return seen

    assert asyncio.run(scenario()) == [(1, 0), (1, 1), (2, 1), (3, 1)]
    with db.session() as session:
        levels = [(n.receiver, n.level) for n in session.query(AlertNotification)]
    assert levels == [("am", 0), ("pager", 1)]  # re-posts that went well are not recorded
