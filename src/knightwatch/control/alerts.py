"""Alerts: conditions someone must look at, stored and deduplicated by fingerprint (P6).

An alert's fingerprint is its rule plus its node, so a condition that keeps
firing is one alert with a count, never a flood of rows. States::

    firing ──acknowledge──► acknowledged ──resolve──► resolved
       └──────────────────resolve─────────────────────┘

Acknowledging stops escalation (someone is on it); resolving closes the
alert (the condition cleared, or an operator closed it) and announces it to
the receivers that were told (:mod:`knightwatch.control.routing`). A firing
(unacknowledged) critical alert blocks deploys and flag changes in its
scope: its node, or the whole fleet when it has none.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.control import auditlog
from knightwatch.errors import InvalidInputError, NotFoundError
from knightwatch.store import Alert, AlertNotification
from knightwatch.vocabulary import AlertState, Severity

__all__ = [
    "ALERT_STATES",
    "SEVERITY_RANK",
    "AlertNotFoundError",
    "AlertSeverity",
    "acknowledge",
    "alert_json",
    "fingerprint",
    "fire",
    "get_alert",
    "list_alerts",
    "notification_json",
    "notifications",
    "open_alert",
    "resolve",
    "resolve_alert",
    "update",
]

AlertSeverity = Severity | Literal["info", "warning", "critical"]
"""A severity as the vocabulary names it, or as a spec or guard wrote it (the same words)."""
ALERT_STATES: tuple[AlertState, ...] = tuple(AlertState)
SEVERITY_RANK: dict[str, int] = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


class AlertNotFoundError(NotFoundError):
    """No alert has this ID."""

    def __init__(self, alert_id: int) -> None:
        super().__init__(f"no alert {alert_id}", hint="list alerts with: knightwatch alerts list")
        self.alert_id = alert_id


def fingerprint(rule: str, node: str | None) -> str:
    """Return the deduplication key of an alert."""
    return f"{rule}@{node or 'fleet'}"


def open_alert(session: Session, key: str) -> Alert | None:
    """Return the newest alert with fingerprint ``key`` that is not resolved, if any."""
    statement = (
        select(Alert)
        .where(Alert.fingerprint == key, Alert.state != AlertState.RESOLVED)
        .order_by(Alert.id.desc())
        .limit(1)
    )
    return session.scalars(statement).first()


def fire(
    session: Session,
    *,
    rule: str,
    node: str | None,
    severity: AlertSeverity,
    summary: str,
    detail: str,
    now: datetime,
) -> Alert:
    """Raise an alert, or count one more firing of the open alert with the same fingerprint."""
    key = fingerprint(rule, node)
    alert = open_alert(session, key)
    if alert is not None:
        alert.count += 1
        alert.last_at = now
        alert.summary, alert.detail = summary, detail
        if SEVERITY_RANK[severity] > SEVERITY_RANK[alert.severity]:
            alert.severity = severity
            if alert.state == AlertState.FIRING and alert.notified_at is None:
                alert.next_notify_at = now  # it may now be severe enough to route
        return alert
    alert = Alert(
        fingerprint=key,
        rule=rule,
        node_name=node,
        severity=severity,
        state=AlertState.FIRING,
        summary=summary,
        detail=detail,
        count=1,
        first_at=now,
        last_at=now,
        next_notify_at=now,
    )
    session.add(alert)
    session.flush()
    _record(session, alert, "alert.fired", "knightwatch", now)
    return alert


def update(alert: Alert, *, summary: str, detail: str, now: datetime) -> None:
    """Refresh what an open alert says (the condition changed, it did not fire again)."""
    alert.summary, alert.detail, alert.last_at = summary, detail, now


def resolve(session: Session, key: str, *, by: str, now: datetime) -> Alert | None:
    """Resolve the open alert with fingerprint ``key``; return it (None if none was open)."""
    alert = open_alert(session, key)
    if alert is not None:
        _close(alert, by, now)
        _record(session, alert, "alert.resolved", by, now)
    return alert


def get_alert(session: Session, alert_id: int) -> Alert:
    """The alert with ``alert_id``; AlertNotFoundError if there is none."""
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise AlertNotFoundError(alert_id)
    return alert


def acknowledge(
    session: Session, alert_id: int, *, by: str, now: datetime, comment: str = ""
) -> Alert:
    """Someone is on it: stop escalating. Refused for a resolved alert; idempotent otherwise."""
    alert = get_alert(session, alert_id)
    if alert.state == AlertState.RESOLVED:
        raise InvalidInputError(
            f"alert {alert_id} ({alert.rule} on {alert.node_name or 'the fleet'}) "
            f"was resolved by {alert.resolved_by} at {_when(alert.resolved_at)}; "
            "there is nothing to acknowledge",
            hint="list open alerts with: knightwatch alerts list --state firing",
        )
    if alert.state == AlertState.ACKNOWLEDGED:
        return alert
    alert.state = AlertState.ACKNOWLEDGED
    alert.acknowledged_at, alert.acknowledged_by = now, _actor(by, comment)
    alert.next_notify_at = None
    _record(session, alert, "alert.acknowledged", by, now, comment)
    return alert


def resolve_alert(
    session: Session, alert_id: int, *, by: str, now: datetime, comment: str = ""
) -> Alert:
    """Close an alert by hand (firing or acknowledged); refused when it is already resolved."""
    alert = get_alert(session, alert_id)
    if alert.state == AlertState.RESOLVED:
        raise InvalidInputError(
            f"alert {alert_id} was already resolved by {alert.resolved_by} "
            f"at {_when(alert.resolved_at)}",
            hint="list open alerts with: knightwatch alerts list --state firing",
        )
    _close(alert, _actor(by, comment), now)
    _record(session, alert, "alert.resolved", by, now, comment)
    return alert


def list_alerts(session: Session, state: str | None = None, limit: int = 200) -> list[Alert]:
    """Alerts, newest first, optionally only those in ``state``."""
    statement = select(Alert).order_by(Alert.id.desc()).limit(max(1, min(limit, 1000)))
    if state is not None:
        statement = statement.where(Alert.state == state)
    return list(session.scalars(statement))


def notifications(session: Session, alert_id: int) -> list[AlertNotification]:
    """Every delivery of an alert, oldest first."""
    statement = (
        select(AlertNotification)
        .where(AlertNotification.alert_id == alert_id)
        .order_by(AlertNotification.id)
    )
    return list(session.scalars(statement))


def alert_json(alert: Alert) -> dict[str, Any]:
    """An alert as plain JSON data."""
    return {
        "id": alert.id,
        "fingerprint": alert.fingerprint,
        "rule": alert.rule,
        "node": alert.node_name,
        "severity": alert.severity,
        "state": alert.state,
        "summary": alert.summary,
        "detail": alert.detail,
        "count": alert.count,
        "first_at": alert.first_at,
        "last_at": alert.last_at,
        "acknowledged_at": alert.acknowledged_at,
        "acknowledged_by": alert.acknowledged_by,
        "resolved_at": alert.resolved_at,
        "resolved_by": alert.resolved_by,
        "escalation_level": alert.escalation_level,
        "notified_at": alert.notified_at,
        "next_notify_at": alert.next_notify_at,
    }


def notification_json(row: AlertNotification) -> dict[str, Any]:
    """One delivery as plain JSON data (``status`` is firing or resolved)."""
    status, _, outcome = row.detail.partition(": ")
    return {
        "receiver": row.receiver,
        "level": row.level,
        "at": row.at,
        "status": status,
        "ok": row.ok,
        "detail": outcome,
    }


def _record(
    session: Session, alert: Alert, action: str, by: str, now: datetime, comment: str = ""
) -> None:
    """Append the alert's change to the audit log."""
    auditlog.append(
        session,
        actor=by,
        action=action,
        obj=f"alert {alert.id}",
        at=now,
        payload={
            "rule": alert.rule,
            "node": alert.node_name,
            "severity": alert.severity,
            "summary": alert.summary[:500],
            "comment": comment,
        },
    )


def _close(alert: Alert, by: str, now: datetime) -> None:
    alert.state = AlertState.RESOLVED
    alert.resolved_at, alert.resolved_by = now, by
    # announce the resolution to whoever was told it fired (routing sends it once)
    alert.next_notify_at = now if alert.notified_at is not None else None


def _actor(by: str, comment: str) -> str:
    return (f"{by} ({comment})" if comment else by)[:255]


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "an unknown time"
