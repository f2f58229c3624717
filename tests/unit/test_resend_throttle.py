"""The resend throttle: a missed re-arm is re-sent at most once per interval, per halt."""

from __future__ import annotations

from knightwatch.clock import VirtualClock
from knightwatch.server.resend import ResendThrottle


def test_a_message_is_due_once_per_interval() -> None:
    clock = VirtualClock()
    throttle = ResendThrottle(clock, 5.0)
    assert throttle.due(7)
    assert not throttle.due(7)
    clock.advance(4.9)
    assert not throttle.due(7)
    clock.advance(0.1)
    assert throttle.due(7)
    assert not throttle.due(7)


def test_each_key_has_its_own_interval() -> None:
    clock = VirtualClock()
    throttle = ResendThrottle(clock, 5.0)
    assert throttle.due(1)
    clock.advance(3)
    assert throttle.due(2)
    clock.advance(2)
    assert throttle.due(1)
    assert not throttle.due(2)
