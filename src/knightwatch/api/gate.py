"""The door of the HTTP API: who is calling, and how much they may send, before any route.

FastAPI reads and parses a request's body before it resolves the route's
dependencies, so a token checked by a dependency is checked after an
unauthenticated caller has made the server read (and hold) whatever it sent.
:class:`RequestGate` is the outermost layer instead: it checks the caller's
credential from the headers alone, and for the operator API the role the
route needs (api/roles.py, the one table), then refuses a body larger than its
route accepts, by its ``Content-Length`` or, for a streamed body, as soon as
the bytes counted so far pass the limit.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from http.cookies import CookieError, SimpleCookie
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from knightwatch.api.auth import agent_from_headers, authorize_operator
from knightwatch.api.errors import RequestTooLargeError, error_body, status_for
from knightwatch.api.version import VERSION_PATH
from knightwatch.control.enrollment import AuthenticationError
from knightwatch.errors import InvalidInputError, KnightwatchError
from knightwatch.server.plane import ControlPlane
from knightwatch.server.settings import ServerSettings

__all__ = ["CSRF_HEADER", "SAFE_METHODS", "SESSION_COOKIE", "RequestGate", "body_limit", "cookies"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Message, Receive, Send], Awaitable[None]]

OPERATOR_PREFIX = "/api/v1/"
OPERATOR_OPEN = frozenset({VERSION_PATH})
"""Operator routes anyone may read: the server's version (api/version.py says why)."""
AGENT_PREFIX = "/api/agent/v1/"
AGENT_OPEN = {"/api/agent/v1/enroll"}
"""Agent routes a node calls before it has a credential (the join token is in the body)."""
AGENT_BLOB_LIST_BYTES = 16 * 1024 * 1024
"""``POST /api/agent/v1/blobs``: up to 200 000 digests in a JSON list."""
SESSION_COOKIE = "kw_session"
"""The dashboard's session cookie (server/web_sessions.py)."""
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_UPLOAD_STREAM = re.compile(r"^/api/v1/uploads/[^/]+/blobs(/[^/]+)?$")


def body_limit(settings: ServerSettings, method: str, path: str) -> int:
    """The largest body (bytes) the route ``method path`` accepts."""
    if method == "PUT" and _UPLOAD_STREAM.match(path):
        return settings.max_upload_stream_bytes
    if method == "POST" and path == "/api/v1/uploads":
        return settings.max_upload_documents_bytes
    if method == "POST" and path == "/api/agent/v1/blobs":
        return AGENT_BLOB_LIST_BYTES
    return settings.max_request_bytes


class RequestGate:
    """ASGI middleware: authenticate, then bound the body, before the route reads it."""

    def __init__(self, app: App, plane: ControlPlane) -> None:
        self.app = app
        self.plane = plane

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection (HTTP requests are checked; the rest pass)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method, path = scope["method"], scope["path"]
        limit = body_limit(self.plane.settings, method, path)
        try:
            await self._authenticate(scope, headers)
            _check_declared(headers.get("content-length"), limit, method, path)
        except AuthenticationError as exc:
            if path.startswith(OPERATOR_PREFIX):
                address = (scope.get("client") or ("unknown",))[0]
                await self.plane.login_failures.refused(
                    str(address), f"{method} {path}", self.plane.record_login_failures
                )
            await _refuse(exc, scope, receive, send)
            return
        except KnightwatchError as exc:
            await _refuse(exc, scope, receive, send)
            return
        await _Bounded(self.app, limit, f"{method} {path}")(scope, receive, send)

    async def _authenticate(self, scope: Message, headers: Headers) -> None:
        path = scope["path"]
        if path in OPERATOR_OPEN and scope["method"] in SAFE_METHODS:
            return
        if path.startswith(OPERATOR_PREFIX):
            method = scope["method"]
            presented: Mapping[str, str] = headers
            sid = None if "authorization" in headers else cookies(headers).get(SESSION_COOKIE)
            if sid is not None:
                presented = _from_session(self.plane, sid, headers, method)
            user = await authorize_operator(self.plane, presented, method, path)
            scope.setdefault("state", {})["user"] = user  # request.state.user in the routes
        elif path.startswith(AGENT_PREFIX) and path not in AGENT_OPEN:
            await agent_from_headers(self.plane, headers)


def cookies(headers: Headers) -> dict[str, str]:
    """The request's cookies by name (an unreadable Cookie header counts as none)."""
    jar: SimpleCookie = SimpleCookie()
    with contextlib.suppress(CookieError):
        jar.load(headers.get("cookie", ""))
    return {name: morsel.value for name, morsel in jar.items()}


def _from_session(
    plane: ControlPlane, sid: str, headers: Headers, method: str
) -> Mapping[str, str]:
    """A dashboard request: the session's token stands in for the bearer token.

    Reads need the session; anything else also needs its CSRF token in the
    ``X-CSRF-Token`` header (a header another site's form cannot send).
    """
    session = plane.web_sessions.find(sid)
    if session is None:
        raise AuthenticationError(
            "dashboard session unknown or expired", hint="sign in again at /ui/login"
        )
    if method not in SAFE_METHODS:
        session.check_csrf(headers.get(CSRF_HEADER))
    return {"authorization": f"Bearer {session.token}"}


def _check_declared(declared: str | None, limit: int, method: str, path: str) -> None:
    if declared is None:
        return
    if not declared.isdigit() or len(declared) > 20:
        raise InvalidInputError(f"Content-Length {declared[:40]!r} is not a byte count")
    if int(declared) > limit:
        raise _too_large(limit, f"{method} {path}")


def _too_large(limit: int, route: str) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"request body larger than {limit} bytes, the most {route} accepts",
        hint="the limits are settings: KNIGHTWATCH_MAX_REQUEST_BYTES, "
        "KNIGHTWATCH_MAX_UPLOAD_DOCUMENTS_BYTES, KNIGHTWATCH_MAX_UPLOAD_STREAM_BYTES",
    )


async def _refuse(exc: KnightwatchError, scope: Message, receive: Receive, send: Send) -> None:
    response = JSONResponse(error_body(exc), status_code=status_for(exc))
    await response(scope, receive, send)


class _Bounded:
    """One request whose body is counted as the route reads it.

    Past the limit the refusal is sent at once, the route is told the client
    went away, and whatever the route still tries to answer is dropped.
    """

    def __init__(self, app: App, limit: int, route: str) -> None:
        self.app = app
        self.limit = limit
        self.route = route
        self.seen = 0
        self.started = False
        self.refused = False

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        async def counted_receive() -> Message:
            if self.refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                self.seen += len(message.get("body", b""))
                if self.seen > self.limit:
                    self.refused = True
                    if not self.started:
                        await _refuse(_too_large(self.limit, self.route), scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if self.refused:
                return
            if message["type"] == "http.response.start":
                self.started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not self.refused:
                raise
