"""Waiting for a condition with a deadline: one way, for the product and its tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from knightwatch.errors import KnightwatchError

__all__ = ["WaitTimedOutError", "wait_until", "wait_until_async"]

T = TypeVar("T")


class WaitTimedOutError(KnightwatchError):
    """Something awaited did not happen before its deadline."""


def wait_until(
    check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll ``check`` until it returns something truthy and return that.

    Raises WaitTimedOutError naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise WaitTimedOutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(
    check: Callable[[], T | Awaitable[T | None] | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> T:
    """:func:`wait_until` on an event loop: ``check`` may be a plain or an async function."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise WaitTimedOutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)
