"""Operator API for alerts: list, show (with every delivery), acknowledge, resolve."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from knightwatch.api.auth import Operator
from knightwatch.api.fields import IdPath, SafeText
from knightwatch.api.plane import Plane
from knightwatch.control.alerts import (
    ALERT_STATES,
    acknowledge,
    alert_json,
    get_alert,
    list_alerts,
    notification_json,
    notifications,
    resolve_alert,
)
from knightwatch.errors import InvalidInputError

__all__ = ["router"]

router = APIRouter(prefix="/api/v1")


class ActionBody(BaseModel):
    """Why an alert is acknowledged or resolved (the caller is who does it)."""

    model_config = ConfigDict(extra="forbid")

    comment: Annotated[str, Field(max_length=1000), SafeText] = ""


@router.get("/alerts")
def alerts(
    plane: Plane, _who: Operator, state: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """Alerts, newest first (``state``: firing, acknowledged or resolved)."""
    if state is not None and state not in ALERT_STATES:
        raise InvalidInputError(
            f"state {state!r} is not one of {', '.join(ALERT_STATES)}",
            hint="e.g. GET /api/v1/alerts?state=firing",
        )
    with plane.db.session() as session:
        return [alert_json(a) for a in list_alerts(session, state, limit)]


@router.get("/alerts/{alert_id}")
def show_alert(alert_id: IdPath, plane: Plane, _who: Operator) -> dict[str, Any]:
    """One alert and every notification sent about it, oldest first."""
    with plane.db.session() as session:
        alert = get_alert(session, alert_id)
        sent = [notification_json(n) for n in notifications(session, alert_id)]
        return {**alert_json(alert), "notifications": sent}


@router.post("/alerts/{alert_id}/ack")
def ack_alert(alert_id: IdPath, body: ActionBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Acknowledge an alert: someone is on it, so it stops escalating."""
    with plane.db.session() as session:
        alert = acknowledge(session, alert_id, by=who, now=plane.clock.now(), comment=body.comment)
        return alert_json(alert)


@router.post("/alerts/{alert_id}/resolve")
def close_alert(alert_id: IdPath, body: ActionBody, plane: Plane, who: Operator) -> dict[str, Any]:
    """Resolve an alert by hand; receivers that were told it fired hear that it is resolved."""
    with plane.db.session() as session:
        alert = resolve_alert(
            session, alert_id, by=who, now=plane.clock.now(), comment=body.comment
        )
        return alert_json(alert)
