"""Dashboard sessions: a user token exchanged once for a cookie, held only in memory.

A browser never keeps the user token: the login form sends it once, the
server checks it and answers with a random session id in an HttpOnly cookie.
The session remembers the token so that every request is authorised exactly
as the API authorises the token itself (role, revocation); the CSRF token
each session carries must come back with every state-changing request.
Sessions live in this process only: a restart of the control plane signs
everyone out, which is the safe direction.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from dataclasses import dataclass

from knightwatch.clock import Clock
from knightwatch.control.users import PermissionDeniedError

__all__ = ["CsrfRefusedError", "WebSession", "WebSessions"]

IDLE_S = 30 * 60.0
"""A session unused this long is gone (the wall screen keeps its own alive with the stream)."""
LIFETIME_S = 12 * 3600.0
"""No session outlives a working day, used or not."""
MAX_SESSIONS = 10_000


class CsrfRefusedError(PermissionDeniedError):
    """A state-changing dashboard request without its session's CSRF token."""


@dataclass
class WebSession:
    """One signed-in browser."""

    sid: str
    user: str
    token: str
    csrf: str
    opened: float
    seen: float

    def check_csrf(self, presented: str | None) -> None:
        """Refuse unless ``presented`` is this session's CSRF token."""
        if not presented or not hmac.compare_digest(presented.encode(), self.csrf.encode()):
            raise CsrfRefusedError(
                "request refused: the dashboard's CSRF token is missing or wrong",
                hint="reload the page and try again; another site cannot act in your name",
            )


class WebSessions:
    """The open dashboard sessions, by their cookie's id."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._by_id: dict[str, WebSession] = {}

    def open(self, user: str, token: str) -> WebSession:
        """A new session for ``user`` (who proved it with ``token``)."""
        now = self._clock.monotonic()
        session = WebSession(
            sid=secrets.token_urlsafe(32),
            user=user,
            token=token,
            csrf=secrets.token_urlsafe(32),
            opened=now,
            seen=now,
        )
        with self._lock:
            self._expire(now)
            if len(self._by_id) >= MAX_SESSIONS:  # the oldest goes first
                oldest = min(self._by_id.values(), key=lambda s: s.seen)
                del self._by_id[oldest.sid]
            self._by_id[session.sid] = session
        return session

    def find(self, sid: str | None) -> WebSession | None:
        """The live session with id ``sid`` (and it counts as used now), or None."""
        if not sid:
            return None
        now = self._clock.monotonic()
        with self._lock:
            session = self._by_id.get(sid)
            if session is None:
                return None
            if _expired(session, now):
                del self._by_id[sid]
                return None
            session.seen = now
            return session

    def close(self, sid: str | None) -> None:
        """Sign the session out (nothing if there is none)."""
        with self._lock:
            self._by_id.pop(sid or "", None)

    def close_user(self, user: str) -> int:
        """Sign out every session of ``user``; how many there were."""
        with self._lock:
            gone = [sid for sid, s in self._by_id.items() if s.user == user]
            for sid in gone:
                del self._by_id[sid]
            return len(gone)

    def _expire(self, now: float) -> None:
        for sid in [sid for sid, s in self._by_id.items() if _expired(s, now)]:
            del self._by_id[sid]


def _expired(session: WebSession, now: float) -> bool:
    return now - session.seen > IDLE_S or now - session.opened > LIFETIME_S
