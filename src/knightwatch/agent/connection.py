"""The agent's one WebSocket to the control plane, re-established forever.

The upgrade request states the protocol versions the agent speaks and its
knightwatch version (:mod:`knightwatch.protocol.versions`). A session starts
with the server's ``Hello`` (the nonce, the heartbeat period, the protocol the
server chose); a server that speaks none of the agent's protocols answers
``refused`` instead, naming both versions and which side to upgrade: the agent
logs it (its ``disconnect`` line) and tries again after its usual back-off,
so a control plane upgraded meanwhile finds it. The agent answers the
``Hello`` with a signed ``inventory`` report, then sends a ``heartbeat``
report every period, a ``drift`` report the moment its audit
findings change, and an ``ack``, ``audit`` or ``retire`` report for each
finished command, while commands coming down are queued for the command
worker (audit requests go to their own handler: they never wait behind a
long prepare).
The agent pings the server on its own schedule: on a node of an ``armed``
group every T/5 (T the dead man's period in the ``Hello``), elsewhere every
5 s. :attr:`Connection.last_heard` is the last sign of life (a message or a
pong), which the dead man's switch counts from; a ping unanswered for T
(20 s when not armed) ends the session, so a link that died silently (no
FIN, no RST) is noticed as quickly as a closed one.
Any disconnect is followed by a reconnect after an exponential back-off with
full jitter (a uniform draw below 1 s, then 2, 4, … up to 10 s; reset by
every ``Hello``), so a restarted control plane is not met by every agent at
once; the service keeps running meanwhile. Acknowledgements not yet sent survive the disconnect and
go out first on the next session; so do alert events (guards, scrapes, log
patterns), sent in ``alert`` reports of up to 100 events each.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from knightwatch import __version__
from knightwatch.agent.enroll import Credential, auth_headers
from knightwatch.agent.errors import AgentTransportError
from knightwatch.agent.events import event, logger
from knightwatch.agent.reporting import Reporter
from knightwatch.clock import Clock
from knightwatch.protocol import ReleaseCommand
from knightwatch.protocol.audit import AuditRequest, AuditResult, RetireResult
from knightwatch.protocol.flags import FlagValues
from knightwatch.protocol.messages import (
    MAX_MESSAGE_BYTES,
    Ack,
    Hello,
    NodeState,
    Refused,
    ReportKind,
    parse_server_message,
)
from knightwatch.protocol.reports import NodeKey
from knightwatch.protocol.safety import (
    MAX_ALERTS_IN_REPORT,
    AlertEvent,
    Halt,
    HaltAck,
    Rearm,
    RearmAck,
)
from knightwatch.protocol.versions import (
    LEGACY_VERSION,
    PROTOCOLS,
    ProtocolMismatchError,
    chosen_protocol,
    offer_headers,
)

__all__ = ["Backoff", "Connection", "keepalive_timing", "session_headers", "websocket_url"]

CONNECT_PATH = "/api/agent/v1/connect"
_HELLO_TIMEOUT_S = 10.0
_PING_INTERVAL_S = 5.0
_PING_TIMEOUT_S = 20.0
_MIN_PING_INTERVAL_S = 0.2
MAX_QUEUED_ALERTS = 10_000

Outgoing = Ack | AuditResult | RetireResult | HaltAck | RearmAck
Send = Callable[[ReportKind, Outgoing | None], Awaitable[None]]
_KIND: dict[type, ReportKind] = {
    Ack: "ack",
    AuditResult: "audit",
    RetireResult: "retire",
    HaltAck: "halt",
    RearmAck: "rearm",
}


def websocket_url(server: str) -> str:
    """Return the agent WebSocket URL of a server given as ``http(s)://host:port``."""
    base = server.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + CONNECT_PATH
    if base.startswith("http://"):
        return "ws://" + base.removeprefix("http://") + CONNECT_PATH
    return base + CONNECT_PATH


def session_headers(
    credential: Credential, *, protocols: Sequence[int] = PROTOCOLS, version: str = __version__
) -> dict[str, str]:
    """The WebSocket upgrade's headers: the node's credential, its protocols and version."""
    return {**auth_headers(credential), **offer_headers(version, protocols)}


def keepalive_timing(dead_man_s: float | None) -> tuple[float, float]:
    """Return (ping interval, pong timeout): tight enough for the dead man's period T."""
    if dead_man_s is None:
        return _PING_INTERVAL_S, _PING_TIMEOUT_S
    return max(_MIN_PING_INTERVAL_S, dead_man_s / 5), dead_man_s


@dataclass
class Backoff:
    """Exponential back-off with full jitter between reconnects.

    The n-th delay is drawn uniformly from [``floor_s``, min(``cap_s``,
    ``initial_s`` * 2**n)]: a control plane that restarts under thousands of
    agents sees their reconnects spread over a second, then two, then four,
    instead of all at once each time (a thundering herd).
    """

    initial_s: float = 1.0
    cap_s: float = 10.0
    floor_s: float = 0.05
    _attempt: int = 0

    def reset(self) -> None:
        """Start again from the first delay (after a successful handshake)."""
        self._attempt = 0

    @property
    def failures(self) -> int:
        """Delays drawn since the last reset: how many connects in a row have failed."""
        return self._attempt

    def next_delay(self) -> float:
        """Return the next delay to sleep: a uniform draw below a doubling, capped ceiling."""
        ceiling = min(self.cap_s, self.initial_s * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 32)
        return random.uniform(min(self.floor_s, ceiling), ceiling)  # noqa: S311 - jitter


class Connection:
    """Keeps the agent connected, reporting, and fed with commands."""

    def __init__(
        self,
        *,
        server: str,
        credential: Credential,
        key: NodeKey,
        clock: Clock,
        state: Callable[[], NodeState],
        commands: asyncio.Queue[ReleaseCommand],
        heartbeat_s: float | None = None,
        backoff: Backoff | None = None,
        on_audit: Callable[[AuditRequest], None] | None = None,
        on_halt: Callable[[Halt | Rearm], None] | None = None,
        on_flags: Callable[[FlagValues], None] | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.url = websocket_url(server)
        self._ssl: ssl.SSLContext | None = None
        if self.url.startswith("wss://"):
            self._ssl = (
                verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
            )
        self.node = credential.node
        self._headers = session_headers(credential)
        self._key = key
        self._clock = clock
        self._state = state
        self._commands = commands
        self._heartbeat_s = heartbeat_s
        self.backoff = backoff or Backoff()
        """The delay before each reconnect: grows while connects fail, reset by a ``Hello``."""
        self._on_audit = on_audit
        self._on_halt = on_halt
        self._on_flags = on_flags
        self._flags_changed = asyncio.Event()
        self._outbox: deque[Outgoing] = deque()
        self._outbox_ready = asyncio.Event()
        self._alerts: deque[AlertEvent] = deque()
        self._alerts_ready = asyncio.Event()
        self._drift_changed = asyncio.Event()
        self.connected = asyncio.Event()
        self.last_heard: float | None = None
        """Monotonic time of the server's last sign of life (a message or a pong)."""
        self.sessions = 0
        self.hello: Hello | None = None
        """The server's greeting of the current (or last) session."""
        self.protocol: int | None = None
        """The protocol version of the current (or last) session."""

    def send_ack(self, ack: Outgoing) -> None:
        """Queue an answer; it is sent now if connected, else first thing on the next session."""
        self._outbox.append(ack)
        self._outbox_ready.set()

    def send_alerts(self, alerts: list[AlertEvent]) -> None:
        """Queue alert events; sent now if connected, else first thing on the next session."""
        self._alerts.extend(alerts)
        dropped = len(self._alerts) - MAX_QUEUED_ALERTS
        for _ in range(max(0, dropped)):
            self._alerts.popleft()
        if dropped > 0:
            event("alerts-dropped", count=dropped, reason="queue full while disconnected")
        self._alerts_ready.set()

    def drift_changed(self) -> None:
        """Report the node's state at once: its audit findings changed."""
        self._drift_changed.set()

    def flags_changed(self) -> None:
        """Report the node's state at once: flags.json holds another version (the ack)."""
        self._flags_changed.set()

    async def run(self) -> None:
        """Connect, serve the session, and reconnect after any failure, until cancelled."""
        while True:
            try:
                await self._session()
                why = "closed by the server"
            except (
                OSError,
                TimeoutError,
                WebSocketException,
                AgentTransportError,
                ProtocolMismatchError,
            ) as exc:
                why = _describe(exc)
            except Exception as exc:
                why = f"unexpected {type(exc).__name__}: {exc}"
                logger.exception("session-failed")
            finally:
                self.connected.clear()
            delay = self.backoff.next_delay()
            event("disconnect", server=self.url, reason=why, retry_in_s=delay)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        async with connect(
            self.url,
            ssl=self._ssl,
            additional_headers=self._headers,
            max_size=MAX_MESSAGE_BYTES,
            open_timeout=10,
            close_timeout=2,
            ping_interval=None,  # our own keepalive, timed from the dead man's period
            compression=None,  # small JSON on a fleet's network: deflate would only cost CPU
        ) as websocket:
            hello = self.hello = await self._hello(websocket)
            self.protocol = chosen_protocol(hello.protocol)
            self._heard()
            self.backoff.reset()
            self.sessions += 1
            reporter = Reporter(self.node, self._key, self._clock, hello.nonce, self.protocol)
            lock = asyncio.Lock()

            async def send(kind: ReportKind, answer: Outgoing | None = None) -> None:
                async with lock:
                    signed = reporter.make(kind, self._state(), answer)
                    await websocket.send(signed.model_dump_json())

            async def send_alerts(batch: list[AlertEvent]) -> None:
                async with lock:
                    signed = reporter.make("alert", self._state(), None, batch)
                    await websocket.send(signed.model_dump_json())

            period = self._heartbeat_s or hello.heartbeat_s
            await send("inventory", None)
            self.connected.set()
            event(
                "connect",
                server=self.url,
                heartbeat_s=period,
                session=self.sessions,
                protocol=self.protocol,
                server_version=hello.server_version or LEGACY_VERSION,
            )
            self._drift_changed.clear()
            await _first_to_finish(
                self._heartbeats(send, period),
                self._acks(send),
                self._alert_reports(send_alerts),
                self._drift(send),
                self._flag_acks(send),
                self._receive(websocket),
                self._keepalive(websocket, hello),
            )

    async def _hello(self, websocket: ClientConnection) -> Hello:
        async with asyncio.timeout(_HELLO_TIMEOUT_S):
            raw = await websocket.recv()
        try:
            message = parse_server_message(raw)
        except ValidationError as exc:
            raise AgentTransportError(f"the first message is not a valid hello: {exc}") from None
        if isinstance(message, Refused):
            raise AgentTransportError(f"refused by the server: {message.reason}")
        if not isinstance(message, Hello):
            raise AgentTransportError(f"the first message is {message.type!r}, not 'hello'")
        if message.node != self.node:
            raise AgentTransportError(
                f"the server greeted node {message.node!r}, not {self.node!r}"
            )
        return message

    async def _heartbeats(self, send: Send, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            await send("heartbeat", None)

    async def _acks(self, send: Send) -> None:
        while True:
            await self._outbox_ready.wait()
            while self._outbox:
                answer = self._outbox[0]
                await send(_KIND[type(answer)], answer)
                self._outbox.popleft()
            self._outbox_ready.clear()

    async def _alert_reports(self, send: Callable[[list[AlertEvent]], Awaitable[None]]) -> None:
        while True:
            await self._alerts_ready.wait()
            while self._alerts:
                batch = _alert_batch(self._alerts)
                await send(batch)
                for _ in batch:
                    self._alerts.popleft()
            self._alerts_ready.clear()

    async def _drift(self, send: Send) -> None:
        while True:
            await self._drift_changed.wait()
            self._drift_changed.clear()
            await send("drift", None)

    async def _flag_acks(self, send: Send) -> None:
        while True:
            await self._flags_changed.wait()
            self._flags_changed.clear()
            await send("flags", None)

    def _heard(self) -> None:
        self.last_heard = self._clock.monotonic()

    async def _keepalive(self, websocket: ClientConnection, hello: Hello) -> None:
        interval, timeout = keepalive_timing(hello.dead_man_s)
        while True:
            await asyncio.sleep(interval)
            pong = await websocket.ping()
            try:
                async with asyncio.timeout(timeout):
                    await pong
            except TimeoutError:
                raise AgentTransportError(
                    f"no answer to a ping for {timeout:g} s: the link is down"
                ) from None
            self._heard()

    async def _receive(self, websocket: ClientConnection) -> None:
        async for raw in websocket:
            self._heard()
            try:
                message = parse_server_message(raw)
            except ValidationError as exc:
                first = exc.errors()[0]
                event("message-invalid", detail=f"{first['loc']}: {first['msg']}")
                continue
            if isinstance(message, Hello):
                event("message-ignored", type="hello")
            elif isinstance(message, Refused):
                event("refused", reason=message.reason)
            elif isinstance(message, Halt | Rearm):
                event("halt-command-received", type=message.type, halt=message.halt_id)
                if self._on_halt is not None:
                    self._on_halt(message)  # at once: never queued behind a prepare
            elif isinstance(message, FlagValues):
                event("flags-received", version=message.version, values=len(message.values))
                if self._on_flags is not None:
                    self._on_flags(message)  # at once: a write of one small file
            elif isinstance(message, AuditRequest):
                event("audit-requested", audit=message.audit_id)
                if self._on_audit is not None:
                    self._on_audit(message)
            else:
                event("command-received", type=message.type, digest=message.digest)
                self._commands.put_nowait(message)


def _alert_batch(alerts: deque[AlertEvent]) -> list[AlertEvent]:
    """The oldest alerts that fit one report (by count, and well under the message limit)."""
    batch: list[AlertEvent] = []
    size = 0
    for alert in alerts:
        size += len(alert.model_dump_json())
        if batch and (len(batch) >= MAX_ALERTS_IN_REPORT or size > MAX_MESSAGE_BYTES // 4):
            break
        batch.append(alert)
    return batch


async def _first_to_finish(*coroutines: Awaitable[None]) -> None:
    """Run coroutines until one ends; cancel the others; re-raise the first's error."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    for task in done:
        error = task.exception()
        if error is not None:
            raise error


def _describe(exc: BaseException) -> str:  # noqa: PLR0911 - one branch per kind of failure
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            "refused: the server's TLS certificate does not chain to the pinned CA (--ca): "
            f"{exc.verify_message}"
        )
    if isinstance(exc, InvalidStatus):
        return f"handshake refused: HTTP {exc.response.status_code}"
    if isinstance(exc, ConnectionClosed):
        reason = f" {exc.rcvd.reason}" if exc.rcvd and exc.rcvd.reason else ""
        code = exc.rcvd.code if exc.rcvd else 1006
        return f"connection closed (code {code}{reason})"
    if isinstance(exc, AgentTransportError | ProtocolMismatchError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__
