"""Alert routing: who is told about an alert, and who next when nobody acknowledges it (P6).

A route is an ordered list of receivers (a webhook, a command or a Prometheus
Alertmanager). A new firing alert goes to the first; if nobody acknowledges it within
``escalate_after_s`` it goes to the next one, and so on; the receiver
reached last is told again every ``renotify_s`` until someone acknowledges
or the alert resolves. A resolved alert is announced once to every receiver
that had been told it was firing. Knight's 97 warning e-mails went to one
list nobody read; here silence escalates.

The schedule lives on the alert (``escalation_level``, ``notified_at``,
``next_notify_at``) and every delivery is an :class:`AlertNotification`
row whose ``detail`` starts with ``firing:`` or ``resolved:``. Deliveries
are claimed in one short transaction (``next_notify_at`` moves ahead by a
lease, rows locked with SKIP LOCKED so replicas do not both deliver), done
outside any transaction, then recorded in another.

An Alertmanager receiver holds a copy of the alert, not a message: once told
an alert fires it must be told again well inside its ``resolve_timeout``, at
every level of the route, until the alert resolves.
:func:`standing_deliveries` lists those copies (with the outcome of their
last post) so the notifier can re-post them; :func:`record_resend` records a
re-post without touching the escalation schedule.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from knightwatch.control.alerts import SEVERITY_RANK, alert_json
from knightwatch.errors import InvalidInputError
from knightwatch.store import Alert, AlertNotification, Fleet, Node, Release
from knightwatch.store.queries import FLEET_ID
from knightwatch.vocabulary import AlertState

__all__ = [
    "CLAIM_S",
    "RESOLVED_RETRY_S",
    "RETRY_S",
    "AlertRouting",
    "Delivery",
    "DeliveryStatus",
    "Receiver",
    "Standing",
    "claim_due",
    "record_delivery",
    "record_resend",
    "standing_deliveries",
]

CLAIM_S = 120.0
"""How long a claimed delivery keeps other notifiers (replicas) away from its alert."""
RETRY_S = 30.0
"""A failed delivery is retried after this long (or sooner, at the next escalation)."""
RESOLVED_RETRY_S = 600.0
"""A resolution an Alertmanager did not take is posted again for this long after it."""
DeliveryStatus = Literal["firing", "resolved"]
_HINT = "check [alerts] in DATA/server.toml or KNIGHTWATCH_ALERTS (JSON); see README 'Alerts'"
_BATCH = 100
_URL = r"^https?://\S+$"
_LABEL_VALUE = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Receiver(_Config):
    """Where notifications go: a webhook, a command, or Prometheus Alertmanagers (API v2)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    webhook: Annotated[str, Field(pattern=_URL, max_length=2048)] | None = Field(
        default=None, repr=False
    )
    """The URL may carry a token, so it never appears in a repr or a log line."""
    command: (
        Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)] | None
    ) = None
    alertmanager: (
        Annotated[
            tuple[Annotated[str, Field(pattern=_URL, max_length=2048)], ...],
            Field(min_length=1, max_length=8),
        ]
        | None
    ) = Field(default=None, repr=False)
    """Alertmanager base URLs (one, or each member of an HA cluster); alerts are POSTed to
    ``/api/v2/alerts`` under each."""
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    resend_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    """Alertmanager only: how often a firing alert is posted again (keep it well inside
    Alertmanager's ``resolve_timeout``, 5 minutes by default)."""

    @field_validator("alertmanager", mode="before")
    @classmethod
    def _one_url_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_target(self) -> Receiver:
        given = [t for t in (self.webhook, self.command, self.alertmanager) if t is not None]
        if len(given) != 1:
            raise ValueError(
                f"receiver {self.name!r}: give exactly one of webhook, command or alertmanager"
            )
        if "resend_s" in self.model_fields_set and self.alertmanager is None:
            raise ValueError(f"receiver {self.name!r}: resend_s is for an alertmanager receiver")
        return self

    @property
    def kind(self) -> Literal["webhook", "command", "alertmanager"]:
        """Which kind of receiver this is."""
        if self.alertmanager is not None:
            return "alertmanager"
        return "webhook" if self.webhook is not None else "command"


class AlertRouting(_Config):
    """The ``[alerts]`` settings: receivers, the route through them and its timing."""

    receivers: tuple[Receiver, ...] = ()
    route: tuple[str, ...] | None = None
    """Receiver names in escalation order (default: every receiver, in declared order)."""
    escalate_after_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    renotify_s: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    min_severity: Literal["info", "warning", "critical"] = "warning"
    external_url: Annotated[str, Field(pattern=_URL)] | None = None
    """How receivers reach this control plane (for links); default http://HOST:PORT."""
    fleet: Annotated[str, Field(pattern=_LABEL_VALUE)] = "default"
    """The ``fleet`` label on alerts posted to an Alertmanager (which control plane spoke)."""

    @model_validator(mode="after")
    def _route_names_receivers(self) -> AlertRouting:
        names = [r.name for r in self.receivers]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"receiver {twice[0]!r} is declared twice")
        route = list(self.route if self.route is not None else names)
        if unknown := [n for n in route if n not in names]:
            declared = ", ".join(names) or "none"
            raise ValueError(f"route names {unknown[0]!r}, not a receiver (declared: {declared})")
        if twice := sorted({n for n in route if route.count(n) > 1}):
            raise ValueError(f"route names {twice[0]!r} twice")
        return self

    @property
    def chain(self) -> tuple[Receiver, ...]:
        """The receivers of the route, level 0 first."""
        by_name = {r.name: r for r in self.receivers}
        names = self.route if self.route is not None else tuple(by_name)
        return tuple(by_name[n] for n in names)

    @classmethod
    def parse(cls, value: object) -> AlertRouting:
        """Validate a TOML table, a JSON string or an instance; refuse with one clear line."""
        if isinstance(value, AlertRouting):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"alert routing is not JSON: {exc}", hint=_HINT) from None
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = str(first["msg"]).removeprefix("Value error, ")
            raise InvalidInputError(
                f"alert routing is invalid: {where + ': ' if where else ''}{message}", hint=_HINT
            ) from None


@dataclass(frozen=True)
class Delivery:
    """One notification to send: which alert (as JSON data), to whom, at which level."""

    alert_id: int
    receiver: Receiver
    level: int
    status: DeliveryStatus
    alert: dict[str, Any]
    at: datetime
    release: str | None = None
    """The release the alert's node runs (the fleet's desired release for a fleet alert)."""


@dataclass(frozen=True)
class Standing:
    """An alert an Alertmanager receiver holds a copy of, and how its last post went."""

    delivery: Delivery
    last_at: datetime
    last_ok: bool


def claim_due(session: Session, routing: AlertRouting, now: datetime) -> list[Delivery]:
    """Return the notifications due now, each claimed (its alert leased) so it is sent once."""
    if not routing.chain:
        return []
    statement = (
        select(Alert)
        .where(Alert.next_notify_at.is_not(None), Alert.next_notify_at <= now)
        .order_by(Alert.id)
        .limit(_BATCH)
        .with_for_update(skip_locked=True)
    )
    deliveries: list[Delivery] = []
    for alert in list(session.scalars(statement)):  # _due queries as it goes
        deliveries.extend(_due(session, alert, routing, now))
    return deliveries


def record_delivery(
    session: Session, delivery: Delivery, *, ok: bool, detail: str, routing: AlertRouting
) -> None:
    """Record how a delivery went and schedule the alert's next notification."""
    _add_notification(session, delivery, ok=ok, detail=detail)
    alert = session.get(Alert, delivery.alert_id)
    if alert is None or delivery.status == "resolved":
        return
    session.flush()
    alert.notified_at = delivery.at
    if alert.state == AlertState.RESOLVED:  # resolved while this firing notice was on its way
        alert.next_notify_at = alert.next_notify_at or delivery.at
        return
    if alert.state == AlertState.ACKNOWLEDGED:
        alert.next_notify_at = None
        return
    alert.escalation_level = delivery.level
    started = _level_started(session, alert.id, delivery.level) or delivery.at
    last_level = delivery.level + 1 >= len(routing.chain)
    renotify = routing.renotify_s if ok else min(routing.renotify_s, RETRY_S)
    due = [delivery.at + timedelta(seconds=renotify)]
    if not last_level:
        due.append(started + timedelta(seconds=routing.escalate_after_s))
    alert.next_notify_at = min(due)


def _due(session: Session, alert: Alert, routing: AlertRouting, now: datetime) -> list[Delivery]:
    if alert.state == AlertState.ACKNOWLEDGED:
        alert.next_notify_at = None
        return []
    if alert.state == AlertState.RESOLVED:
        alert.next_notify_at = None
        told = _told_firing(session, alert.id)
        by_name = {r.name: r for r in routing.receivers}
        snapshot, release = alert_json(alert), _release_of(session, alert)
        return [
            Delivery(alert.id, by_name[name], level, "resolved", snapshot, now, release)
            for name, level in told.items()
            if name in by_name
        ]
    if SEVERITY_RANK[alert.severity] < SEVERITY_RANK[routing.min_severity]:
        alert.next_notify_at = None
        return []
    level = _level_now(session, alert, routing, now)
    alert.next_notify_at = now + timedelta(seconds=CLAIM_S)
    release = _release_of(session, alert)
    receiver = routing.chain[level]
    return [Delivery(alert.id, receiver, level, "firing", alert_json(alert), now, release)]


def _level_now(session: Session, alert: Alert, routing: AlertRouting, now: datetime) -> int:
    """Level 0 for a new alert; the next level once the current one had its time; else the same."""
    if alert.notified_at is None:
        return 0
    level = min(alert.escalation_level, len(routing.chain) - 1)
    started = _level_started(session, alert.id, level) or alert.notified_at
    if level + 1 < len(routing.chain) and now >= started + timedelta(
        seconds=routing.escalate_after_s
    ):
        return level + 1
    return level


def _level_started(session: Session, alert_id: int, level: int) -> datetime | None:
    """When the alert was first sent (as firing) to the receiver at ``level``."""
    statement = select(func.min(AlertNotification.at)).where(
        AlertNotification.alert_id == alert_id,
        AlertNotification.level == level,
        AlertNotification.detail.like("firing:%"),
    )
    return session.scalar(statement)


def _told_firing(session: Session, alert_id: int) -> dict[str, int]:
    """Receivers that were told (successfully) that the alert fires, with their level."""
    statement = (
        select(AlertNotification.receiver, func.min(AlertNotification.level))
        .where(
            AlertNotification.alert_id == alert_id,
            AlertNotification.ok.is_(True),
            AlertNotification.detail.like("firing:%"),
        )
        .group_by(AlertNotification.receiver)
        .order_by(func.min(AlertNotification.level))
    )
    return dict(session.execute(statement).all())


def standing_deliveries(
    session: Session, routing: AlertRouting, now: datetime, resolving: Collection[int] = ()
) -> list[Standing]:
    """What each Alertmanager receiver must be told again, with how its last post went.

    For an open alert (firing or acknowledged — the condition still holds): every
    Alertmanager receiver that was sent it as firing, whatever the level the
    route has reached since. For an alert of ``resolving`` (resolutions an
    Alertmanager did not take, as the caller knows) resolved in the last
    :data:`RESOLVED_RETRY_S`: every receiver whose last post, the resolution, failed.
    """
    by_name = {r.name: r for r in routing.receivers if r.kind == "alertmanager"}
    if not by_name:
        return []
    recent = now - timedelta(seconds=RESOLVED_RETRY_S)
    statement = select(Alert).where(
        or_(
            Alert.state.in_((AlertState.FIRING, AlertState.ACKNOWLEDGED)),
            and_(Alert.id.in_(list(resolving)), Alert.resolved_at >= recent),
        )
    )
    alerts = {a.id: a for a in session.scalars(statement)}
    if not alerts:
        return []
    rows = select(AlertNotification).where(
        AlertNotification.alert_id.in_(list(alerts)),
        AlertNotification.receiver.in_(list(by_name)),
    )
    last: dict[tuple[int, str], AlertNotification] = {}
    for row in session.scalars(rows.order_by(AlertNotification.id)):
        last[(row.alert_id, row.receiver)] = row
    standing = []
    for (alert_id, name), row in sorted(last.items()):
        alert, status = alerts[alert_id], row.detail.partition(":")[0]
        if alert.state != AlertState.RESOLVED and status == "firing":
            again: DeliveryStatus = "firing"
        elif alert.state == AlertState.RESOLVED and status == "resolved" and not row.ok:
            again = "resolved"
        else:
            continue
        snapshot, release = alert_json(alert), _release_of(session, alert)
        delivery = Delivery(alert_id, by_name[name], row.level, again, snapshot, now, release)
        standing.append(Standing(delivery, row.at, row.ok))
    return standing


def _add_notification(session: Session, delivery: Delivery, *, ok: bool, detail: str) -> None:
    session.add(
        AlertNotification(
            alert_id=delivery.alert_id,
            receiver=delivery.receiver.name,
            level=delivery.level,
            at=delivery.at,
            ok=ok,
            detail=f"{delivery.status}: {detail}"[:4000],
        )
    )


def record_resend(session: Session, delivery: Delivery, *, ok: bool, detail: str) -> None:
    """Record a re-post to an Alertmanager; the escalation schedule stays as it is."""
    _add_notification(session, delivery, ok=ok, detail=detail)


def _release_of(session: Session, alert: Alert) -> str | None:
    """The release ID the alert's node runs, or the fleet's desired release for a fleet alert."""
    if alert.node_name:
        node = session.get(Node, alert.node_name)
        digest = node.active_digest if node is not None else None
    else:
        fleet = session.get(Fleet, FLEET_ID)
        digest = fleet.desired_digest if fleet is not None else None
    if digest is None:
        return None
    release_id = session.scalar(select(Release.release_id).where(Release.digest == digest))
    return release_id or digest
