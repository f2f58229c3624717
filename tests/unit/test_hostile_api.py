"""Hostile input to the control plane's HTTP API, in process: refused first, by name.

The app is the real one (``create_app`` over a real ``ControlPlane`` with a
SQLite store in a temporary directory and a virtual clock); requests go
through ``httpx.ASGITransport``, or straight through the ASGI interface when
a test must see how much of a body the server read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from knightwatch.api import create_app
from knightwatch.bundle import ReleaseStore, SigningKey, build_release
from knightwatch.bundle.release_store import ENVELOPE_FILE, MANIFEST_FILE, SBOM_FILE
from knightwatch.clock import VirtualClock
from knightwatch.control.changes import SOLO
from knightwatch.server.plane import ControlPlane
from knightwatch.server.settings import Secret, ServerSettings
from tests.helpers import MakeSource

TOKEN = "operator-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BIG = 2**63


@pytest.fixture
def clock() -> VirtualClock:
    """The control plane's clock: it moves only when a test says so."""
    return VirtualClock()


@pytest.fixture
def plane(tmp_path: Path, key_dir: Path, clock: VirtualClock) -> Iterator[ControlPlane]:
    """A control plane over a fresh data directory, on a virtual clock, trusting release.pub."""
    settings = ServerSettings(
        data_dir=tmp_path / "data",
        trusted_keys=(key_dir / "release.pub",),
        operator_token=Secret(TOKEN),
        max_request_bytes=64 * 1024,
        max_upload_documents_bytes=256 * 1024,
        upload_expiry_s=600.0,
        approvals=SOLO,
    )
    control = ControlPlane.open(settings, clock=clock)
    yield control
    control.store_worker.shutdown(wait=True)
    control.db.close()


@pytest.fixture
def app(plane: ControlPlane) -> FastAPI:
    """The real ASGI app serving ``plane``."""
    return create_app(plane)


class Client:
    """A synchronous client of the ASGI app; a server error is a response, not an exception."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request through ``httpx.ASGITransport`` and return the response."""

        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://kw") as http:
                response = await http.request(method, path, **kwargs)
                await response.aread()
                return response

        return asyncio.run(send())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET ``path``."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST ``path``."""
        return self.request("POST", path, **kwargs)


@pytest.fixture
def client(app: FastAPI) -> Client:
    """A client of ``app``."""
    return Client(app)


def raw_request(
    app: FastAPI, method: str, path: str, headers: dict[str, str], chunks: list[bytes]
) -> tuple[int, dict[str, Any], int]:
    """Send a chunked body through ASGI; return the status, JSON answer and chunks the app read."""
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": True}
        await asyncio.sleep(0)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 7400),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), read


def error_of(response: Any) -> str:
    """The ``error`` line of a refusal."""
    return str(response.json()["error"])


# -- the probe's hostile inputs, one row each ------------------------------------------------

HOSTILE: list[tuple[str, str, str, dict[str, Any] | None, int, str]] = [
    # (id, method, path, JSON body, status, text the refusal must contain)
    (
        "deploy-empty-nodes",
        "POST",
        "/api/v1/deployments",
        {"release": "r", "nodes": ""},
        400,
        "nodes",
    ),
    (
        "deploy-blank-nodes",
        "POST",
        "/api/v1/deployments",
        {"release": "r", "nodes": "  "},
        400,
        "selector is empty",
    ),
    (
        "deploy-commas",
        "POST",
        "/api/v1/deployments",
        {"release": "r", "nodes": " , "},
        400,
        "selector is empty",
    ),
    (
        "kill-blank-nodes",
        "POST",
        "/api/v1/halts",
        {"nodes": " ", "reason": "x"},
        400,
        "selector is empty",
    ),
    ("rearm-blank-nodes", "POST", "/api/v1/rearm", {"nodes": "\t", "reason": "x"}, 422, "nodes"),
    (
        "rearm-comma",
        "POST",
        "/api/v1/rearm",
        {"nodes": ",", "reason": "x"},
        400,
        "selector is empty",
    ),
    ("audit-blank-nodes", "POST", "/api/v1/audits", {"nodes": "   "}, 400, "selector is empty"),
    ("deployment-id", "GET", f"/api/v1/deployments/{BIG}", None, 400, "deployment_id"),
    ("alert-id", "GET", f"/api/v1/alerts/{BIG}", None, 400, "alert_id"),
    ("alert-ack-id", "POST", f"/api/v1/alerts/{BIG}/ack", {}, 400, "alert_id"),
    ("halt-id", "GET", f"/api/v1/halts/{BIG}", None, 400, "halt_id"),
    ("audit-id", "GET", f"/api/v1/audits/{BIG}", None, 400, "audit_id"),
    ("retirement-id", "GET", f"/api/v1/retirements/{BIG}", None, 400, "retirement_id"),
    ("kill-reason-ansi", "POST", "/api/v1/halts", {"reason": "stop \x1b[2J now"}, 422, "reason"),
    ("kill-reason-nul", "POST", "/api/v1/halts", {"reason": "a\x00b"}, 422, "\\x00"),
    ("kill-reason-bidi", "POST", "/api/v1/halts", {"reason": "\u202eevil"}, 422, "\\u202e"),
    ("rearm-reason-c1", "POST", "/api/v1/rearm", {"reason": "x\x9by"}, 422, "reason"),
    (
        "drain-reason-isolate",
        "POST",
        "/api/v1/nodes/node1/drain",
        {"reason": "\u2066x"},
        422,
        "reason",
    ),
    (
        "reconcile-reason-lrm",
        "POST",
        "/api/v1/nodes/node1/reconcile",
        {"reason": "\u200ex"},
        422,
        "reason",
    ),
    ("retire-reason-bell", "POST", "/api/v1/releases/r/retire", {"reason": "\x07"}, 422, "reason"),
    (
        "ack-comment-osc",
        "POST",
        "/api/v1/alerts/1/ack",
        {"comment": "\x1b]0;pwned\x07"},
        422,
        "comment",
    ),
    ("ack-comment-rlm", "POST", "/api/v1/alerts/1/ack", {"comment": "ok\u200f"}, 422, "comment"),
    ("deploy-release-esc", "POST", "/api/v1/deployments", {"release": "r\x1b[0m"}, 422, "release"),
    ("enroll-name-esc", "POST", "/api/v1/nodes/node%1b1/enroll", {}, 422, "name"),
    ("node-name-newline", "POST", "/api/v1/nodes/node%0a1/drain", {"reason": "x"}, 422, "name"),
    ("history-item-esc", "GET", "/api/v1/history?item=%1b%5b31m", None, 422, "item"),
    (
        "agent-enroll-name",
        "POST",
        "/api/agent/v1/enroll",
        {"name": "n\x1b", "token": "t", "public_key": "k"},
        422,
        "name",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "text"),
    [row[1:] for row in HOSTILE],
    ids=[row[0] for row in HOSTILE],
)
def test_hostile_input_is_refused_by_name(
    client: Client, method: str, path: str, body: Any, status: int, text: str
) -> None:
    """Each hostile input is refused with a JSON answer naming what was wrong, never a 500."""
    response = client.request(method, path, json=body, headers=AUTH)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert text in error_of(response), error_of(response)


def test_refused_selectors_change_nothing(client: Client) -> None:
    """An empty selector creates no halt, no audit and no deployment."""
    for path, body in (
        ("/api/v1/halts", {"nodes": "", "reason": "x"}),
        ("/api/v1/audits", {"nodes": ""}),
        ("/api/v1/deployments", {"release": "r", "nodes": ""}),
    ):
        assert client.post(path, json=body, headers=AUTH).status_code == 400
    assert client.get("/api/v1/halts", headers=AUTH).json() == []
    assert client.get("/api/v1/deployments", headers=AUTH).json() == []


# -- authentication first, bodies bounded ----------------------------------------------------


def test_unauthenticated_body_is_not_read(app: FastAPI) -> None:
    """Without the token, POST /uploads is refused (401) before the body is read."""
    chunks = [b'{"manifest": "' + b"A" * 65536] * 64
    status, answer, read = raw_request(app, "POST", "/api/v1/uploads", {}, chunks)
    assert status == 401, answer
    assert "token" in answer["error"]
    assert read == 0
    small = [b'{"manifest": "", "sbom": "", "envelope": ""}']
    status, answer, read = raw_request(app, "POST", "/api/v1/uploads", AUTH, small)
    assert (status, read) == (400, 1), answer  # with the token it reaches the route


def test_wrong_token_is_refused_before_the_body(app: FastAPI) -> None:
    """A wrong (or non-ASCII) bearer token is a 401 before any byte of the body is read."""
    for token in ("wrong", "caf\u00e9"):
        headers = {"Authorization": f"Bearer {token}"}
        chunks = [b"x" * 1024] * 8
        status, _answer, read = raw_request(app, "POST", "/api/v1/deployments", headers, chunks)
        assert (status, read) == (401, 0)


def test_declared_oversized_body_is_refused_unread(app: FastAPI) -> None:
    """An authenticated body whose Content-Length passes the route's limit is a 413, unread."""
    headers = {**AUTH, "Content-Length": str(10 * 1024 * 1024)}
    status, answer, read = raw_request(
        app, "POST", "/api/v1/deployments", headers, [b"x" * 1024] * 4
    )
    assert status == 413, answer
    assert "POST /api/v1/deployments" in answer["error"] and answer["hint"]
    assert read == 0


def test_streamed_oversized_body_is_cut_off(app: FastAPI) -> None:
    """A body without Content-Length is counted as read and refused (413) once past the limit."""
    chunks = [b'{"manifest": "' + b"A" * 65536] + [b"A" * 65536] * 63
    status, answer, read = raw_request(app, "POST", "/api/v1/uploads", AUTH, chunks)
    assert status == 413, answer
    assert read <= 5  # the documents limit here is 256 KiB: stopped at once, not at 4 MiB


def test_agent_blob_list_needs_a_credential_before_its_body(app: FastAPI) -> None:
    """POST /api/agent/v1/blobs without a node credential is a 401 before the body is read."""
    status, _answer, read = raw_request(
        app, "POST", "/api/agent/v1/blobs", {}, [b'{"digests": ["' + b"0" * 1024] * 8
    )
    assert (status, read) == (401, 0)


# -- files on disk ---------------------------------------------------------------------------


def test_database_files_are_private(plane: ControlPlane) -> None:
    """The SQLite database, its WAL and SHM are 0600 and the data directory we made is 0700."""
    with plane.db.session() as session:  # a connection is open: the WAL and SHM exist
        session.execute(text("SELECT 1"))
    data = plane.settings.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [p for p in data.iterdir() if p.name.startswith("knightwatch.db")]
    assert {p.name for p in files} >= {"knightwatch.db", "knightwatch.db-wal", "knightwatch.db-shm"}
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


# -- abandoned uploads -----------------------------------------------------------------------


def upload_documents(
    make_source: MakeSource, signing_key: SigningKey, store: Path
) -> dict[str, str]:
    """The body of POST /uploads for a freshly built release."""
    built = build_release(make_source(), store, signing_key)
    found = ReleaseStore(store).find(built.release_id)
    return {
        key: base64.b64encode(found.read(name)).decode("ascii")
        for key, name in (
            ("manifest", MANIFEST_FILE),
            ("sbom", SBOM_FILE),
            ("envelope", ENVELOPE_FILE),
        )
    }


async def metric(http: httpx.AsyncClient, name: str) -> float:
    """The value of an unlabelled sample of GET /metrics."""
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def test_dropped_heartbeats_are_counted_on_metrics(app: FastAPI, plane: ControlPlane) -> None:
    """knightwatch_heartbeats_dropped_total is the replica's count, read by Prometheus's parser."""

    async def scenario() -> list[float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://kw", headers=AUTH
        ) as http:
            seen = [await counter(http, "knightwatch_heartbeats_dropped")]
            plane.hub.count_dropped(3)
            plane.hub.count_dropped(2)
            seen.append(await counter(http, "knightwatch_heartbeats_dropped"))
            return seen

    assert asyncio.run(scenario()) == [0.0, 5.0]


async def counter(http: httpx.AsyncClient, family: str) -> float:
    """The ``_total`` sample of counter ``family`` on GET /metrics, parsed by prometheus-client."""
    text = (await http.get("/metrics")).text
    for metric in text_string_to_metric_families(text):
        if metric.name == family and metric.type == "counter":
            return float(next(s.value for s in metric.samples if s.name == family + "_total"))
    raise AssertionError(f"counter {family} is not in /metrics")


def test_abandoned_upload_expires_on_the_server_clock(
    app: FastAPI,
    clock: VirtualClock,
    plane: ControlPlane,
    make_source: MakeSource,
    signing_key: SigningKey,
    tmp_path: Path,
) -> None:
    """An upload idle past upload_expiry_s is deleted by the server's own tick, and counted.

    The server looks every tenth of the expiry, so it is gone by 1.1 x the expiry.
    """
    documents = upload_documents(make_source, signing_key, tmp_path / "store")

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),  # the server runs: its periodic tick too
            httpx.AsyncClient(transport=transport, base_url="http://kw", headers=AUTH) as http,
        ):
            ticket = (await http.post("/api/v1/uploads", json=documents)).json()
            staged = plane.settings.data_dir / ".tmp" / f"upload-{ticket['upload_id']}"
            assert staged.is_dir()
            assert await metric(http, "knightwatch_uploads_pending") == 1
            assert await metric(http, "knightwatch_uploads_expired_total") == 0
            clock.advance(599)
            await asyncio.sleep(1.0)
            assert staged.is_dir()  # idle for 599 s of 600: kept
            clock.advance(61)  # the server looks every tenth of the expiry (here 60 s)
            for _ in range(100):  # a generous bound against a hang: the tick is every 0.2 s
                if not staged.exists():
                    break
                await asyncio.sleep(0.1)
            assert not staged.exists()
            assert await metric(http, "knightwatch_uploads_pending") == 0
            assert await metric(http, "knightwatch_uploads_expired_total") == 1
            blob = ticket["missing"][0]
            path = f"/api/v1/uploads/{ticket['upload_id']}/blobs/{blob}"
            refused = await http.put(path, content=b"x")
            assert refused.status_code == 404 and "expired" in error_of(refused)

    asyncio.run(scenario())
