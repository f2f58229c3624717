"""The agent's journal, ``ROOT/state.json``: what is on the node and what it was doing.

The journal is written before every switch (``pending``) and after it, by
write-temp + fsync + rename + fsync dir. It is never the truth about which
release is active: on start, :func:`reconcile` takes ``current``'s symlink
target as the truth and repairs the journal around it, so a crash between
any two steps of a switch is resolved the same way every time.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from knightwatch.agent.events import event
from knightwatch.agent.layout import NodeLayout, atomic_write
from knightwatch.vocabulary import HaltSource

__all__ = [
    "STATE_SCHEMA",
    "AgentState",
    "Journal",
    "PendingSwitch",
    "ServiceRecord",
    "halted_reason",
    "reconcile",
]

STATE_SCHEMA: Literal["knightwatch.agent-state/v1"] = "knightwatch.agent-state/v1"
Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ServiceRecord(_Record):
    """The service process the agent started, identified beyond its (reusable) pid."""

    pid: Annotated[int, Field(ge=1)]
    start_ticks: Annotated[int, Field(ge=0)]
    """Field 22 of /proc/<pid>/stat: start time in clock ticks since boot."""
    boot_id: str
    started_at: float
    digest: Digest
    cgroup: Annotated[str, Field(max_length=4096)] | None = None
    """The service's cgroup (its membership directory); None without one, or from 0.1.0."""


class PendingSwitch(_Record):
    """A switch of ``current`` that was journaled but may not have finished."""

    op: Literal["commit", "rollback"]
    digest: Digest
    from_digest: Digest | None
    deployment_id: Annotated[int, Field(ge=1)]


class AgentState(_Record):
    """The content of ``state.json``."""

    schema_: Literal["knightwatch.agent-state/v1"] = Field(STATE_SCHEMA, alias="schema")
    node: str
    current: Digest | None = None
    previous: Digest | None = None
    staged: list[Digest] = []
    staged_for: dict[Digest, int] = {}
    """The deployment whose Prepare staged each release (garbage collection keeps them)."""
    service_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    halted: bool = False
    """The kill-switch latch: while set, the service is never started (restarts included)."""
    halt_source: HaltSource | None = None
    halt_id: Annotated[int, Field(ge=1)] | None = None
    """The control plane's halt this node acknowledged (None for a dead-man or guard halt)."""
    halt_reason: Annotated[str, Field(max_length=4096)] | None = None
    halted_since: float | None = None
    """When the latch was set (seconds since the epoch)."""
    dead_man_s: Annotated[float, Field(gt=0, le=86400)] | None = None
    """Armed node: halt after this long without the control plane (kept across restarts)."""
    switched_at: float | None = None
    """When ``current`` last changed (seconds since the epoch): a service older is stale."""
    service: ServiceRecord | None = None
    pending: PendingSwitch | None = None
    awaiting: Annotated[int, Field(ge=1)] | None = None
    """The deployment that switched ``current`` while this node has not learned its outcome.

    Set by the switch of a Commit; cleared when the control plane says what
    became of it (a Commit of the current release without a switch: run it; a
    Rollback). While set, a restarted agent starts no service before that word.
    """

    def to_bytes(self) -> bytes:
        """Return the journal as indented JSON (people read it while debugging a node)."""
        data = self.model_dump(mode="json", by_alias=True)
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


class Journal:
    """Holds the agent's state and writes every change of it durably."""

    def __init__(self, layout: NodeLayout, node: str) -> None:
        self._layout = layout
        self._state = AgentState(node=node)

    @property
    def state(self) -> AgentState:
        """The state as last written."""
        return self._state

    def load(self) -> AgentState:
        """Read ``state.json``; a missing or unreadable one starts from an empty state."""
        path = self._layout.state_file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return self._state
        try:
            loaded = AgentState.model_validate_json(data)
        except ValidationError as exc:
            event("journal-unreadable", path=str(path), detail=str(exc).splitlines()[0])
            return self._state
        self._state = loaded.model_copy(update={"node": self._state.node})
        return self._state

    def save(self, state: AgentState) -> AgentState:
        """Write ``state`` durably and make it the current state."""
        atomic_write(self._layout.state_file, state.to_bytes())
        self._state = state
        return state

    def update(self, **changes: object) -> AgentState:
        """Write the current state with ``changes`` applied."""
        return self.save(self._state.model_copy(update=changes))


def halted_reason(state: AgentState) -> str | None:
    """Why the service may not start (None when it may): the latch, its source and reason."""
    if not state.halted:
        return None
    why: str = state.halt_source or "kill"
    if state.halt_reason:
        why += f": {state.halt_reason}"
    return f"halted by the kill switch ({why}): rearm first"


def reconcile(state: AgentState, layout: NodeLayout) -> AgentState:
    """Return ``state`` repaired to agree with the disk, ``current`` being the truth.

    A pending switch that reached ``current`` is completed (previous := the
    release it switched from; a commit's deployment is then ``awaiting`` its
    outcome, a rollback's is settled); one that did not is forgotten. Releases no
    longer on disk are dropped; trees on disk the journal does not know
    (a crash after publishing them) are listed as staged.
    """
    active = layout.active_digest()
    on_disk = set(layout.release_digests())
    previous = state.previous
    awaiting = state.awaiting
    if state.pending is not None and state.pending.digest == active:
        if state.pending.from_digest != active:
            previous = state.pending.from_digest
        commit = state.pending.op == "commit"
        awaiting = state.pending.deployment_id if commit else None
    elif active != state.current and state.current is not None:
        previous = state.current
    if previous == active or previous not in on_disk:
        previous = None
    staged = sorted(on_disk - {active, previous})
    staged_for = {d: n for d, n in state.staged_for.items() if d in staged}
    return state.model_copy(
        update={
            "current": active,
            "previous": previous,
            "staged": staged,
            "staged_for": staged_for,
            "pending": None,
            "awaiting": awaiting if active is not None else None,
        }
    )
