"""Carrying out change requests: every deploy, rollback, reconcile, retirement, re-arm and
flag change is proposed, approved and executed here.

``submit`` records a request and, when the approval policy needs nobody else
(an emergency, a kill flag put on its safe side, a solo policy), executes it
at once. ``execute`` re-assesses the fleet, refuses with every reason when
the request is not ready (voiding its approvals if the fleet changed), then
performs the action through the same code and safety policy as ever.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from knightwatch.control import views
from knightwatch.control.changes import (
    ChangeKind,
    ChangeRules,
    Readiness,
    change_json,
    get_change,
    mark_executed,
    mark_failed,
    propose,
    readiness,
)
from knightwatch.control.deploy_requests import DeployRequest
from knightwatch.control.flags.values import set_flag_value
from knightwatch.control.flags.views import change_json as flag_change_json
from knightwatch.control.killswitch import lift_halts
from knightwatch.control.retirement import retirement_report, start_retirement
from knightwatch.control.targets import resolve_release
from knightwatch.errors import GateRefusedError, KnightwatchError, NotFoundError
from knightwatch.server.plane import ControlPlane
from knightwatch.store import FlagChange

__all__ = [
    "Submitted",
    "deploy_target",
    "deployment_json",
    "execute",
    "flag_change",
    "retire_target",
    "rules_of",
    "submit",
]

_EXECUTING = threading.Lock()
"""One execution at a time in this process: a request cannot run twice."""


@dataclass(frozen=True)
class Submitted:
    """A request just made, and what it started if it ran at once."""

    change: dict[str, Any]
    result: dict[str, Any] | None

    @property
    def pending(self) -> bool:
        """True when it waits for approval (or a checklist, or the end of a freeze)."""
        return self.result is None


def rules_of(plane: ControlPlane) -> ChangeRules:
    """The approval policy and freeze windows the server is configured with."""
    return ChangeRules(plane.settings.approvals, plane.settings.freeze)


def submit(
    plane: ControlPlane,
    kind: ChangeKind,
    target: dict[str, Any],
    reason: str,
    who: str,
    *,
    emergency: bool = False,
) -> Submitted:
    """Propose a change; execute it at once when nobody else need approve it."""
    with plane.db.session() as session:
        row = propose(
            session,
            kind,
            target,
            reason,
            author=who,
            emergency=emergency,
            rules=rules_of(plane),
            now=plane.clock.now(),
        )
        change_id, needed = row.id, row.approvals_needed
        proposed = change_json(session, row)
    if needed:
        return Submitted(proposed, None)
    result = execute(plane, change_id, who, just_assessed=True)
    return Submitted(_change(plane, change_id), result)


def execute(
    plane: ControlPlane, change_id: int, who: str, *, just_assessed: bool = False
) -> dict[str, Any]:
    """Run an approved change now; refuse with every reason if it may not run.

    ``just_assessed``: the change was proposed a moment ago and needs no
    approval, so there is nothing an assessment again could void; the action
    still goes through the safety policy as ever.
    """
    with _EXECUTING:
        with plane.db.session() as session:
            row = get_change(session, change_id, lock=True)
            ready = (
                Readiness([], voided=False)
                if just_assessed
                else readiness(session, row, rules_of(plane), plane.clock.now())
            )
            kind, target = ChangeKind(row.kind), json.loads(row.target)
        if not ready.ready:
            raise GateRefusedError(
                f"change {change_id} cannot execute: " + "; ".join(ready.problems),
                hint=f"`knightwatch change show {change_id}` shows its approvals and checklist",
            )
        try:
            result = _perform(plane, kind, target, who)
        except KnightwatchError as exc:
            with plane.db.session() as session:
                mark_failed(
                    session, get_change(session, change_id), who, exc.message, now=plane.clock.now()
                )
            raise
        with plane.db.session() as session:
            mark_executed(
                session,
                get_change(session, change_id),
                who,
                _summary(kind, result),
                now=plane.clock.now(),
            )
        return result


def deployment_json(plane: ControlPlane, deployment_id: int) -> dict[str, Any]:
    """A deployment with its nodes and events as JSON data."""
    with plane.db.reading() as session:
        return views.deployment_view(session, deployment_id)


def flag_change(plane: ControlPlane, change_id: int) -> dict[str, Any]:
    """A flag change and its acknowledgements as JSON data."""
    with plane.db.reading() as session:
        change = session.get(FlagChange, change_id)
        if change is None:
            raise NotFoundError(f"no flag change {change_id}")
        return flag_change_json(session, change)


def _change(plane: ControlPlane, change_id: int) -> dict[str, Any]:
    with plane.db.reading() as session:
        return change_json(session, get_change(session, change_id))


def _perform(
    plane: ControlPlane, kind: ChangeKind, target: dict[str, Any], who: str
) -> dict[str, Any]:
    """The action itself, exactly as it ran before change control wrapped it."""
    if kind is ChangeKind.DEPLOY:
        request = DeployRequest(
            release=target["digest"],
            nodes=target.get("nodes"),
            strategy=target["strategy"],
            soak_s=target.get("soak_s"),
            requested_by=who,
        )
        return deployment_json(plane, plane.orchestrator.start(request))
    if kind is ChangeKind.ROLLBACK:
        return deployment_json(plane, plane.orchestrator.start_rollback(who))
    if kind is ChangeKind.RECONCILE:
        reason = target.get("reason") or ""
        by = f"{who} (reconcile{': ' + reason if reason else ''})"
        return deployment_json(
            plane, plane.orchestrator.start_reconcile(target["node"], requested_by=by[:255])
        )
    if kind is ChangeKind.RETIRE:
        return _retire(plane, target, who)
    if kind is ChangeKind.REARM:
        return _rearm(plane, target, who)
    return _set_flag(plane, target, who)


def _retire(plane: ControlPlane, target: dict[str, Any], who: str) -> dict[str, Any]:
    with plane.db.session() as session:
        plan = start_retirement(session, target["digest"], target["reason"], who, plane.clock.now())
    plane.hub.send_each((node, plan.command) for node in plan.online)
    with plane.db.session() as session:
        return retirement_report(session, plan.retirement_id)


def _rearm(plane: ControlPlane, target: dict[str, Any], who: str) -> dict[str, Any]:
    with plane.db.session() as session:
        plan = lift_halts(session, target.get("nodes"), target["reason"], who, plane.clock.now())
    plane.hub.send_each(plan.messages)
    return {
        "lifted": plan.lifted,
        "nodes": [{"node": node, "halt_id": m.halt_id} for node, m in plan.messages],
        "online": plan.online,
        "offline": plan.offline,
    }


def _set_flag(plane: ControlPlane, target: dict[str, Any], who: str) -> dict[str, Any]:
    with plane.db.session() as session:
        plan = set_flag_value(
            session,
            target["flag"],
            target["scope"],
            target.get("value"),
            actor=who,
            reason=target.get("reason") or "",
            at=plane.clock.now(),
        )
    plane.hub.send_each(plan.messages)
    return flag_change(plane, plan.change_id)


def _summary(kind: ChangeKind, result: dict[str, Any]) -> dict[str, Any]:
    """What the change started, kept in the request (ids, not whole reports)."""
    if kind in (ChangeKind.DEPLOY, ChangeKind.ROLLBACK, ChangeKind.RECONCILE):
        return {"deployment_id": result.get("id")}
    if kind is ChangeKind.RETIRE:
        return {"retirement_id": result.get("id") or result.get("retirement_id")}
    if kind is ChangeKind.REARM:
        return {"lifted": result.get("lifted")}
    return {"flag_change_id": result.get("id")}


def deploy_target(
    plane: ControlPlane,
    release_ref: str,
    nodes: str | None,
    strategy: str,
    soak_s: float | None,
) -> dict[str, Any]:
    """A deploy's target, its release resolved to the exact bytes an approval binds to."""
    with plane.db.reading() as session:
        release = resolve_release(session, release_ref)
        release_id, digest = release.release_id, release.digest
    return {
        "release": release_id,
        "digest": digest,
        "nodes": nodes,
        "strategy": strategy,
        "soak_s": soak_s,
    }


def retire_target(plane: ControlPlane, release_ref: str, reason: str) -> dict[str, Any]:
    """A retirement's target, its release resolved to a digest."""
    with plane.db.reading() as session:
        release = resolve_release(session, release_ref)
        return {"release": release.release_id, "digest": release.digest, "reason": reason}
