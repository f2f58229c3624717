"""The words of knightwatch's state: one StrEnum per set, shared by the domain and the store.

Each set below is stored in a column whose CHECK constraint is generated from
it (:mod:`knightwatch.store.models`), spoken on the wire where the protocol
carries it, and compared against in the domain by member, never by a string
typed again. A value is its member's string, so stored rows, JSON and logs
read exactly as before.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "TERMINAL_STATES",
    "AlertState",
    "DeploymentKind",
    "DeploymentState",
    "DeploymentStrategy",
    "DriftState",
    "FlagChangeKind",
    "FlagKind",
    "FlagState",
    "FlagType",
    "HaltSource",
    "ItemKind",
    "NodePhase",
    "NodeRole",
    "NodeStatus",
    "RetirementState",
    "Role",
    "ServiceState",
    "Severity",
]


class NodeStatus(StrEnum):
    """A node's standing in the fleet."""

    PENDING = "pending"
    """Registered with a join token; its agent has not enrolled yet."""
    ENROLLED = "enrolled"
    DRAINED = "drained"
    """Takes no deployments; its agent still reports and halts."""
    RETIRED = "retired"


class DriftState(StrEnum):
    """What a node's audit last found of its tree and processes."""

    UNKNOWN = "unknown"
    CLEAN = "clean"
    DRIFTED = "drifted"


class ServiceState(StrEnum):
    """What the supervised service is doing."""

    NONE = "none"  # no release active yet
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"
    CRASH_LOOP = "crash_loop"
    HALTED = "halted"


class HaltSource(StrEnum):
    """What halted a node: an operator's kill, its dead man's switch, or a guard."""

    KILL = "kill"
    DEAD_MAN = "dead-man"
    GUARD = "guard"


class AlertState(StrEnum):
    """Where an alert is in its life."""

    FIRING = "firing"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Severity(StrEnum):
    """How bad an alert, a guard or a log pattern is."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class DeploymentKind(StrEnum):
    """Why a deployment exists."""

    DEPLOY = "deploy"
    ROLLBACK = "rollback"
    CATCHUP = "catchup"
    """The control plane's own: bringing a returning node to the fleet's release."""
    RECONCILE = "reconcile"
    """Re-staging a drifted node's exact release."""


class DeploymentStrategy(StrEnum):
    """How a deployment switches its nodes."""

    ATOMIC = "atomic"
    CANARY = "canary"


class NodeRole(StrEnum):
    """A node's part in a deployment."""

    CANARY = "canary"
    FLEET = "fleet"


class DeploymentState(StrEnum):
    """Where a deployment is in the two-phase protocol."""

    PREPARING = "PREPARING"
    CANARY = "CANARY"
    SOAKING = "SOAKING"
    COMMITTING = "COMMITTING"
    ROLLING_BACK = "ROLLING_BACK"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"
    ROLLBACK_FAILED = "ROLLBACK_FAILED"


TERMINAL_STATES = frozenset(
    {
        DeploymentState.SUCCEEDED,
        DeploymentState.FAILED,
        DeploymentState.ROLLED_BACK,
        DeploymentState.ROLLBACK_FAILED,
    }
)
"""The states a deployment ends in."""


class NodePhase(StrEnum):
    """Where one node is within a deployment."""

    PREPARING = "PREPARING"
    PREPARED = "PREPARED"
    PREPARE_FAILED = "PREPARE_FAILED"
    WAITING = "WAITING"  # canary: the rest of the fleet waits for the canary's soak
    COMMITTING = "COMMITTING"
    ACTIVE = "ACTIVE"
    COMMIT_FAILED = "COMMIT_FAILED"
    ROLLING_BACK = "ROLLING_BACK"
    ROLLED_BACK = "ROLLED_BACK"
    ROLLBACK_FAILED = "ROLLBACK_FAILED"
    ABORTED = "ABORTED"
    OFFLINE = "OFFLINE"  # selected but not connected: caught up when it returns


class RetirementState(StrEnum):
    """One node's part in retiring a release."""

    PENDING = "pending"
    ABSENT = "absent"
    """The node verified the release is gone from its disk."""
    FAILED = "failed"


class ItemKind(StrEnum):
    """The kinds of configuration item whose lifecycle is recorded."""

    RELEASE = "release"
    COMPONENT = "component"
    FLAG = "flag"
    NODE = "node"


class FlagKind(StrEnum):
    """What a feature flag is for; it decides its expected lifetime."""

    RELEASE = "release"
    """Hides unfinished code until it is released everywhere (expected to go within weeks)."""
    OPS = "ops"
    """An operational knob (expected to go within days)."""
    KILL = "kill"
    """Switches a feature off in an emergency: permanent; its safe side is never blocked."""
    EXPERIMENT = "experiment"


class FlagType(StrEnum):
    """The type of a flag's value, fixed for the life of its name."""

    BOOLEAN = "boolean"
    INTEGER = "integer"
    FLOAT = "float"
    STRING = "string"


class FlagState(StrEnum):
    """A flag name's standing: once retired, reserved forever."""

    ACTIVE = "active"
    RETIRED = "retired"


class FlagChangeKind(StrEnum):
    """What happened to a flag, as its record says."""

    CREATE = "create"
    """Registered by hand (``flags create``)."""
    DECLARE = "declare"
    """Registered by the first push of a release that declares it."""
    SET = "set"
    UNSET = "unset"
    """A scope's value removed: the scope follows the wider one again."""
    AMEND = "amend"
    RETIRE = "retire"


class Role(StrEnum):
    """What a user may do; each role allows everything the ones before it allow."""

    VIEWER = "viewer"
    """Read everything; change nothing."""
    OPERATOR = "operator"
    """Deploy, roll back, set flags, kill and re-arm, acknowledge alerts."""
    APPROVER = "approver"
    """An operator who may also approve someone else's change request."""
    ADMIN = "admin"
    """Everything, and the users themselves."""

    def allows(self, needed: Role) -> bool:
        """Tell whether this role may do what ``needed`` may."""
        order = list(Role)
        return order.index(self) >= order.index(needed)
