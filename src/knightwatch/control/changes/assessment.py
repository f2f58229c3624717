"""The risk assessment of a change: the facts it would touch, frozen when it is proposed.

The facts are what a second person approves: the nodes, the release and its
diff from what runs, the flags the release starts or stops reading, whether
the fleet is converged, the open alerts, whether every node has a rollback
target it can trust, and the safety policy's refusals as of now. Their hash
binds every approval; at execution they are assessed again and, if the hash
differs, the approvals are void.

The risk rules are :func:`risk_of`, here and nowhere else (docs/design.md
copies them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.bundle.diff import diff_releases
from knightwatch.bundle.manifest import Manifest
from knightwatch.canonical import canonical_json
from knightwatch.control.changes.model import ChangeKind, Risk
from knightwatch.control.flags.values import flag_set_proposal
from knightwatch.control.fleet_status import FleetState, fleet_status
from knightwatch.control.policy import Action, Proposal, evaluate
from knightwatch.control.policy.proposals import proposal_for
from knightwatch.store import Alert, Node, Release, ReleaseFlag
from knightwatch.store.queries import get_fleet
from knightwatch.vocabulary import AlertState, DriftState, Severity

__all__ = ["Assessment", "assess", "risk_of"]


@dataclass(frozen=True)
class Assessment:
    """What a change would touch, how risky that is and why."""

    facts: dict[str, Any]
    risk: Risk
    reasons: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        """SHA-256 of the facts' canonical JSON: what an approval is bound to."""
        return hashlib.sha256(canonical_json(self.facts)).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """The JSON form kept in the change request."""
        return {
            "facts": self.facts,
            "risk": self.risk.value,
            "reasons": self.reasons,
            "digest": self.digest,
        }


def assess(session: Session, kind: ChangeKind, target: dict[str, Any], now: datetime) -> Assessment:
    """Assess ``kind`` with ``target`` against the fleet as it is now."""
    proposal = _proposal(session, kind, target)
    status = fleet_status(session, now)
    facts: dict[str, Any] = {
        "kind": kind.value,
        "nodes": proposal.node_names,
        "fleet_state": status.state.value,
        "converged": status.state is FleetState.CONVERGED,
        "open_alerts": _open_alerts(session),
        "refusals": [r.to_json() for r in evaluate(session, proposal)],
    }
    if proposal.release is not None:
        facts["release"] = {
            "release_id": proposal.release.release_id,
            "digest": proposal.release.digest,
        }
    if kind in (ChangeKind.DEPLOY, ChangeKind.ROLLBACK) and proposal.release is not None:
        facts.update(_against_current(session, proposal.release))
        facts["rollback_target_missing"] = _without_rollback_target(proposal)
    if kind is ChangeKind.RETIRE and proposal.release is not None:
        facts["rollback_target_of"] = _holding_as_previous(session, proposal.release.digest)
    if kind is ChangeKind.FLAG_SET:
        facts["flag"] = {
            "name": target["flag"],
            "scope": target["scope"],
            "value": target.get("value"),
            "safe_side": proposal.action is Action.FLAG_SAFE,
        }
    risk, reasons = risk_of(facts)
    return Assessment(facts, risk, reasons)


def risk_of(facts: dict[str, Any]) -> tuple[Risk, list[str]]:
    """The risk rules: every reason for the highest level that applies.

    High: the safety policy refuses it now; the fleet is not converged; a
    critical alert is open; a node would have no trustworthy rollback target;
    the release starts or stops reading a flag; a retirement removes some
    node's rollback target.
    Medium: more than one node; a component changes; an alert is open.
    Low: anything else (one node, no component changed, a quiet fleet).
    """
    high = [
        reason
        for holds, reason in (
            (bool(facts["refusals"]), "the safety policy refuses it now"),
            (not facts["converged"], f"the fleet is {facts['fleet_state']}, not CONVERGED"),
            (
                any(a["severity"] == Severity.CRITICAL for a in facts["open_alerts"]),
                "a critical alert is open",
            ),
            (
                bool(facts.get("rollback_target_missing")),
                "no trustworthy rollback target on "
                + ", ".join(facts.get("rollback_target_missing") or []),
            ),
            (
                bool(facts.get("flags_newly_read") or facts.get("flags_no_longer_read")),
                "the release starts or stops reading a flag",
            ),
            (
                bool(facts.get("rollback_target_of")),
                "it removes the rollback target of "
                + ", ".join(facts.get("rollback_target_of") or []),
            ),
        )
        if holds
    ]
    if high:
        return Risk.HIGH, high
    changes = facts.get("diff") or {}
    medium = [
        reason
        for holds, reason in (
            (len(facts["nodes"]) > 1, f"{len(facts['nodes'])} nodes"),
            (
                bool(
                    changes.get("components_changed")
                    or changes.get("components_added")
                    or changes.get("components_removed")
                ),
                "components change",
            ),
            (bool(facts["open_alerts"]), f"{len(facts['open_alerts'])} alert(s) open"),
        )
        if holds
    ]
    if medium:
        return Risk.MEDIUM, medium
    return Risk.LOW, ["one node, no component changed, a quiet fleet"]


def _proposal(session: Session, kind: ChangeKind, target: dict[str, Any]) -> Proposal:
    if kind is ChangeKind.FLAG_SET:
        return flag_set_proposal(session, target["flag"], target["scope"], target.get("value"))[0]
    return proposal_for(
        session,
        Action(kind.value),
        release=target.get("digest") or target.get("release"),
        nodes=target.get("nodes"),
        node=target.get("node"),
    )


def _open_alerts(session: Session) -> list[dict[str, Any]]:
    statement = (
        select(Alert)
        .where(Alert.state.in_((AlertState.FIRING, AlertState.ACKNOWLEDGED)))
        .order_by(Alert.id)
    )
    return [
        {"id": a.id, "rule": a.rule, "severity": a.severity, "node": a.node_name}
        for a in session.scalars(statement)
    ]


def _against_current(session: Session, release: Release) -> dict[str, Any]:
    """The diff from the fleet's current release, and the flags that start or stop being read."""
    current_digest = get_fleet(session).desired_digest
    current = session.get(Release, current_digest) if current_digest else None
    facts: dict[str, Any] = {"from_release": current.release_id if current else None}
    if current is not None:
        diff = diff_releases(
            Manifest.model_validate_json(current.manifest),
            Manifest.model_validate_json(release.manifest),
        )
        facts["diff"] = {
            "files_added": len(diff.files_added),
            "files_removed": len(diff.files_removed),
            "files_changed": len(diff.files_changed),
            "components_added": diff.components_added,
            "components_removed": diff.components_removed,
            "components_changed": diff.components_changed,
            "downstream": diff.downstream,
        }
    before = _flags_read(session, current_digest)
    after = _flags_read(session, release.digest)
    facts["flags_newly_read"] = sorted(after - before)
    facts["flags_no_longer_read"] = sorted(before - after)
    return facts


def _flags_read(session: Session, digest: str | None) -> set[str]:
    if digest is None:
        return set()
    statement = select(ReleaseFlag.flag_name).where(ReleaseFlag.release_digest == digest)
    return set(session.scalars(statement))


def _without_rollback_target(proposal: Proposal) -> list[str]:
    """Nodes that run nothing, or whose running release is not verified intact."""
    return sorted(
        n.name
        for n in proposal.nodes
        if n.active_digest is None or n.drift_state == DriftState.DRIFTED
    )


def _holding_as_previous(session: Session, digest: str) -> list[str]:
    statement = select(Node.name).where(Node.previous_digest == digest).order_by(Node.name)
    return list(session.scalars(statement))
