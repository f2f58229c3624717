"""Integer bounds of the protocol: every number fits the store's signed 64 bits.

A sequence number, an id or a count past 2**63-1 cannot be stored; refusing
it while the message is validated answers the sender (a ``Refused``) instead
of failing deep in the store with an OverflowError.
"""

from __future__ import annotations

__all__ = ["MAX_INT"]

MAX_INT = 2**63 - 1
"""The largest integer any message may carry."""
