"""A minimal control plane speaking the agent contract, for testing the agent's client side.

It is the contract, not the product: enrollment with one join token,
release documents and blobs (with Range) from a release store, and the
WebSocket that greets with a nonce, checks every report's signature, nonce
and sequence, and sends whatever commands the test gives it. It runs under
uvicorn in a background thread; tests talk to it through thread-safe methods.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from knightwatch.bundle.blobstore import BlobStore, is_digest
from knightwatch.bundle.release_store import ENVELOPE_FILE, MANIFEST_FILE
from knightwatch.protocol import (
    Hello,
    Report,
    ReportError,
    SignedReport,
    blob_header,
    open_report,
    public_key_from_text,
)
from tests.agent.conftest import free_port, wait_for

API = "/api/agent/v1"


@dataclass
class Session:
    """One agent connection as the stub saw it."""

    node: str
    nonce: str
    reports: list[Report] = field(default_factory=list)
    refused: str | None = None


class StubPlane:
    """The agent-facing half of a control plane, over a release store directory."""

    def __init__(
        self,
        store: Path,
        trusted_pems: list[str],
        *,
        token: str = "join-me",
        heartbeat_s: float = 0.2,
    ) -> None:
        self.store = store
        self.trusted_pems = trusted_pems
        self.token = token
        self.heartbeat_s = heartbeat_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.credentials: dict[str, str] = {}
        self.public_keys: dict[str, str] = {}
        self.sessions: list[Session] = []
        self.ranges: list[str] = []
        self.blob_gets = 0
        self.bulk_requests = 0
        self.bulk_enabled = True
        self.blob_limit: int | None = None
        """When set, each whole-blob response stops after this many bytes (a broken download)."""
        self.bulk_limit: int | None = None
        """When set, each bulk stream stops after this many bytes."""
        self.corrupt: set[str] = set()
        """Blobs served (in bulk) with their first byte flipped."""
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: asyncio.Queue[str] | None = None
        self._socket: WebSocket | None = None
        app = Starlette(
            routes=[
                Route(f"{API}/enroll", self._enroll, methods=["POST"]),
                Route(f"{API}/releases/{{digest}}/{{document}}", self._document),
                Route(f"{API}/blobs/{{digest}}", self._blob),
                Route(f"{API}/blobs", self._blobs, methods=["POST"]),
                WebSocketRoute(f"{API}/connect", self._connect),
            ]
        )
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            ws="websockets-sansio",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    # --- control from the test -------------------------------------------------------------

    def __enter__(self) -> StubPlane:
        self._thread.start()
        wait_for(lambda: self._server.started, "the stub control plane did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def connected(self) -> bool:
        """True once an agent has sent its first report."""
        return bool(self.reports())

    def reports(self) -> list[Report]:
        """Every report received so far, all sessions."""
        with self._lock:
            return [r for s in self.sessions for r in s.reports]

    def send(self, message: Any) -> None:
        """Send a message (a protocol model) to the connected agent."""
        assert self._loop is not None and self._outbox is not None, "no agent connected"
        text = message.model_dump_json()
        self._loop.call_soon_threadsafe(self._outbox.put_nowait, text)

    def send_raw(self, text: str) -> None:
        """Send arbitrary text to the connected agent."""
        assert self._loop is not None and self._outbox is not None, "no agent connected"
        self._loop.call_soon_threadsafe(self._outbox.put_nowait, text)

    def drop(self) -> None:
        """Close the current agent connection abruptly (the agent must reconnect)."""
        assert self._loop is not None and self._socket is not None
        socket = self._socket
        asyncio.run_coroutine_threadsafe(socket.close(code=1011), self._loop).result(timeout=10)

    def ack_for(self, deployment_id: int, digest: str, timeout_s: float = 120) -> Report:
        """Wait for the ack report of a command."""

        def find() -> Report | None:
            for report in self.reports():
                ack = report.ack
                if ack is not None and (ack.deployment_id, ack.digest) == (deployment_id, digest):
                    return report
            return None

        wait_for(lambda: find() is not None, f"no ack for {deployment_id}/{digest[:12]}", timeout_s)
        found = find()
        assert found is not None
        return found

    # --- HTTP ------------------------------------------------------------------------------

    async def _enroll(self, request: Request) -> Response:
        body = await request.json()
        if body.get("token") != self.token:
            detail = f"join token is not valid for node {body.get('name')}"
            return JSONResponse({"detail": detail}, status_code=401)
        name = body["name"]
        credential = secrets.token_urlsafe(16)
        self.credentials[name] = credential
        self.public_keys[name] = body["public_key"]
        return JSONResponse(
            {
                "node": name,
                "credential": credential,
                "trusted_keys": self.trusted_pems,
                "heartbeat_s": self.heartbeat_s,
            }
        )

    def _authorised(self, headers: Any) -> str | None:
        name = headers.get("x-knightwatch-node", "")
        given = headers.get("authorization", "")
        expected = self.credentials.get(name)
        return name if expected and given == f"Bearer {expected}" else None

    async def _document(self, request: Request) -> Response:
        if self._authorised(request.headers) is None:
            return JSONResponse({"detail": "unauthorised"}, status_code=401)
        digest, document = request.path_params["digest"], request.path_params["document"]
        name = {"manifest": MANIFEST_FILE, "envelope": ENVELOPE_FILE}.get(document)
        path = self.store / "releases" / digest / (name or "")
        if name is None or not is_digest(digest) or not path.is_file():
            return JSONResponse({"detail": "no such release"}, status_code=404)
        return Response(path.read_bytes(), media_type="application/json")

    async def _blob(self, request: Request) -> Response:
        if self._authorised(request.headers) is None:
            return JSONResponse({"detail": "unauthorised"}, status_code=401)
        digest = request.path_params["digest"]
        self.blob_gets += 1
        if "range" in request.headers:
            self.ranges.append(request.headers["range"])
        blobs = BlobStore(self.store)
        if not is_digest(digest) or not blobs.has(digest):
            return JSONResponse({"detail": "no such blob"}, status_code=404)
        if self.blob_limit is not None and "range" not in request.headers:
            data = blobs.read(digest)[: self.blob_limit]
            length = str(blobs.path_of(digest).stat().st_size)
            return Response(data, headers={"content-length": length})
        return FileResponse(blobs.path_of(digest))

    async def _blobs(self, request: Request) -> Response:
        if self._authorised(request.headers) is None:
            return JSONResponse({"detail": "unauthorised"}, status_code=401)
        if not self.bulk_enabled:
            return JSONResponse({"detail": "not here"}, status_code=404)
        self.bulk_requests += 1
        blobs = BlobStore(self.store)
        stream = bytearray()
        for digest in (await request.json())["digests"]:
            data = bytearray(blobs.read(digest))
            if digest in self.corrupt:
                data[0] ^= 0x01
            stream += blob_header(digest, len(data)) + data
        if self.bulk_limit is not None:
            return Response(
                bytes(stream[: self.bulk_limit]), headers={"content-length": str(len(stream))}
            )
        return Response(bytes(stream), media_type="application/x-knightwatch-blobs")

    # --- WebSocket -------------------------------------------------------------------------

    async def _connect(self, socket: WebSocket) -> None:
        name = self._authorised(socket.headers)
        if name is None:
            await socket.close(code=4401)
            return
        await socket.accept()
        session = Session(name, secrets.token_urlsafe(24))
        with self._lock:
            self.sessions.append(session)
        self._loop, self._outbox, self._socket = asyncio.get_running_loop(), asyncio.Queue(), socket
        hello = Hello(
            node=name,
            nonce=session.nonce,
            heartbeat_s=self.heartbeat_s,
            server_time=datetime.now(UTC),
        )
        await socket.send_text(hello.model_dump_json())
        writer = asyncio.create_task(self._write(socket, self._outbox))
        try:
            await self._read(socket, session)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            writer.cancel()

    async def _write(self, socket: WebSocket, outbox: asyncio.Queue[str]) -> None:
        while True:
            await socket.send_text(await outbox.get())

    async def _read(self, socket: WebSocket, session: Session) -> None:
        key = public_key_from_text(self.public_keys[session.node])
        last = 0
        while True:
            text = await socket.receive_text()
            try:
                report = open_report(SignedReport.model_validate_json(text), key)
                if (
                    report.nonce != session.nonce
                    or report.seq <= last
                    or report.node != session.node
                ):
                    raise ReportError(f"stale or replayed report (seq {report.seq} after {last})")
            except ReportError as exc:
                session.refused = exc.message
                await socket.close(code=1008)
                return
            last = report.seq
            with self._lock:
                session.reports.append(report)
