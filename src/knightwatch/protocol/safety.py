"""The kill switch, guards and alerts on the wire (P5, P6).

Down: :class:`Halt` (the latched kill switch) and :class:`Rearm` (lifting
it). Up: a :class:`HaltAck` / :class:`RearmAck` answering them, the node's
:class:`HaltState` in every report (halted or not, and why — a kill, the dead
man's switch, or a guard), the latest metric values for the control plane's
fleet rules, and :class:`AlertEvent`\\ s raised on the node (a guard that
fired, a scrape that failed, a log pattern that matched).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from knightwatch.protocol.bounds import Count, Positive
from knightwatch.vocabulary import HaltSource

__all__ = [
    "MAX_ALERTS_IN_REPORT",
    "MAX_METRICS_IN_REPORT",
    "AlertEvent",
    "Halt",
    "HaltAck",
    "HaltSource",
    "HaltState",
    "Rearm",
    "RearmAck",
]

MAX_ALERTS_IN_REPORT = 100
MAX_METRICS_IN_REPORT = 1000
Text = Annotated[str, Field(max_length=4096)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Halt(_Message):
    """Halt the service now and keep it halted (across restarts) until re-armed."""

    type: Literal["halt"] = "halt"
    halt_id: Positive
    reason: Text
    issued_at: datetime
    """When the control plane sent it (its clock), for time-to-halt figures."""
    source: HaltSource = HaltSource.KILL
    """What caused it: an operator's ``kill``, or a ``guard`` that asked for a fleet halt."""


class Rearm(_Message):
    """Lift the halt: the agent may start the active release's service again."""

    type: Literal["rearm"] = "rearm"
    halt_id: Positive
    reason: Text


class HaltAck(_Message):
    """A node's answer to :class:`Halt`: when it got it and when its service was gone."""

    halt_id: Positive
    received_at: datetime
    halted_at: datetime
    """When waitpid confirmed every service process gone (or received_at if none ran)."""
    stopped_pids: Annotated[list[Count], Field(max_length=1024)] = []
    detail: Text = ""


class RearmAck(_Message):
    """A node's answer to :class:`Rearm`."""

    halt_id: Positive
    rearmed_at: datetime
    started: bool
    """True if the active release's service was started again."""
    detail: Text = ""


class HaltState(_Message):
    """Whether the node is halted, since when, by what, and why."""

    halted: bool = False
    source: HaltSource | None = None
    halt_id: Positive | None = None
    since: datetime | None = None
    reason: Text | None = None


class AlertEvent(_Message):
    """A condition seen on the node that the control plane must alert on."""

    rule: Annotated[str, Field(min_length=1, max_length=255)]
    """e.g. ``guard:child-shares-runaway``, ``scrape``, ``log:power-peg``."""
    severity: Literal["info", "warning", "critical"]
    summary: Text
    detail: Text = ""
    count: Positive = 1
    first_at: datetime
    last_at: datetime
    resolved: bool = False
    """True when the condition cleared (the rule no longer holds, scrapes work again)."""
    action: Literal["alert", "halt_node", "halt_fleet"] = "alert"
    """What the rule asked for; ``halt_node`` was already done by the agent."""
