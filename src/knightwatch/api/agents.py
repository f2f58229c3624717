"""Agent API under /api/agent/v1: enrollment, release bytes, the WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from knightwatch import __version__
from knightwatch.api.auth import agent_from_headers, node_from_headers
from knightwatch.api.fields import SafeLine
from knightwatch.api.plane import Plane
from knightwatch.bundle.blobstore import BlobStore, is_digest
from knightwatch.control.enrollment import enroll
from knightwatch.control.fleet import mark_connected, mark_disconnected, record_refusal
from knightwatch.control.ingest import Ingested
from knightwatch.control.killswitch import dead_man_seconds
from knightwatch.errors import (
    BlobNotFoundError,
    InvalidInputError,
    KnightwatchError,
    ReleaseNotFoundError,
)
from knightwatch.protocol import (
    MAX_MESSAGE_BYTES,
    Hello,
    Rearm,
    Refused,
    Report,
    ReportError,
    SignedReport,
    blob_header,
    is_plain_heartbeat,
    open_report,
    public_key_from_text,
)
from knightwatch.protocol.versions import (
    CLOSE_BAD_HANDSHAKE,
    CLOSE_UNSUPPORTED,
    LEGACY_PROTOCOL,
    Offer,
    ProtocolHeaderError,
    ProtocolMismatchError,
    negotiate,
    read_offer,
)
from knightwatch.server.documents import DocumentKind
from knightwatch.server.hub import Connection
from knightwatch.server.inbox import Inbox
from knightwatch.server.report_batch import SessionChange
from knightwatch.server.resend import ResendThrottle
from knightwatch.store import Release

__all__ = ["router"]

log = logging.getLogger("knightwatch.agents")

REARM_RESEND_S = 5.0
"""A session re-sends a missed re-arm of one halt at most this often: every report
made before the agent read the re-arm still says it is latched (a new session is
re-armed at its greeting)."""

router = APIRouter(prefix="/api/agent/v1")
_DOCUMENTS: dict[str, DocumentKind] = {"manifest": "manifest", "envelope": "envelope"}


class EnrollBody(BaseModel):
    """What an agent presents to enroll."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(max_length=63), SafeLine]
    token: Annotated[str, Field(min_length=1, max_length=200)]
    public_key: Annotated[str, Field(max_length=100)]


@router.post("/enroll")
def enroll_agent(body: EnrollBody, plane: Plane) -> dict[str, Any]:
    """Exchange a join token for a node credential and the release-signing keys."""
    with plane.db.session() as session:
        credential = enroll(session, body.name, body.token, body.public_key, now=plane.clock.now())
    keys = [key.public_pem() for key in plane.trusted]
    return {
        "node": body.name,
        "credential": credential,
        "trusted_keys": keys,
        "heartbeat_s": plane.settings.heartbeat_s,
    }


@router.get("/releases/{digest}/{document}")
def release_document(digest: str, document: str, request: Request, plane: Plane) -> Response:
    """The canonical manifest or the DSSE envelope of a release."""
    node_from_headers(plane, request.headers)
    kind = _DOCUMENTS.get(document)
    if kind is None:
        raise InvalidInputError(f"unknown release document {document!r}")

    def load() -> tuple[bytes, bytes] | None:
        with plane.db.session() as session:
            release = session.get(Release, digest)
            return None if release is None else (release.manifest, release.envelope)

    data = plane.documents.get(digest, kind, load)
    if data is None:
        raise ReleaseNotFoundError(digest)
    return Response(data, media_type="application/json")


@router.get("/blobs/{digest}")
async def blob(digest: str, request: Request, plane: Plane) -> FileResponse:
    """One blob by digest; Range requests resume an interrupted download."""
    await agent_from_headers(plane, request.headers)
    if not is_digest(digest):
        raise InvalidInputError(f"{digest!r} is not a SHA-256 digest")
    if not plane.catalog.blobs.has(digest):
        raise BlobNotFoundError(digest)
    return FileResponse(plane.catalog.blobs.path_of(digest), media_type="application/octet-stream")


class BlobsBody(BaseModel):
    """The blobs an agent wants in one framed stream."""

    model_config = ConfigDict(extra="forbid")
    digests: Annotated[
        list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]],
        Field(min_length=1, max_length=200_000),
    ]


@router.post("/blobs")
async def blob_stream(body: BlobsBody, request: Request, plane: Plane) -> StreamingResponse:
    """Many blobs back to back (protocol.blobstream framing): one request per release."""
    await agent_from_headers(plane, request.headers)
    blobs = plane.catalog.blobs
    missing = [d for d in body.digests if not blobs.has(d)]
    if missing:
        raise BlobNotFoundError(missing[0])
    return StreamingResponse(
        _frames(blobs, body.digests), media_type="application/x-knightwatch-blobs"
    )


async def _frames(blobs: BlobStore, digests: list[str]) -> AsyncIterator[bytes]:
    for digest in digests:
        path = blobs.path_of(digest)
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            yield blob_header(digest, size)
            while chunk := handle.read(1024 * 1024):
                yield chunk


@router.websocket("/connect")
async def connect(socket: WebSocket) -> None:
    """One agent's session: hello with a nonce, then signed reports up, commands down.

    The agent's protocol offer is read once it is authenticated; one the
    server cannot serve, or malformed headers, get a ``refused`` message and a
    close (:func:`_refuse`) before the node's session or row changes.
    """
    plane = socket.app.state.plane
    try:
        name = await agent_from_headers(plane, socket.headers)
    except KnightwatchError as exc:
        log.warning("agent connection refused: %s", exc.message)
        await socket.close(code=4401, reason=exc.message[:120])
        return
    await socket.accept()
    try:
        offer = read_offer(socket.headers)
        protocol = negotiate(offer, __version__)
    except (ProtocolHeaderError, ProtocolMismatchError) as exc:
        await _refuse(plane, socket, name, exc)
        return
    plane.refusals.accepted(name)
    session = _Session(plane, socket, name, offer, protocol)
    await session.run()


class _ServerStopping(Exception):  # noqa: N818 - control flow, never shown to anyone
    """The control plane began to stop before this session was recorded."""


async def _refuse(
    plane: Any, socket: WebSocket, node: str, error: ProtocolHeaderError | ProtocolMismatchError
) -> None:
    """Tell the agent why it is not served (``refused``: every protocol reads it), record it."""
    log.warning("agent %s refused at connect: %s", node, error.message)
    code = CLOSE_BAD_HANDSHAKE if isinstance(error, ProtocolHeaderError) else CLOSE_UNSUPPORTED
    if plane.refusals.due(node, error.message):  # not every retry: one write per 30 s
        with contextlib.suppress(RuntimeError):  # the store thread is shut down
            await plane.in_store(functools.partial(_record_refusal, plane, node, error.message))
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await socket.send_text(Refused(reason=error.message).model_dump_json())
        await socket.close(code=code, reason=error.message[:120])


def _record_refusal(plane: Any, node: str, reason: str) -> None:
    with plane.db.session() as session:
        record_refusal(session, node, reason=reason, now=plane.clock.now())


class _Session:
    """The server side of one agent connection."""

    def __init__(
        self, plane: Any, socket: WebSocket, node: str, offer: Offer, protocol: int
    ) -> None:
        self.plane = plane
        self.socket = socket
        self.node = node
        self.offer = offer
        self.protocol = protocol
        self.nonce = secrets.token_urlsafe(24)
        self.connection = Connection(node, socket, protocol=protocol)
        self.last_seq = 0
        self.public_key: Ed25519PublicKey | None = None
        self.greeted = False
        self.group = "default"
        self.rearms = ResendThrottle(plane.clock, REARM_RESEND_S)
        """When to re-send a missed re-arm, by halt (one is on its way otherwise)."""

    async def run(self) -> None:
        replaced = self.plane.hub.attach(self.connection)
        if replaced is not None:
            with contextlib.suppress(Exception):
                await replaced.socket.close(code=4409, reason="replaced by a newer connection")
        writer: asyncio.Task[None] | None = None
        try:
            await self.plane.reports.record(SessionChange(self._record_connected, node=self.node))
            writer = asyncio.create_task(self._write())
            await self.socket.send_text(self._hello().wire())
            await self._read()
        except (WebSocketDisconnect, RuntimeError, TimeoutError, _ServerStopping):
            pass
        except asyncio.CancelledError:
            if not self.plane.stopping:
                raise
            # The server stops (serving.py ends every session): nothing is lost, the plane
            # records every node disconnected at once; the session ends quietly.
        finally:
            if writer is not None:
                writer.cancel()
            if self.plane.hub.detach(self.connection) and not self.plane.stopping:
                gone = SessionChange(
                    self._record_disconnected, after=self._after_disconnect, node=self.node
                )
                with contextlib.suppress(RuntimeError):  # the store thread is shut down
                    await self.plane.reports.record(gone)

    def _hello(self) -> Hello:
        """The greeting in the session's protocol (protocol 1's has no version fields)."""
        legacy = self.protocol == LEGACY_PROTOCOL
        return Hello(
            node=self.node,
            nonce=self.nonce,
            heartbeat_s=self.plane.settings.heartbeat_s,
            server_time=self.plane.clock.now(),
            dead_man_s=dead_man_seconds(
                self.group, self.plane.settings.armed_groups, self.plane.settings.dead_man_s
            ),
            protocol=None if legacy else self.protocol,
            server_version=None if legacy else __version__,
        )

    async def _write(self) -> None:
        while True:
            text = await self.connection.outgoing.get()
            await self.socket.send_text(text)

    async def _read(self) -> None:
        inbox = Inbox(is_plain_heartbeat, on_drop=self.plane.hub.count_dropped)
        receiver = asyncio.create_task(self._receive(inbox))
        try:
            await self._take_each(inbox)
        finally:
            receiver.cancel()
            if inbox.dropped:
                log.debug("%s: %d stale heartbeat(s) dropped", self.node, inbox.dropped)

    async def _receive(self, inbox: Inbox) -> None:
        """Read the socket into ``inbox`` until it fails or stays silent for five heartbeats."""
        timeout = max(5.0, 5 * self.plane.settings.heartbeat_s)
        try:
            while True:
                async with asyncio.timeout(timeout):  # no task per message, unlike wait_for
                    text = await self.socket.receive_text()
                await inbox.put(text)
        except Exception as exc:  # a disconnect, the silence, or a bad frame: the session's end
            inbox.end(exc)  # what is in the inbox is still checked and stored first

    async def _take_each(self, inbox: Inbox) -> None:
        while True:
            text = await inbox.take()
            if not self.plane.hub.holds(self.connection):
                return  # a newer session of the node began: what this one still holds is older
            try:
                report = self._check(text)
            except ReportError as exc:
                log.warning("report from %s refused: %s", self.node, exc.message)
                await self.socket.send_text(Refused(reason=exc.message).model_dump_json())
                await self.socket.close(code=1008, reason=exc.message[:120])
                return
            await self.plane.reports.store(self, report)

    def _check(self, text: str) -> Report:
        if len(text.encode("utf-8")) > MAX_MESSAGE_BYTES:
            raise ReportError(f"message larger than {MAX_MESSAGE_BYTES} bytes")
        try:
            signed = SignedReport.model_validate_json(text)
        except ValidationError as exc:
            raise ReportError(f"malformed message: {exc.errors()[0]['msg']}") from None
        report = open_report(signed, self._public_key())
        if report.node != self.node:
            raise ReportError(f"report names node {report.node}, but this is {self.node}")
        if report.nonce != self.nonce:
            raise ReportError("stale nonce: the report was not made for this session")
        if report.seq <= self.last_seq:
            raise ReportError(f"replayed report: seq {report.seq} after {self.last_seq}")
        self.last_seq = report.seq
        return report

    def _public_key(self) -> Ed25519PublicKey:
        if self.public_key is None:  # _record_connected loads it before the first read
            raise ReportError("the session has not started: no key to check the report with")
        return self.public_key

    def after_commit(self, report: Report, ingested: Ingested) -> None:
        """Act on a report once it is stored (the batcher calls it on the store thread)."""
        if report.halt is not None:
            self.plane.halt_acks.bump()  # committed: wake whoever waits for this halt
        if ingested.flags_acked:
            self.plane.flag_acks.bump()
        for message in ingested.latched:  # a latched halt (or a missed re-arm) first of all
            if isinstance(message, Rearm) and not self.rearms.due(message.halt_id):
                continue
            self.plane.hub.send(self.node, message)
        if ingested.flags is not None:  # before any command that could start a service
            self.plane.hub.send(self.node, ingested.flags)
        if ingested.drift_change is not None:
            log.warning("%s", ingested.drift_change.summary)
        for halt in ingested.fleet_halts:  # a node's halt_fleet guard fired
            log.critical("guard %s asks for a fleet halt: %s", halt.rule, halt.reason)
            try:
                self.plane.halt(None, halt.reason, halt.requested_by)
            except Exception:  # the session must go on; the alert is recorded already
                log.exception("fleet halt for guard %s failed", halt.rule)
        if ingested.greeting:
            self.greeted = True  # ControlPlane.greet then tells the orchestrator, for the batch

    def _record_connected(self, session: Session) -> bool:
        if self.plane.stopping:  # queued behind others while the server began to stop
            raise _ServerStopping
        node = mark_connected(
            session,
            self.node,
            nonce=self.nonce,
            now=self.plane.clock.now(),
            agent_version=self.offer.version,
            protocol=self.protocol,
        )
        self.group = node.group_name
        self.public_key = public_key_from_text(node.public_key or "")  # enrolled: has one
        return False  # the fleet's facts change with the first report, not the connect

    def _record_disconnected(self, session: Session) -> bool:
        now = self.plane.clock.now()
        return mark_disconnected(session, self.node, now=now, record_conditions=False)

    def _after_disconnect(self) -> None:
        self.plane.orchestrator.on_disconnect(self.node)
