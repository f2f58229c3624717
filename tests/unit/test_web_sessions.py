"""Dashboard sessions: idle and absolute expiry, sign-out per user, the CSRF check."""

from __future__ import annotations

import pytest

from knightwatch.clock import VirtualClock
from knightwatch.server.web_sessions import (
    IDLE_S,
    LIFETIME_S,
    CsrfRefusedError,
    WebSessions,
)


def test_a_session_is_found_by_its_id_until_it_has_been_idle_too_long() -> None:
    clock = VirtualClock()
    sessions = WebSessions(clock)
    opened = sessions.open("olivia", "token-1")
    clock.advance(IDLE_S - 1)
    assert sessions.find(opened.sid) is opened  # and it counts as used now
    clock.advance(IDLE_S - 1)
    assert sessions.find(opened.sid) is opened
    clock.advance(IDLE_S + 1)
    assert sessions.find(opened.sid) is None
    assert sessions.find(opened.sid) is None  # gone for good


def test_no_session_outlives_its_lifetime_however_busy() -> None:
    clock = VirtualClock()
    sessions = WebSessions(clock)
    opened = sessions.open("olivia", "token-1")
    for _ in range(int(LIFETIME_S // 600)):
        clock.advance(600)
        sessions.find(opened.sid)
    clock.advance(600)
    assert sessions.find(opened.sid) is None


def test_closing_a_user_signs_out_all_their_sessions_and_no_one_else() -> None:
    sessions = WebSessions(VirtualClock())
    first, second = sessions.open("tessa", "t"), sessions.open("tessa", "t")
    other = sessions.open("olivia", "o")
    assert sessions.close_user("tessa") == 2
    assert sessions.find(first.sid) is None and sessions.find(second.sid) is None
    assert sessions.find(other.sid) is other
    sessions.close(other.sid)
    assert sessions.find(other.sid) is None
    assert sessions.find("") is None and sessions.find(None) is None


def test_ids_and_csrf_tokens_are_random_and_the_check_refuses_anything_else() -> None:
    sessions = WebSessions(VirtualClock())
    one, two = sessions.open("a", "t"), sessions.open("a", "t")
    assert len({one.sid, two.sid, one.csrf, two.csrf}) == 4
    one.check_csrf(one.csrf)
    for wrong in (None, "", two.csrf, one.csrf[:-1], one.sid):
        with pytest.raises(CsrfRefusedError, match="CSRF"):
            one.check_csrf(wrong)
