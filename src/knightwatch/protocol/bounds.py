"""Integer bounds of the protocol: every number fits the store's signed 64 bits.

A sequence number, an id or a count past 2**63-1 cannot be stored; refusing
it while the message is validated answers the sender (a ``Refused``) instead
of failing deep in the store with an OverflowError.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

__all__ = ["MAX_INT", "Count", "Positive"]

MAX_INT = 2**63 - 1
"""The largest integer any message may carry."""
Positive = Annotated[int, Field(ge=1, le=MAX_INT)]
"""An id, a sequence number or a pid: 1 up to the store's largest integer."""
Count = Annotated[int, Field(ge=0, le=MAX_INT)]
"""A count: 0 up to the store's largest integer."""
