"""Fault injectors for the network between an agent and the real control plane.

Neither of these is a control plane, and neither answers for one: the agent
under test still enrolls with, fetches from and reports to a real
``knightwatch server``. They only do what a hostile or broken network does.

:class:`FlakyLink`
    A TCP relay in front of the real server. Every byte comes from the
    server; the relay notes the HTTP requests passing through (method, path,
    ``Range``) and can cut a chosen response short after N body bytes, as a
    dropped connection would.

:class:`HostilePeer`
    Something else listening where the control plane was: it completes the
    agent's WebSocket handshake, greets it, then sends malformed frames. It
    checks nothing the agent sends; it only records it.

:class:`RefusingPeer`
    Something else listening where the control plane was that answers every
    handshake the way a control plane refuses an agent it shares no protocol
    with (``refused``, close 4426): what today's agent meets once the control
    plane has outgrown its protocol. The refusal is made by the real
    negotiation code, given the later protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from knightwatch.protocol import Hello, Refused
from knightwatch.protocol.versions import (
    CLOSE_UNSUPPORTED,
    ProtocolMismatchError,
    negotiate,
    read_offer,
)
from knightwatch.testing import free_port

T = TypeVar("T")
_TIMEOUT_S = 60.0


class _LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(_TIMEOUT_S)

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(_TIMEOUT_S)
        self.loop.close()


# --- FlakyLink -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SeenRequest:
    """One HTTP request the relay passed on."""

    method: str
    path: str
    range: str | None


@dataclass
class _Cut:
    """Cut the response to the next ``method path*`` request after ``after`` body bytes."""

    method: str
    path_prefix: str
    after: int


@dataclass
class _Cutting:
    """Counts one response's bytes; says when to stop forwarding."""

    after: int
    seen: int = 0
    head: bytearray = field(default_factory=bytearray)
    head_end: int | None = None

    def take(self, data: bytes) -> tuple[bytes, bool]:
        """Return what of ``data`` to forward, and whether to drop the connection after it."""
        start = self.seen
        self.seen += len(data)
        if self.head_end is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return data, False
            self.head_end = end + 4
        limit = self.head_end + self.after
        if self.seen < limit:
            return data, False
        return data[: max(0, limit - start)], True


@dataclass
class _Requests:
    """Parses the request heads of one client connection (HTTP/1.1, no pipelining)."""

    buffer: bytearray = field(default_factory=bytearray)
    body_left: int = 0
    upgraded: bool = False

    def feed(self, data: bytes) -> list[SeenRequest]:
        if self.upgraded:
            return []
        self.buffer += data
        found: list[SeenRequest] = []
        while True:
            if self.body_left:
                skipped = min(self.body_left, len(self.buffer))
                del self.buffer[:skipped]
                self.body_left -= skipped
                if self.body_left:
                    return found
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return found
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            del self.buffer[: end + 4]
            method, target, _version = head[0].split(" ", 2)
            headers = {
                name.strip().lower(): value.strip()
                for name, value in (line.split(":", 1) for line in head[1:] if ":" in line)
            }
            assert "transfer-encoding" not in headers, "chunked request bodies are not relayed"
            found.append(SeenRequest(method, target, headers.get("range")))
            self.body_left = int(headers.get("content-length", "0"))
            if headers.get("upgrade", "").lower() == "websocket":
                self.upgraded = True  # from here on: WebSocket frames, relayed untouched
                self.buffer.clear()
                return found


class FlakyLink:
    """A TCP relay to the real control plane that can cut chosen HTTP responses short.

    Point the agent's ``--server`` at :attr:`url`; everything, the WebSocket
    included, is relayed to the server unchanged, except that a response
    chosen with :meth:`cut_response` stops after N bytes of its body and its
    connection is closed, exactly as if the network had dropped it.
    :meth:`stall` makes the link a black hole: connections stay open but no
    byte crosses in either direction (a pulled cable, a silent firewall).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._seen: list[SeenRequest] = []
        self._cuts: list[_Cut] = []
        self._lock = threading.Lock()
        self._stalled = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._loop: _LoopThread | None = None

    def __enter__(self) -> FlakyLink:
        self._loop = _LoopThread("flaky-link")
        self._server = self._loop.call(asyncio.start_server(self._relay, "127.0.0.1", self.port))
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        self._loop.call(self._close())
        self._loop.close()

    def cut_response(self, method: str, path_prefix: str, *, after: int) -> None:
        """Cut the next ``method path_prefix…`` response after ``after`` body bytes (one shot)."""
        with self._lock:
            self._cuts.append(_Cut(method, path_prefix, after))

    def stall(self) -> None:
        """From now on swallow every byte, both ways, and close nothing."""
        self._stalled.set()

    def requests(self, method: str | None = None, path_prefix: str = "") -> list[SeenRequest]:
        """The requests relayed so far (optionally only ``method path_prefix…``)."""
        with self._lock:
            return [
                r
                for r in self._seen
                if (method is None or r.method == method) and r.path.startswith(path_prefix)
            ]

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        # Python 3.11's wait_closed does not wait for the connection handlers: end them here,
        # or the loop is closed under them ("Task was destroyed but it is pending").
        here = asyncio.current_task()
        relays = [task for task in asyncio.all_tasks() if task is not here]
        for task in relays:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        try:
            server_in, server_out = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_out.close()
            return
        self._writers |= {client_out, server_out}
        cutting: list[_Cutting | None] = [None]
        pumps = [
            asyncio.ensure_future(self._upstream(client_in, server_out, cutting)),
            asyncio.ensure_future(self._downstream(server_in, client_out, cutting)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (client_out, server_out):
                self._writers.discard(writer)
                writer.close()

    async def _upstream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        cutting: list[_Cutting | None],
    ) -> None:
        requests = _Requests()
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self._stalled.is_set():
                    continue
                for request in requests.feed(data):
                    cutting[0] = self._arm(request)
                writer.write(data)
                await writer.drain()

    async def _downstream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        cutting: list[_Cutting | None],
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self._stalled.is_set():
                    continue
                cut = cutting[0]
                drop = False
                if cut is not None:
                    data, drop = cut.take(data)
                writer.write(data)
                await writer.drain()
                if drop:
                    return

    def _arm(self, request: SeenRequest) -> _Cutting | None:
        with self._lock:
            self._seen.append(request)
            for cut in self._cuts:
                if request.method == cut.method and request.path.startswith(cut.path_prefix):
                    self._cuts.remove(cut)
                    return _Cutting(cut.after)
        return None


# --- A stand-in control plane ---------------------------------------------------------------


class _StandIn:
    """A WebSocket server on ``port`` where the control plane was, on a loop of its own."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._server: Server | None = None
        self._loop: _LoopThread | None = None

    def __enter__(self) -> Self:
        self._loop = _LoopThread(type(self).__name__)
        self._server = self._loop.call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening and drop the connections (idempotent)."""
        if self._loop is None:
            return
        self._loop.call(self._stop())
        self._loop.close()
        self._loop = None

    async def _start(self) -> Server:
        return await serve(self._serve, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, websocket: ServerConnection) -> None:
        raise NotImplementedError


# --- HostilePeer ---------------------------------------------------------------------------


class HostilePeer(_StandIn):
    """Listens on ``port`` where the control plane was; greets the agent, then sends garbage.

    For the first connection only: it sends a well-formed ``hello`` (so the
    agent starts a session), waits for the agent's first report, sends
    ``frames`` one by one, then waits for ``reports_after`` more messages on
    the same connection and sets :attr:`done`. The connection stays open
    until the peer is closed. Later connections are counted and left idle.
    """

    def __init__(self, port: int, frames: Sequence[str | bytes], *, reports_after: int) -> None:
        super().__init__(port)
        self.frames = list(frames)
        self.reports_after = reports_after
        self.nonce = secrets.token_urlsafe(24)
        self.received: list[str | bytes] = []
        self.connections = 0
        self.done = threading.Event()

    async def _serve(self, websocket: ServerConnection) -> None:
        self.connections += 1
        if self.connections > 1:
            await websocket.wait_closed()
            return
        assert websocket.request is not None
        hello = Hello(
            node=websocket.request.headers.get("X-Knightwatch-Node", "unknown"),
            nonce=self.nonce,
            heartbeat_s=0.2,
            server_time=datetime.now(UTC),
        )
        with contextlib.suppress(ConnectionClosed):
            await websocket.send(hello.model_dump_json())
            self.received.append(await websocket.recv())
            for frame in self.frames:
                await websocket.send(frame)
            while len(self.received) < 1 + self.reports_after:
                self.received.append(await websocket.recv())
            self.done.set()
            await websocket.wait_closed()


# --- RefusingPeer --------------------------------------------------------------------------


class RefusingPeer(_StandIn):
    """Listens on ``port`` where the control plane was; refuses every agent's protocols.

    It stands for a control plane at ``version`` that speaks only
    ``protocols``: the offer in each upgrade request is read and negotiated by
    knightwatch's own code, and the refusal it raises is sent as a control
    plane sends it. :attr:`offers` keeps each request's version headers.
    """

    def __init__(self, port: int, *, version: str, protocols: Sequence[int]) -> None:
        super().__init__(port)
        self.version = version
        self.protocols = tuple(protocols)
        self.offers: list[tuple[str | None, str | None]] = []
        self.refusals: list[str] = []

    async def _serve(self, websocket: ServerConnection) -> None:
        assert websocket.request is not None
        headers = {k.lower(): v for k, v in websocket.request.headers.raw_items()}
        self.offers.append(
            (headers.get("x-knightwatch-protocol"), headers.get("x-knightwatch-version"))
        )
        try:
            negotiate(read_offer(headers), self.version, self.protocols)
        except ProtocolMismatchError as exc:
            self.refusals.append(exc.message)
            with contextlib.suppress(ConnectionClosed):
                await websocket.send(Refused(reason=exc.message).model_dump_json())
                await websocket.close(CLOSE_UNSUPPORTED, exc.message[:120])
            return
        raise AssertionError("the peer was meant to refuse this agent")
