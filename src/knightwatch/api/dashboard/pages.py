"""What each dashboard page shows: its data, read from the store in one snapshot.

Every loader takes the control plane and the page's query parameters and
returns the template's context. Loaders only read; the page's fragment is
rendered from that context both for the first load and for every live update.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from knightwatch.control import views
from knightwatch.control.alerts import ALERT_STATES, alert_json, list_alerts
from knightwatch.control.auditlog import entry_json, verify_chain
from knightwatch.control.changes.model import ChangeState
from knightwatch.control.changes.requests import list_changes
from knightwatch.control.flags.values import dry_run_flag_set
from knightwatch.control.flags.views import flag_history, flag_json
from knightwatch.control.fleet_status import fleet_status
from knightwatch.control.halt_views import halt_report, list_halts
from knightwatch.errors import KnightwatchError
from knightwatch.server.checkpoints import checkpoint_problems
from knightwatch.server.plane import ControlPlane
from knightwatch.store import AuditLogEntry, Flag
from knightwatch.vocabulary import DriftState, ServiceState

__all__ = ["PAGES", "Page", "tile_state"]

Params = Mapping[str, str]
Loader = Callable[[ControlPlane, Params], dict[str, Any]]

GROUPINGS = ("release", "state", "group", "none")
AUDIT_SHOWN = 200


@dataclass(frozen=True)
class Page:
    """One page of the dashboard: where it is, its title, its live fragment, its data."""

    name: str
    title: str
    fragment: str
    load: Loader
    period_s: float = 1.0
    """How often the live stream looks for a change."""


def tile_state(node: Mapping[str, Any]) -> str:
    """The one word a node's tile is coloured (and labelled) by, worst first."""
    if node["halted"]:
        return "halted"
    if node["state"] != "CONNECTED":
        return "unknown"
    if node["drift_state"] == DriftState.DRIFTED:
        return "drifted"
    if node["service_state"] not in (ServiceState.RUNNING, ServiceState.NONE):
        return "degraded"
    if node["desired_digest"] and node["active_digest"] != node["desired_digest"]:
        return "behind"
    return "ok"


def _fleet(plane: ControlPlane, params: Params) -> dict[str, Any]:
    grouping = params.get("group", "release")
    grouping = grouping if grouping in GROUPINGS else "release"
    with plane.db.reading() as session:
        status = fleet_status(session, plane.clock.now()).to_json()
    nodes = status["nodes"]
    for node in nodes:
        node["tile"] = tile_state(node)
    groups: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        groups.setdefault(_group_key(node, grouping), []).append(node)
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node["tile"]] = counts.get(node["tile"], 0) + 1
    return {
        "status": status,
        "grouping": grouping,
        "groupings": GROUPINGS,
        "groups": sorted(groups.items()),
        "counts": sorted(counts.items()),
    }


def _group_key(node: Mapping[str, Any], grouping: str) -> str:
    if grouping == "state":
        return str(node["tile"])
    if grouping == "group":
        return str(node["group"])
    if grouping == "release":
        release = node["active_release"] or (node["last_known"] or {}).get("active_release")
        return str(release or "no release")
    return "all nodes"


def _deployments(plane: ControlPlane, params: Params) -> dict[str, Any]:
    with plane.db.reading() as session:
        listed = views.list_deployments(session, 30)
        chosen = _int(params.get("id")) or (listed[0]["id"] if listed else None)
        shown = views.deployment_view(session, chosen) if chosen else None
    if shown is not None:
        shown["timeline"] = _timeline(shown)
    return {"deployments": listed, "shown": shown}


def _timeline(deployment: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per node: its phase now and its recorded events, in order, seconds after the start."""
    start = datetime.fromisoformat(deployment["created_at"])
    rows = []
    for node in deployment["nodes"]:
        events = [
            {**e, "after_s": (datetime.fromisoformat(e["at"]) - start).total_seconds()}
            for e in deployment["events"]
            if e["node"] == node["node"]
        ]
        rows.append({**node, "events": events})
    return rows


def _changes(plane: ControlPlane, params: Params) -> dict[str, Any]:
    state = params.get("state") or None
    state = state if state in set(ChangeState) else None
    with plane.db.reading() as session:
        changes = list_changes(session, state=state, limit=50)
    for change in changes:
        change["assessment_text"] = json.dumps(change["assessment"], indent=2, sort_keys=True)
    return {"changes": changes, "state": state or ""}


def _flags(plane: ControlPlane, _params: Params) -> dict[str, Any]:
    with plane.db.reading() as session:
        flags = [
            flag_json(session, row, detail=True)
            for row in session.scalars(select(Flag).order_by(Flag.name))
        ]
        for flag in flags:
            flag["check"] = _flag_check(session, flag)
        recent = flag_history(session, None, limit=30)
    return {"flags": flags, "recent": recent}


def _flag_check(session: Session, flag: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """What the safety policy would refuse if the flag's fleet value changed now.

    A boolean flag is checked for the value it does not have; other types
    for their default (the policy's fleet checks do not depend on the value).
    """
    if flag["state"] != "active":
        return None
    fleet = next((v["value"] for v in flag["values"] if v["scope"] == "fleet"), flag["default"])
    value = (not fleet) if isinstance(fleet, bool) else flag["default"]
    try:
        refusals = dry_run_flag_set(session, flag["name"], "fleet", value)
    except KnightwatchError as exc:
        return [{"check": "flag", "reason": exc.message, "subjects": [], "hint": exc.hint}]
    return [r.to_json() for r in refusals]


def _alerts(plane: ControlPlane, params: Params) -> dict[str, Any]:
    state = params.get("state") or None
    state = state if state in ALERT_STATES else None
    with plane.db.reading() as session:
        alerts = [alert_json(a) for a in list_alerts(session, state, 200)]
    return {"alerts": alerts, "state": state or "", "states": ALERT_STATES}


def _audit(plane: ControlPlane, params: Params) -> dict[str, Any]:
    query = (params.get("q") or "").strip()[:200]
    statement = select(AuditLogEntry).order_by(AuditLogEntry.seq.desc()).limit(AUDIT_SHOWN)
    if query:
        like = f"%{query}%"
        statement = statement.where(
            or_(
                AuditLogEntry.action.ilike(like),
                AuditLogEntry.actor.ilike(like),
                AuditLogEntry.object.ilike(like),
                AuditLogEntry.payload.ilike(like),
            )
        )
    with plane.db.reading() as session:
        entries = [entry_json(e) for e in session.scalars(statement)]
        chain = verify_chain(session)
    problems: list[str] = []
    if plane.checkpoints is not None:
        found, unreadable = plane.checkpoints.read()
        problems = unreadable + checkpoint_problems(chain, found, plane.checkpoints.public_key)
    for entry in entries:
        entry["payload_text"] = json.dumps(entry["payload"], sort_keys=True)[:600]
    return {"entries": entries, "q": query, "chain": chain, "problems": problems}


def _halts(plane: ControlPlane, params: Params) -> dict[str, Any]:
    with plane.db.reading() as session:
        halts = list_halts(session, active=None, limit=30)
        chosen = _int(params.get("id")) or (halts[0]["halt_id"] if halts else None)
        report = halt_report(session, chosen).to_json() if chosen else None
    return {"halts": halts, "report": report}


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() and len(text) < 18 else None


PAGES = {
    page.name: page
    for page in (
        Page("fleet", "Fleet", "_fleet.html", _fleet, period_s=0.5),
        Page("deployments", "Deployments", "_deployments.html", _deployments),
        Page("changes", "Changes", "_changes.html", _changes),
        Page("flags", "Flags", "_flags.html", _flags),
        Page("alerts", "Alerts", "_alerts.html", _alerts),
        Page("audit", "Audit log", "_audit.html", _audit, period_s=2.0),
        Page("halts", "Halts", "_halts.html", _halts, period_s=0.25),
    )
}
