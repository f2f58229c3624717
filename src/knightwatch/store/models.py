"""The tables of the control plane, as typed SQLAlchemy models.

Every timestamp is an aware UTC ``datetime`` (:class:`UTCDateTime`); the
domain supplies it from its clock, so no column has a time default. Columns
with a default carry it both in Python and in the schema, so a row written by
hand (or by a later migration) gets the same value. Constraint names follow
:data:`NAMING_CONVENTION` so that migrations can refer to them on both
engines.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from knightwatch.store.types import UTCDateTime
from knightwatch.vocabulary import (
    AlertState,
    DeploymentKind,
    DeploymentState,
    DeploymentStrategy,
    DriftState,
    FlagChangeKind,
    FlagKind,
    FlagState,
    FlagType,
    HaltSource,
    ItemKind,
    NodePhase,
    NodeRole,
    NodeStatus,
    RetirementState,
    ServiceState,
    Severity,
)

__all__ = [
    "NAMING_CONVENTION",
    "Alert",
    "AlertNotification",
    "Audit",
    "AuditLogEntry",
    "AuditNodeResult",
    "Base",
    "Deployment",
    "DeploymentEvent",
    "DeploymentNode",
    "Flag",
    "FlagChange",
    "FlagEvaluation",
    "FlagValue",
    "Fleet",
    "Halt",
    "HaltNode",
    "JoinToken",
    "LifecycleEvent",
    "Node",
    "Release",
    "ReleaseFlag",
    "Retirement",
    "RetirementNode",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

DIGEST = String(64)
NODE_NAME = String(63)
WORD = String(32)
# SQLite gives a rowid alias (and AUTOINCREMENT) only to a column typed exactly INTEGER.
EVENT_ID = BigInteger().with_variant(Integer(), "sqlite")


def _one_of(column: str, vocabulary: type[StrEnum]) -> CheckConstraint:
    """A named CHECK that ``column`` holds a member of ``vocabulary`` (NULL passes, if allowed)."""
    listed = ", ".join(f"'{member.value}'" for member in vocabulary)
    return CheckConstraint(f"{column} IN ({listed})", name=f"{column}_valid")


class Base(DeclarativeBase):
    """The declarative base: one metadata, aware UTC timestamps for ``Mapped[datetime]``."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[type, object]] = {datetime: UTCDateTime()}


class Release(Base):
    """A pushed, signed release bundle: its manifest, SBOM and DSSE envelope."""

    __tablename__ = "releases"

    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    release_id: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(255))
    # Deferred: megabytes for a large release, and most reads (status, release
    # lookups) need only the identity columns; they load on first access.
    manifest: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    sbom: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    envelope: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    signed_by: Mapped[str] = mapped_column(String(255))
    pushed_at: Mapped[datetime]
    pushed_by: Mapped[str] = mapped_column(String(255))
    retired_at: Mapped[datetime | None]
    """Set once every node has verified the release's absence; it never deploys again."""


class Node(Base):
    """A node of the fleet: enrolment, desired and reported state, connection."""

    __tablename__ = "nodes"
    __table_args__ = (
        _one_of("status", NodeStatus),
        _one_of("drift_state", DriftState),
        _one_of("service_state", ServiceState),
        _one_of("halt_source", HaltSource),
    )

    name: Mapped[str] = mapped_column(NODE_NAME, primary_key=True)
    group_name: Mapped[str] = mapped_column(NODE_NAME, default="default", server_default="default")
    status: Mapped[str] = mapped_column(WORD)
    created_at: Mapped[datetime]
    enrolled_at: Mapped[datetime | None]
    credential_hash: Mapped[str | None] = mapped_column(DIGEST)
    public_key: Mapped[str | None] = mapped_column(String(64))
    desired_digest: Mapped[str | None] = mapped_column(DIGEST)
    active_digest: Mapped[str | None] = mapped_column(DIGEST)
    previous_digest: Mapped[str | None] = mapped_column(DIGEST)
    service_state: Mapped[str] = mapped_column(
        WORD, default=ServiceState.NONE, server_default=ServiceState.NONE.value
    )
    service_pid: Mapped[int | None]
    service_started_at: Mapped[float | None] = mapped_column(Float)
    service_version: Mapped[str | None] = mapped_column(String(255))
    service_restarts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    service_detail: Mapped[str | None] = mapped_column(Text)
    last_report: Mapped[str | None] = mapped_column(Text)
    last_report_at: Mapped[datetime | None]
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    session_nonce: Mapped[str | None] = mapped_column(String(128))
    connected: Mapped[bool] = mapped_column(default=False, server_default=false())
    connected_at: Mapped[datetime | None]
    disconnected_at: Mapped[datetime | None]
    drift_state: Mapped[str] = mapped_column(
        WORD, default=DriftState.UNKNOWN, server_default=DriftState.UNKNOWN.value
    )
    drift_since: Mapped[datetime | None]
    flags_version: Mapped[int | None] = mapped_column(BigInteger)
    """The flag-state version the node's agent last wrote to flags.json (None: never)."""
    drift_count: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    drift_findings: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")
    """The findings of the node's last audit status, as JSON (most severe first)."""
    halted: Mapped[bool] = mapped_column(default=False, server_default=false())
    halt_source: Mapped[str | None] = mapped_column(WORD)
    halt_reason: Mapped[str | None] = mapped_column(Text)
    halted_since: Mapped[datetime | None]
    agent_version: Mapped[str | None] = mapped_column(String(32))
    """The knightwatch version of the agent last served (``0.1.x`` for one that states none)."""
    agent_protocol: Mapped[int | None] = mapped_column(Integer)
    """The protocol version of the agent's last session."""
    refused_at: Mapped[datetime | None]
    refusal: Mapped[str | None] = mapped_column(Text)
    """Why the node's agent was last refused at connect (its protocol, its headers)."""


class JoinToken(Base):
    """A one-time enrolment token for a node, stored only as its SHA-256."""

    __tablename__ = "join_tokens"

    token_hash: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    node_name: Mapped[str] = mapped_column(ForeignKey("nodes.name"), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class Fleet(Base):
    """The single row of fleet-wide desired state (``id`` is always 1)."""

    __tablename__ = "fleet"
    __table_args__ = (CheckConstraint("id = 1", name="singleton"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    desired_digest: Mapped[str | None] = mapped_column(DIGEST)
    previous_digest: Mapped[str | None] = mapped_column(DIGEST)
    mixed_since: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    flags_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    """Raised by every change of a flag value; agents acknowledge the version they wrote."""


class Deployment(Base):
    """One deploy, rollback or catch-up of a release across the fleet."""

    __tablename__ = "deployments"
    __table_args__ = (
        _one_of("kind", DeploymentKind),
        _one_of("strategy", DeploymentStrategy),
        _one_of("state", DeploymentState),
        # Ids are never reused on SQLite either, as PostgreSQL sequences never are.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(WORD)
    release_digest: Mapped[str] = mapped_column(ForeignKey("releases.digest"))
    from_digest: Mapped[str | None] = mapped_column(DIGEST)
    strategy: Mapped[str] = mapped_column(WORD)
    state: Mapped[str] = mapped_column(WORD, index=True)
    soak_s: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    reason: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    deadline: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class DeploymentNode(Base):
    """The progress of one node within one deployment."""

    __tablename__ = "deployment_nodes"
    __table_args__ = (_one_of("role", NodeRole), _one_of("phase", NodePhase))

    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), primary_key=True)
    node_name: Mapped[str] = mapped_column(ForeignKey("nodes.name"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(WORD)
    previous_digest: Mapped[str | None] = mapped_column(DIGEST)
    phase: Mapped[str] = mapped_column(WORD)
    reason: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None]
    started_at: Mapped[float | None] = mapped_column(Float)
    version: Mapped[str | None] = mapped_column(String(255))
    updated_at: Mapped[datetime]


class DeploymentEvent(Base):
    """One line of a deployment's history."""

    __tablename__ = "deployment_events"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(EVENT_ID, primary_key=True, autoincrement=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), index=True)
    at: Mapped[datetime]
    node_name: Mapped[str | None] = mapped_column(NODE_NAME)
    event: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")


class Alert(Base):
    """A condition someone must look at, deduplicated by fingerprint (rule + node)."""

    __tablename__ = "alerts"
    __table_args__ = (
        _one_of("state", AlertState),
        _one_of("severity", Severity),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(255), index=True)
    rule: Mapped[str] = mapped_column(String(255))
    node_name: Mapped[str | None] = mapped_column(NODE_NAME)
    severity: Mapped[str] = mapped_column(WORD)
    state: Mapped[str] = mapped_column(WORD, index=True)
    summary: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")
    count: Mapped[int] = mapped_column(default=1, server_default=text("1"))
    first_at: Mapped[datetime]
    last_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(255))
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(255))
    escalation_level: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    """Index of the receiver in the route that was last notified."""
    notified_at: Mapped[datetime | None]
    next_notify_at: Mapped[datetime | None]


class Audit(Base):
    """One fleet-wide audit an operator asked for."""

    __tablename__ = "audits"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    requested_by: Mapped[str] = mapped_column(String(255))
    requested_at: Mapped[datetime]
    nodes: Mapped[str] = mapped_column(Text)
    """The audited node names, as a JSON list."""


class AuditNodeResult(Base):
    """One node's answer to an audit (the agent's signed AuditResult, as JSON)."""

    __tablename__ = "audit_results"

    audit_id: Mapped[int] = mapped_column(ForeignKey("audits.id"), primary_key=True)
    node_name: Mapped[str] = mapped_column(ForeignKey("nodes.name"), primary_key=True)
    received_at: Mapped[datetime]
    result: Mapped[str] = mapped_column(Text)


class Retirement(Base):
    """The retirement of a release: every node deletes its tree and verifies its absence."""

    __tablename__ = "retirements"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    release_digest: Mapped[str] = mapped_column(ForeignKey("releases.digest"), index=True)
    requested_by: Mapped[str] = mapped_column(String(255))
    requested_at: Mapped[datetime]
    reason: Mapped[str] = mapped_column(Text)
    finished_at: Mapped[datetime | None]


class RetirementNode(Base):
    """One node's part in a retirement: pending until it reports the release absent."""

    __tablename__ = "retirement_nodes"
    __table_args__ = (_one_of("state", RetirementState),)

    retirement_id: Mapped[int] = mapped_column(ForeignKey("retirements.id"), primary_key=True)
    node_name: Mapped[str] = mapped_column(ForeignKey("nodes.name"), primary_key=True)
    state: Mapped[str] = mapped_column(WORD)
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")
    updated_at: Mapped[datetime]


class LifecycleEvent(Base):
    """One recorded transition of a configuration item (status accounting)."""

    __tablename__ = "lifecycle_events"
    __table_args__ = (
        _one_of("item_kind", ItemKind),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(EVENT_ID, primary_key=True, autoincrement=True)
    item_kind: Mapped[str] = mapped_column(WORD)
    item_key: Mapped[str] = mapped_column(String(255), index=True)
    state: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")


class AlertNotification(Base):
    """One delivery of an alert to a receiver (a webhook or a command), and how it went."""

    __tablename__ = "alert_notifications"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(EVENT_ID, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), index=True)
    receiver: Mapped[str] = mapped_column(String(255))
    level: Mapped[int]
    at: Mapped[datetime]
    ok: Mapped[bool]
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")


class Halt(Base):
    """A latched kill-switch HALT, fleet-wide or scoped, until a re-arm lifts it."""

    __tablename__ = "halts"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    selector: Mapped[str | None] = mapped_column(Text)
    """The --nodes selector (None: the whole fleet)."""
    reason: Mapped[str] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(255))
    issued_at: Mapped[datetime]
    lifted_at: Mapped[datetime | None]
    lifted_by: Mapped[str | None] = mapped_column(String(255))
    lift_reason: Mapped[str | None] = mapped_column(Text)


class HaltNode(Base):
    """One node's part in a halt: when it received it and when its service was gone."""

    __tablename__ = "halt_nodes"

    halt_id: Mapped[int] = mapped_column(ForeignKey("halts.id"), primary_key=True)
    node_name: Mapped[str] = mapped_column(ForeignKey("nodes.name"), primary_key=True)
    received_at: Mapped[datetime | None]
    halted_at: Mapped[datetime | None]
    acked_at: Mapped[datetime | None]
    rearmed_at: Mapped[datetime | None]
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")


FLAG_NAME = String(127)
SCOPE = String(70)


class Flag(Base):
    """A feature flag's name, forever: its fixed meaning, its lifecycle and safe default."""

    __tablename__ = "flags"
    __table_args__ = (
        _one_of("kind", FlagKind),
        _one_of("value_type", FlagType),
        _one_of("state", FlagState),
    )

    name: Mapped[str] = mapped_column(FLAG_NAME, primary_key=True)
    kind: Mapped[str] = mapped_column(WORD)
    value_type: Mapped[str] = mapped_column(WORD)
    description: Mapped[str] = mapped_column(Text)
    default_value: Mapped[str] = mapped_column(Text)
    """The safe default, as JSON."""
    fingerprint: Mapped[str] = mapped_column(DIGEST)
    """SHA-256 of kind, value type and description: the flag's meaning."""
    owner: Mapped[str | None] = mapped_column(String(255))
    first_release: Mapped[str | None] = mapped_column(DIGEST)
    state: Mapped[str] = mapped_column(WORD, default=FlagState.ACTIVE, server_default="active")
    lifetime_days: Mapped[int | None]
    """Overrides the kind's expected lifetime (None: the kind's)."""
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(255))
    retired_at: Mapped[datetime | None]
    retired_by: Mapped[str | None] = mapped_column(String(255))
    retire_reason: Mapped[str | None] = mapped_column(Text)


class FlagValue(Base):
    """A flag's value in one scope: ``fleet``, ``group:NAME`` or ``node:NAME``."""

    __tablename__ = "flag_values"

    flag_name: Mapped[str] = mapped_column(ForeignKey("flags.name"), primary_key=True)
    scope: Mapped[str] = mapped_column(SCOPE, primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    """As JSON."""
    version: Mapped[int] = mapped_column(BigInteger)
    set_at: Mapped[datetime]
    set_by: Mapped[str] = mapped_column(String(255))


class FlagChange(Base):
    """One recorded event of a flag: registered, set, unset, amended, retired."""

    __tablename__ = "flag_changes"
    __table_args__ = (_one_of("kind", FlagChangeKind), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(EVENT_ID, primary_key=True, autoincrement=True)
    flag_name: Mapped[str] = mapped_column(ForeignKey("flags.name"), index=True)
    kind: Mapped[str] = mapped_column(WORD)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(255))
    scope: Mapped[str | None] = mapped_column(SCOPE)
    old_value: Mapped[str | None] = mapped_column(Text)
    new_value: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    version: Mapped[int | None] = mapped_column(BigInteger)
    """The fleet's flag-state version this change made (value changes only)."""
    targets: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")
    """The nodes in scope when it was made, as a JSON list: who had to acknowledge it."""


class ReleaseFlag(Base):
    """A flag a release declares (it reads it)."""

    __tablename__ = "release_flags"

    release_digest: Mapped[str] = mapped_column(ForeignKey("releases.digest"), primary_key=True)
    flag_name: Mapped[str] = mapped_column(ForeignKey("flags.name"), primary_key=True)


class FlagEvaluation(Base):
    """How often a node's service evaluated a flag, per release (cumulative, as reported)."""

    __tablename__ = "flag_evaluations"

    node_name: Mapped[str] = mapped_column(ForeignKey("nodes.name"), primary_key=True)
    release_digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    flag_name: Mapped[str] = mapped_column(FLAG_NAME, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    first_at: Mapped[datetime]
    last_at: Mapped[datetime]


class AuditLogEntry(Base):
    """One link of the tamper-evident audit log: a state change and the hash chaining it.

    ``hash`` is SHA-256 over the canonical JSON of every other column and the
    previous entry's hash; ``seq`` counts from 1 without gaps.
    """

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64), index=True)
    object: Mapped[str] = mapped_column(String(255), index=True)
    payload: Mapped[str] = mapped_column(Text)
    """Canonical JSON."""
    prev_hash: Mapped[str] = mapped_column(DIGEST)
    hash: Mapped[str] = mapped_column(DIGEST, unique=True)


class User(Base):
    """A person who calls the operator API, with one role and one token.

    Only an HMAC of the token (keyed by the server's DATA/users.key) is kept;
    a revoked user keeps the row, so the name stays in the audit log's sense.
    """

    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(DIGEST, unique=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(64))
    rotated_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class ChangeRequest(Base):
    """A proposed change (deploy, rollback, …), its frozen risk assessment and its fate.

    ``target`` and ``assessment`` are canonical JSON; approvals bind to their
    hashes. The state moves only along control/changes/model.py's transitions.
    """

    __tablename__ = "change_requests"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(EVENT_ID, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(WORD)
    state: Mapped[str] = mapped_column(WORD, index=True)
    target: Mapped[str] = mapped_column(Text)
    target_hash: Mapped[str] = mapped_column(DIGEST)
    reason: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(64))
    emergency: Mapped[bool] = mapped_column(default=False, server_default=false())
    risk: Mapped[str] = mapped_column(WORD)
    assessment: Mapped[str] = mapped_column(Text)
    assessment_hash: Mapped[str] = mapped_column(DIGEST)
    approvals_needed: Mapped[int]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    decided_by: Mapped[str | None] = mapped_column(String(64))
    """Who rejected or cancelled it, or executed it."""
    note: Mapped[str | None] = mapped_column(Text)
    """Why it was rejected, cancelled, voided or refused."""
    result: Mapped[str | None] = mapped_column(Text)
    """What its execution started, as JSON (a deployment id, a retirement id …)."""


class ChangeApproval(Base):
    """One person's approval of a change, bound to its exact target and assessment."""

    __tablename__ = "change_approvals"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(EVENT_ID, primary_key=True, autoincrement=True)
    change_id: Mapped[int] = mapped_column(EVENT_ID, ForeignKey("change_requests.id"), index=True)
    approver: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
    target_hash: Mapped[str] = mapped_column(DIGEST)
    assessment_hash: Mapped[str] = mapped_column(DIGEST)
    void: Mapped[bool] = mapped_column(default=False, server_default=false())


class ChangeTick(Base):
    """A checklist item of a change, ticked by someone (by name)."""

    __tablename__ = "change_ticks"

    change_id: Mapped[int] = mapped_column(
        EVENT_ID, ForeignKey("change_requests.id"), primary_key=True
    )
    item: Mapped[str] = mapped_column(String(255), primary_key=True)
    by: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]


class ReviewItem(Base):
    """A post-incident review an emergency change opened; someone else must close it."""

    __tablename__ = "review_items"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(EVENT_ID, primary_key=True, autoincrement=True)
    change_id: Mapped[int] = mapped_column(EVENT_ID, ForeignKey("change_requests.id"), index=True)
    opened_by: Mapped[str] = mapped_column(String(64))
    opened_at: Mapped[datetime]
    summary: Mapped[str] = mapped_column(Text)
    closed_by: Mapped[str | None] = mapped_column(String(64))
    closed_at: Mapped[datetime | None]
    note: Mapped[str | None] = mapped_column(Text)
