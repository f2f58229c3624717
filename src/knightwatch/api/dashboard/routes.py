"""The dashboard's routes: sign in and out, the pages, their live streams, the static files.

Pages are rendered on the server; each page's live part is one fragment,
re-rendered from the store and pushed over Server-Sent Events whenever it
changed, so the first load and every update come from the same template.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from knightwatch import __version__
from knightwatch.api.auth import authorize_operator
from knightwatch.api.dashboard.pages import PAGES, Page
from knightwatch.api.dashboard.render import render
from knightwatch.api.gate import SESSION_COOKIE, cookies
from knightwatch.control.enrollment import AuthenticationError
from knightwatch.control.users import Role
from knightwatch.errors import KnightwatchError
from knightwatch.server.plane import ControlPlane
from knightwatch.server.users import KnownUser
from knightwatch.server.web_sessions import WebSession

__all__ = ["STATIC_DIR", "router"]

log = logging.getLogger("knightwatch.server")
router = APIRouter(include_in_schema=False)
STATIC_DIR = Path(__file__).parent / "static"
LOGIN_COOKIE = "kw_login"
_READ = ("GET", "/api/v1/status")
"""The route a page stands for when its viewer is authorised: reading needs viewer."""
_ALIVE_S = 2.0
"""An unchanged page still says it is live this often, so a silent stream shows as stale."""
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _plane(request: Request) -> ControlPlane:
    plane: ControlPlane = request.app.state.plane
    return plane


def _secure(request: Request) -> bool:
    return _plane(request).settings.tls_cert is not None


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


async def _signed_in(request: Request) -> tuple[WebSession, KnownUser] | None:
    """The request's session and its user as the API would see them, or None."""
    plane = _plane(request)
    session = plane.web_sessions.find(cookies(request.headers).get(SESSION_COOKIE))
    if session is None:
        return None
    try:
        user = await authorize_operator(plane, {"authorization": f"Bearer {session.token}"}, *_READ)
    except KnightwatchError:
        plane.web_sessions.close(session.sid)
        return None
    return session, user


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={target}", status_code=303)


@router.get("/")
@router.get("/ui")
async def home() -> RedirectResponse:
    """The fleet page is the dashboard's front page."""
    return RedirectResponse("/ui/fleet", status_code=303)


@router.get("/ui/login")
async def login_form(request: Request) -> HTMLResponse:
    """The sign-in form (its nonce also goes in a cookie: a forged login cannot match it)."""
    return _login_page(request, "", 200)


def _login_page(request: Request, error: str, status: int) -> HTMLResponse:
    nonce = secrets.token_urlsafe(24)
    target = _safe_next(request.query_params.get("next"))
    body = render("login.html", nonce=nonce, error=error, next=target, version=__version__)
    response = _html(body, status)
    response.set_cookie(
        LOGIN_COOKIE, nonce, max_age=600, httponly=True, samesite="strict", secure=_secure(request)
    )
    return response


def _safe_next(target: str | None) -> str:
    """Only a page of this dashboard (never another site, never ``//host``)."""
    if target and target.startswith("/ui/") and not target.startswith("//"):
        return target[:500]
    return "/ui/fleet"


@router.post("/ui/login")
async def login(request: Request) -> Response:
    """Exchange a user token for a session cookie."""
    plane = _plane(request)
    form = _form(await request.body())
    nonce = cookies(request.headers).get(LOGIN_COOKIE)
    if not nonce or not secrets.compare_digest(form.get("nonce", ""), nonce):
        return _login_page(request, "The sign-in form expired; try again.", 400)
    token = form.get("token", "").strip()
    try:
        user = await authorize_operator(plane, {"authorization": f"Bearer {token}"}, *_READ)
    except KnightwatchError as exc:
        if isinstance(exc, AuthenticationError):
            address = request.client.host if request.client else "unknown"
            await plane.login_failures.refused(
                address, "POST /ui/login", plane.record_login_failures
            )
        return _login_page(request, f"{exc.message}.", 401)
    session = plane.web_sessions.open(user.name, token)
    log.info("dashboard sign-in: user=%s role=%s", user.name, user.role)
    response = RedirectResponse(_safe_next(form.get("next")), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session.sid,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/",
    )
    response.delete_cookie(LOGIN_COOKIE)
    return response


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    """Sign out (the form carries the session's CSRF token)."""
    plane = _plane(request)
    session = plane.web_sessions.find(cookies(request.headers).get(SESSION_COOKIE))
    if session is not None:
        session.check_csrf(_form(await request.body()).get("csrf"))
        plane.web_sessions.close(session.sid)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _form(body: bytes) -> dict[str, str]:
    parsed = parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)
    return {key: values[0] for key, values in parsed.items()}


@router.get("/ui/{name}")
async def page(name: str, request: Request) -> Response:
    """One page, rendered now; its live part then follows the stream."""
    shown = PAGES.get(name)
    if shown is None:
        return _html(render("missing.html", name=name[:80], pages=PAGES.values()), 404)
    signed = await _signed_in(request)
    if signed is None:
        return _to_login(request)
    session, user = signed
    params = dict(request.query_params)
    try:
        fragment = await asyncio.to_thread(_fragment, _plane(request), shown, params, user)
        problem = ""
    except KnightwatchError as exc:
        fragment, problem = "", exc.message
    body = render(
        "page.html",
        page=shown,
        pages=PAGES.values(),
        user=user,
        csrf=session.csrf,
        fragment=fragment,
        problem=problem,
        stream=f"/ui/{name}/events" + (f"?{request.url.query}" if request.url.query else ""),
        params=params,
        can_halt=user.role.allows(Role.OPERATOR),
        version=__version__,
    )
    return _html(body)


def _fragment(plane: ControlPlane, shown: Page, params: dict[str, str], user: KnownUser) -> str:
    context = shown.load(plane, params)
    return render(
        shown.fragment,
        **context,
        user=user,
        can_act=user.role.allows(Role.OPERATOR),
        can_approve=user.role.allows(Role.APPROVER),
        params=params,
    )


@router.get("/ui/{name}/events")
async def events(name: str, request: Request) -> Response:
    """The page's live fragment as Server-Sent Events: sent again whenever it changes."""
    shown = PAGES.get(name)
    signed = await _signed_in(request)
    if shown is None or signed is None:
        return Response("not signed in", status_code=401, headers=SECURITY_HEADERS)
    session, user = signed
    stream = _stream(request, shown, session.sid, user)
    headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


async def _stream(request: Request, shown: Page, sid: str, user: KnownUser) -> AsyncIterator[str]:
    plane = _plane(request)
    params = dict(request.query_params)
    last: str | None = None
    quiet = 0.0
    yield "retry: 1000\n\n"
    while not await request.is_disconnected():
        if plane.web_sessions.find(sid) is None:
            yield _event("expired", "signed out")
            return
        try:
            fragment = await asyncio.to_thread(_fragment, plane, shown, params, user)
        except KnightwatchError as exc:
            yield _event("problem", exc.message)
            fragment = last or ""
        if fragment != last:
            last, quiet = fragment, 0.0
            yield _event("fragment", fragment)
        elif quiet >= _ALIVE_S:
            quiet = 0.0
            yield _event("alive", plane.clock.now().isoformat())
        await asyncio.sleep(shown.period_s)
        quiet += shown.period_s


def _event(kind: str, data: str) -> str:
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {kind}\n{lines}\n"


_STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@router.get("/ui/static/{name}")
async def static(name: str) -> Response:
    """The dashboard's own script and style sheet (nothing is loaded from elsewhere)."""
    path = STATIC_DIR / name
    kind = _STATIC_TYPES.get(path.suffix)
    if kind is None or "/" in name or not path.is_file():
        return Response("no such file", status_code=404, headers=SECURITY_HEADERS)
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
    return Response(path.read_bytes(), media_type=kind, headers=headers)
