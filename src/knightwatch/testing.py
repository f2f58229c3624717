"""Helpers for tests of knightwatch and of services deployed with it.

A whole local fleet is :class:`knightwatch.localfleet.LocalFleet`; this module
keeps what tests need around it: waiting for a condition and a free port.
"""

from __future__ import annotations

from knightwatch.localfleet.processes import free_port
from knightwatch.polling import WaitTimedOutError, wait_until, wait_until_async

__all__ = ["WaitTimedOutError", "free_port", "wait_until", "wait_until_async"]
