"""The control plane's persistent store: models, sessions and migrations (SQLite or PostgreSQL).

The domain opens a :class:`Database` with :func:`open_database`, works inside
``with db.session() as session:`` (one short transaction) on the models, and
uses the few generic helpers of :mod:`knightwatch.store.queries` (which
also holds ``TERMINAL_STATES``, the deployment states that are finished). Every
database failure is a :class:`~knightwatch.errors.StoreError`.
"""

from knightwatch.store.database import Database, DialectName, open_database
from knightwatch.store.models import (
    Alert,
    AlertNotification,
    Audit,
    AuditLogEntry,
    AuditNodeResult,
    Base,
    ChangeApproval,
    ChangeRequest,
    ChangeTick,
    Deployment,
    DeploymentEvent,
    DeploymentNode,
    Flag,
    FlagChange,
    FlagEvaluation,
    FlagValue,
    Fleet,
    Halt,
    HaltNode,
    JoinToken,
    LifecycleEvent,
    Node,
    Release,
    ReleaseFlag,
    Retirement,
    RetirementNode,
    ReviewItem,
    User,
)
from knightwatch.store.queries import active_deployment, get_fleet, record_event
from knightwatch.store.types import UTCDateTime

__all__ = [
    "Alert",
    "AlertNotification",
    "Audit",
    "AuditLogEntry",
    "AuditNodeResult",
    "Base",
    "ChangeApproval",
    "ChangeRequest",
    "ChangeTick",
    "Database",
    "Deployment",
    "DeploymentEvent",
    "DeploymentNode",
    "DialectName",
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
    "ReviewItem",
    "UTCDateTime",
    "User",
    "active_deployment",
    "get_fleet",
    "open_database",
    "record_event",
]
