"""Change control (P7): change requests, their risk assessment, approvals and reviews."""

from __future__ import annotations

from knightwatch.control.changes.assessment import Assessment, assess, risk_of
from knightwatch.control.changes.model import (
    CHECKLISTS,
    EMERGENCY_KINDS,
    ChangeKind,
    ChangeState,
    Risk,
)
from knightwatch.control.changes.requests import (
    ChangeRules,
    Readiness,
    approve,
    cancel,
    change_json,
    get_change,
    list_changes,
    mark_executed,
    mark_failed,
    propose,
    readiness,
    reject,
    tick,
)
from knightwatch.control.changes.reviews import close_review, list_reviews, review_json
from knightwatch.control.changes.rules import (
    SOLO,
    STANDARD,
    ApprovalPolicy,
    FreezeWindow,
    active_freeze,
    parse_freezes,
)

__all__ = [
    "CHECKLISTS",
    "EMERGENCY_KINDS",
    "SOLO",
    "STANDARD",
    "ApprovalPolicy",
    "Assessment",
    "ChangeKind",
    "ChangeRules",
    "ChangeState",
    "FreezeWindow",
    "Readiness",
    "Risk",
    "active_freeze",
    "approve",
    "assess",
    "cancel",
    "change_json",
    "close_review",
    "get_change",
    "list_changes",
    "list_reviews",
    "mark_executed",
    "mark_failed",
    "parse_freezes",
    "propose",
    "readiness",
    "reject",
    "review_json",
    "risk_of",
    "tick",
]
