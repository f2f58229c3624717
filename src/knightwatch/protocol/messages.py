"""Messages on the agent WebSocket (``/api/agent/v1/connect``).

Down (server → agent): ``hello``, ``prepare``, ``commit``, ``rollback``,
``abort``, ``audit``, ``retire``, ``halt``, ``rearm``, ``flags``, ``refused``.
Up (agent → server): only
``report`` — a :class:`SignedReport` wrapping a :class:`Report` (heartbeat,
inventory, a change of drift, the acknowledgement of a command, an audit's
result, or a retirement's result). Which protocol version a session speaks is
agreed at connect (:mod:`knightwatch.protocol.versions`).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from knightwatch.protocol.audit import AuditRequest, AuditResult, AuditStatus, Retire, RetireResult
from knightwatch.protocol.bounds import Count, Positive
from knightwatch.protocol.flags import MAX_FLAGS, FlagName, FlagValues
from knightwatch.protocol.safety import (
    MAX_ALERTS_IN_REPORT,
    MAX_METRICS_IN_REPORT,
    AlertEvent,
    Halt,
    HaltAck,
    HaltState,
    Rearm,
    RearmAck,
)
from knightwatch.vocabulary import ServiceState

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Abort",
    "Ack",
    "AckPhase",
    "AgentCommand",
    "CgroupStatus",
    "Commit",
    "DeployCommand",
    "Hello",
    "NodeState",
    "Prepare",
    "Refused",
    "ReleaseCommand",
    "Report",
    "ReportKind",
    "Rollback",
    "ServerMessage",
    "ServiceState",
    "ServiceStatus",
    "SignedReport",
    "parse_server_message",
]

MAX_MESSAGE_BYTES = 1024 * 1024
Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
NodeName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
Reason = Annotated[str, Field(max_length=4096)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hello(_Message):
    """First message on a connection: the session nonce every report must carry."""

    type: Literal["hello"] = "hello"
    node: NodeName
    nonce: Annotated[str, Field(min_length=16, max_length=128)]
    heartbeat_s: Annotated[float, Field(gt=0, le=3600)]
    server_time: datetime
    dead_man_s: Annotated[float, Field(gt=0, le=86400)] | None = None
    """Set for a node of an ``armed`` group: halt the service by itself after this
    long without the control plane."""
    protocol: Annotated[int, Field(ge=2, le=999)] | None = None
    """Protocol 2 on: the protocol the server chose from the agent's offer. A
    protocol-1 ``Hello`` has neither this nor ``server_version`` (see :meth:`wire`)."""
    server_version: Annotated[str, Field(pattern=r"^[0-9][0-9A-Za-z.+-]{0,31}$")] | None = None
    """Protocol 2 on: the control plane's knightwatch version."""

    def wire(self) -> str:
        """The JSON sent: fields that are None are left out, so a protocol-1 agent
        (whose ``Hello`` forbids unknown fields) reads exactly 0.1's greeting."""
        return self.model_dump_json(exclude_none=True)


class Prepare(_Message):
    """Fetch, stage and verify a release; do not switch to it.

    ``restage`` (a reconcile) builds a fresh tree even when one is there:
    the exact bytes, fetched again where the node's copy differs.
    """

    type: Literal["prepare"] = "prepare"
    deployment_id: Positive
    digest: Digest
    release_id: Annotated[str, Field(max_length=200)]
    restage: bool = False


class Commit(_Message):
    """Switch ``current`` to a prepared release, restart, check health and smoke.

    ``restage`` (a reconcile) swaps the freshly staged tree in for the active
    one and stops every process running from the agent's root first.
    """

    type: Literal["commit"] = "commit"
    deployment_id: Positive
    digest: Digest
    release_id: Annotated[str, Field(max_length=200)]
    restage: bool = False


class Rollback(_Message):
    """Return to ``digest`` (the previous release, still on disk), restart, check.

    ``digest`` None means the node ran no release before this deployment: stop
    the service and remove ``current``, so no node is left on the failed release.
    """

    type: Literal["rollback"] = "rollback"
    deployment_id: Positive
    digest: Digest | None
    release_id: Annotated[str, Field(max_length=200)] | None


class Abort(_Message):
    """Forget a prepared release: remove its staged tree unless it is current or previous."""

    type: Literal["abort"] = "abort"
    deployment_id: Positive
    digest: Digest


class Refused(_Message):
    """The server refused the agent's last message (the connection is then closed)."""

    type: Literal["refused"] = "refused"
    reason: Reason


DeployCommand = Prepare | Commit | Rollback | Abort
"""The two-phase protocol's commands, each about one deployment."""
ReleaseCommand = DeployCommand | Retire
"""Commands that change which releases a node holds; the agent's command runner works them."""
AgentCommand = ReleaseCommand | AuditRequest | Halt | Rearm | FlagValues
"""Everything the control plane sends an agent once its session is open."""

ServerMessage = Annotated[Hello | AgentCommand | Refused, Field(discriminator="type")]
"""Every server → agent message: the greeting, a command, or a refusal."""
_SERVER_MESSAGE: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


def parse_server_message(data: str | bytes) -> ServerMessage:
    """Parse and validate one server → agent message (raises pydantic.ValidationError)."""
    return _SERVER_MESSAGE.validate_json(data)


class CgroupStatus(_Message):
    """The service's cgroup as the kernel counts it (check with ``cat <path>/cgroup.procs``)."""

    path: Annotated[str, Field(max_length=4096)]
    members: Count = 0
    memory_bytes: Count | None = None
    oom_kills: Count = 0
    pids_limit_hits: Count = 0
    """Forks refused because the group was at its ``pids`` limit."""


class ServiceStatus(_Message):
    """The supervised service as the agent sees it."""

    state: ServiceState
    pid: Positive | None = None
    started_at: float | None = None
    """Process start time, seconds since the epoch (from /proc), for stale-process checks."""
    restarts: Count = 0
    version: Annotated[str, Field(max_length=200)] | None = None
    """The version the service reports about itself."""
    detail: Reason | None = None
    accounting: Annotated[str, Field(max_length=200)] | None = None
    """``exact (cgroup v1|v2)``, or ``best effort (no cgroup)`` when the agent reads /proc."""
    cgroup: CgroupStatus | None = None
    adoption: Reason | None = None
    """What this agent did at its start with the service an earlier agent left running:
    ``adopted running service pid …`` or ``restarted service: …`` (None: there was none)."""


class NodeState(_Message):
    """What is on the node right now."""

    active_digest: Digest | None = None
    previous_digest: Digest | None = None
    staged: Annotated[list[Digest], Field(max_length=64)] = []
    service: ServiceStatus = ServiceStatus(state=ServiceState.NONE)
    audit: AuditStatus = AuditStatus()
    halt: HaltState = HaltState()
    metrics: Annotated[dict[str, float], Field(max_length=MAX_METRICS_IN_REPORT)] = {}
    """The service's metrics at the last scrape (each family summed over its samples)."""
    flags_version: Count | None = None
    """The flag-state version flags.json holds (None: the agent never received one)."""
    flag_evaluations: Annotated[dict[FlagName, Count], Field(max_length=MAX_FLAGS)] = {}
    """How often the active release's service evaluated each flag (cumulative), sent when
    the counts changed since the session's last report (empty: unchanged, or none)."""


class AckPhase(StrEnum):
    """The outcome of a command, as the agent acknowledges it."""

    PREPARED = "PREPARED"
    PREPARE_FAILED = "PREPARE_FAILED"
    ACTIVE = "ACTIVE"
    COMMIT_FAILED = "COMMIT_FAILED"
    ROLLED_BACK = "ROLLED_BACK"
    ROLLBACK_FAILED = "ROLLBACK_FAILED"
    ABORTED = "ABORTED"


class Ack(_Message):
    """The answer to one command (``deployment_id`` + ``digest`` identify it)."""

    deployment_id: Positive
    digest: Digest | None
    """The command's digest (None only for a rollback to no release)."""
    phase: AckPhase
    reason: Reason | None = None


ReportKind = Literal[
    "heartbeat", "inventory", "ack", "drift", "audit", "retire", "halt", "rearm", "alert", "flags"
]


class Report(_Message):
    """Everything an agent tells the server; always sent signed."""

    node: NodeName
    nonce: Annotated[str, Field(min_length=16, max_length=128)]
    seq: Positive
    sent_at: datetime
    kind: ReportKind
    state: NodeState
    ack: Ack | None = None
    audit: AuditResult | None = None
    retire: RetireResult | None = None
    halt: HaltAck | None = None
    rearm: RearmAck | None = None
    alerts: Annotated[list[AlertEvent], Field(max_length=MAX_ALERTS_IN_REPORT)] = []


class SignedReport(_Message):
    """A :class:`Report` as canonical JSON (base64) and its Ed25519 signature (base64)."""

    type: Literal["report"] = "report"
    payload: Annotated[str, Field(max_length=MAX_MESSAGE_BYTES)]
    signature: Annotated[str, Field(max_length=200)]
