"""One hollow agent: the real protocol, a simulated node.

A :class:`HollowAgent` holds what a node would report — the active, previous
and staged releases, the halt latch, the flag version — and speaks to the
control plane exactly as the real agent does: its own WebSocket, the
server's ``Hello`` and nonce (after the same protocol offer in the upgrade
request), Ed25519-signed reports numbered from 1,
heartbeats at the period the server asks for, an ``ack`` for every deploy
command, a ``halt``/``rearm`` report for the kill switch and a ``flags``
report for new flag values. What it does not have is a file tree or a
service: a Prepare is staged the moment it arrives, a Commit switches at
once, a Halt finds nothing to stop. Each agent is one task and a few
kilobytes, so thousands fit in one process beside the control plane.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from knightwatch import __version__
from knightwatch.agent.connection import Backoff, session_headers, websocket_url
from knightwatch.agent.enroll import Credential
from knightwatch.agent.reporting import Reporter
from knightwatch.clock import Clock
from knightwatch.protocol.audit import AuditRequest, AuditResult, Retire, RetireResult
from knightwatch.protocol.flags import FlagValues
from knightwatch.protocol.messages import (
    MAX_MESSAGE_BYTES,
    Abort,
    Ack,
    AckPhase,
    Commit,
    Hello,
    NodeState,
    Prepare,
    Refused,
    ReportKind,
    Rollback,
    ServiceStatus,
    parse_server_message,
)
from knightwatch.protocol.reports import NodeKey
from knightwatch.protocol.safety import Halt, HaltAck, HaltState, Rearm, RearmAck
from knightwatch.protocol.versions import PROTOCOLS, ProtocolMismatchError, chosen_protocol
from knightwatch.vocabulary import ServiceState

__all__ = ["HollowAgent", "SwarmCounters"]

Answer = Ack | HaltAck | RearmAck | AuditResult | RetireResult


@dataclass
class SwarmCounters:
    """What every hollow agent of a swarm did, summed (shared by all of them)."""

    connected: int = 0
    sessions: int = 0
    reports: int = 0
    acks: int = 0
    halts: int = 0
    disconnects: int = 0
    last_error: str = ""


class HollowAgent:
    """A simulated node speaking the real agent protocol.

    ``protocols`` and ``version`` are what it offers when it connects: this
    knightwatch's by default; another release's to simulate a node the
    control plane has not been upgraded for (or has outgrown).
    """

    def __init__(
        self,
        credential: Credential,
        key: NodeKey,
        *,
        server: str,
        clock: Clock,
        counters: SwarmCounters,
        tls: ssl.SSLContext | None,
        protocols: Sequence[int] = PROTOCOLS,
        version: str = __version__,
    ) -> None:
        self.node = credential.node
        self._headers = session_headers(credential, protocols=protocols, version=version)
        self._protocols = tuple(protocols)
        self._key = key
        self._url = websocket_url(server)
        self._clock = clock
        self._counters = counters
        self._tls = tls if self._url.startswith("wss://") else None
        self._backoff = Backoff()
        self.current: str | None = None
        self.previous: str | None = None
        self.staged: list[str] = []
        self.halt = HaltState()
        self.flags_version: int | None = None

    async def run(self) -> None:
        """Stay connected until cancelled, reconnecting after a jittered back-off."""
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (
                OSError,
                TimeoutError,
                WebSocketException,
                ValidationError,
                ProtocolMismatchError,
            ) as exc:
                self._counters.last_error = f"{type(exc).__name__}: {exc}"[:200]
            await asyncio.sleep(self._backoff.next_delay())

    def state(self) -> NodeState:
        """What this node reports: its releases, its latch, an empty audit, no service."""
        running = self.current is not None and not self.halt.halted
        return NodeState(
            active_digest=self.current,
            previous_digest=self.previous,
            staged=self.staged[-64:],
            service=ServiceStatus(state=ServiceState.RUNNING if running else ServiceState.NONE),
            halt=self.halt,
            flags_version=self.flags_version,
        )

    async def _session(self) -> None:
        async with connect(
            self._url,
            ssl=self._tls,
            additional_headers=self._headers,
            max_size=MAX_MESSAGE_BYTES,
            open_timeout=60,
            close_timeout=2,
            ping_interval=None,
            compression=None,
        ) as websocket:
            hello = await self._hello(websocket)
            self._backoff.reset()
            reporter = Reporter(self.node, self._key, self._clock, hello.nonce)
            await self._send(websocket, reporter, "inventory")
            counters = self._counters
            counters.connected += 1
            counters.sessions += 1
            try:
                await self._serve(websocket, reporter, hello.heartbeat_s)
            finally:
                counters.connected -= 1
                counters.disconnects += 1

    async def _hello(self, websocket: ClientConnection) -> Hello:
        async with asyncio.timeout(60):
            message = parse_server_message(await websocket.recv())
        if not isinstance(message, Hello):
            detail = message.reason if isinstance(message, Refused) else message.type
            raise OSError(f"no hello: {detail}")
        chosen_protocol(message.protocol, self._protocols)
        return message

    async def _serve(self, websocket: ClientConnection, reporter: Reporter, period: float) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + period
        while True:
            try:
                async with asyncio.timeout(max(0.0, next_beat - loop.time())):
                    raw = await websocket.recv()
            except TimeoutError:
                await self._send(websocket, reporter, "heartbeat")
                next_beat = loop.time() + period
                continue
            try:
                message = parse_server_message(raw)
            except ValidationError:
                continue
            answer = self._answer(message)
            if answer is not None:
                await self._send(websocket, reporter, *answer)

    def _answer(self, message: object) -> tuple[ReportKind, Answer | None] | None:
        """Carry out one command on the simulated node; the report that answers it."""
        if isinstance(message, Prepare | Commit | Rollback | Abort):
            return "ack", self._deploy(message)
        return self._safety_or_audit(message)

    def _deploy(self, message: Prepare | Commit | Rollback | Abort) -> Ack:
        """Stage, switch, roll back or forget at once: there is no tree to build."""
        match message:
            case Prepare():
                if message.digest not in self.staged:
                    self.staged.append(message.digest)
                return self._ack(message, AckPhase.PREPARED)
            case Commit():
                if message.digest != self.current:
                    self.previous, self.current = self.current, message.digest
                self.staged = [d for d in self.staged if d != message.digest]
                return self._ack(message, AckPhase.ACTIVE)
            case Rollback():
                self.previous, self.current = self.current, message.digest
                return self._ack(message, AckPhase.ROLLED_BACK)
        self.staged = [d for d in self.staged if d != message.digest]
        return self._ack(message, AckPhase.ABORTED)

    def _safety_or_audit(self, message: object) -> tuple[ReportKind, Answer | None] | None:
        match message:
            case Halt():
                return "halt", self._halted(message)
            case Rearm():
                return "rearm", self._rearmed(message)
            case FlagValues():
                self.flags_version = message.version
                return "flags", None
            case AuditRequest():
                now = self._clock.now()
                return "audit", AuditResult(
                    audit_id=message.audit_id,
                    release=self.current,
                    started_at=now,
                    finished_at=now,
                    files=0,
                    bytes_hashed=0,
                    processes_checked=0,
                )
            case Retire():
                return "retire", RetireResult(
                    retirement_id=message.retirement_id,
                    digest=message.digest,
                    absent=True,
                    detail="hollow agent: no file tree",
                )
        return None

    def _ack(self, command: Prepare | Commit | Rollback | Abort, phase: AckPhase) -> Ack:
        self._counters.acks += 1
        return Ack(deployment_id=command.deployment_id, digest=command.digest, phase=phase)

    def _halted(self, halt: Halt) -> HaltAck:
        now = self._clock.now()
        if not self.halt.halted:
            self.halt = HaltState(
                halted=True, source=halt.source, halt_id=halt.halt_id, since=now, reason=halt.reason
            )
        self._counters.halts += 1
        return HaltAck(halt_id=halt.halt_id, received_at=now, halted_at=now)

    def _rearmed(self, rearm: Rearm) -> RearmAck:
        self.halt = HaltState()
        return RearmAck(
            halt_id=rearm.halt_id, rearmed_at=self._clock.now(), started=self.current is not None
        )

    async def _send(
        self,
        websocket: ClientConnection,
        reporter: Reporter,
        kind: ReportKind,
        answer: Answer | None = None,
    ) -> None:
        signed = reporter.make(kind, self.state(), answer)
        await websocket.send(signed.model_dump_json())
        self._counters.reports += 1
