"""Put knightwatch's alerts into a Prometheus Alertmanager (``POST /api/v2/alerts``).

An Alertmanager keeps a copy of each alert, keyed by its labels, and forgets
it ``resolve_timeout`` after the last post unless the post said when it ended.
So a firing alert is posted when the route reaches the receiver and again
every ``resend_s`` while it is open (acknowledged too: the condition still
holds); its resolution is posted with ``endsAt``. Every post goes to each
Alertmanager of the receiver (an HA pair gossips, so one taking it is
enough). A failed post is retried with a doubling backoff, capped at
``resend_s``; :class:`Resends` keeps that schedule in memory, seeded from the
recorded deliveries after a restart.

The labels of an alert are computed once and reused for its every post, so
Alertmanager sees one alert even when, say, the node's release changes
while it fires.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from knightwatch.control.routing import Delivery, Receiver, Standing

__all__ = ["FIRST_RETRY_S", "Resends", "alert_labels", "post_alert", "postable_alert"]

FIRST_RETRY_S = 1.0
"""The first retry of a failed post comes after this long; each next one after twice as long."""
SOURCE = "knightwatch"
_REMEMBERED = 10_000  # labels of alerts whose resolution was never taken are dropped past this


def alert_labels(delivery: Delivery, fleet: str) -> dict[str, str]:
    """The labels that identify ``delivery``'s alert in Alertmanager."""
    alert = delivery.alert
    labels = {"alertname": alert["rule"], "severity": alert["severity"]}
    if alert["node"]:
        labels["node"] = alert["node"]
    labels["fleet"] = fleet
    if delivery.release:
        labels["release"] = delivery.release
    labels["source"] = SOURCE
    return labels


def postable_alert(delivery: Delivery, labels: dict[str, str], external_url: str) -> dict[str, Any]:
    """One alert as API v2's ``postableAlert``: firing has no ``endsAt``, resolved has one."""
    alert = delivery.alert
    link = f"{external_url}/api/v1/alerts/{alert['id']}"
    annotations = {
        "summary": alert["summary"],
        "description": alert["detail"],
        "count": str(alert["count"]),
        "alert_id": str(alert["id"]),
        "link": link,
        "acknowledge": f"knightwatch alerts ack {alert['id']}",
    }
    if alert["acknowledged_by"]:
        annotations["acknowledged_by"] = alert["acknowledged_by"]
    body: dict[str, Any] = {
        "labels": labels,
        "annotations": {k: v for k, v in annotations.items() if v},
        "startsAt": _rfc3339(alert["first_at"]),
        "generatorURL": link,
    }
    if delivery.status == "resolved":
        body["endsAt"] = _rfc3339(alert["resolved_at"] or delivery.at)
    return body


async def post_alert(
    client: httpx.AsyncClient, receiver: Receiver, alert: dict[str, Any]
) -> tuple[bool, str]:
    """POST ``alert`` to every Alertmanager of ``receiver``; (one of them took it?, outcomes)."""
    assert receiver.alertmanager is not None
    body = [alert]
    outcomes = await asyncio.gather(
        *(_post_one(client, url, body, receiver.timeout_s) for url in receiver.alertmanager)
    )
    return any(ok for ok, _ in outcomes), "; ".join(detail for _, detail in outcomes)


async def _post_one(
    client: httpx.AsyncClient, base: str, body: list[dict[str, Any]], timeout: float
) -> tuple[bool, str]:
    url = httpx.URL(base.rstrip("/") + "/api/v2/alerts")
    where = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
    try:
        response = await client.post(url, json=body, timeout=timeout)
    except httpx.HTTPError as exc:  # the URL may carry credentials: name only host and port
        return False, f"{where} {type(exc).__name__}"
    if response.is_success:
        return True, f"{where} HTTP {response.status_code}"
    said = " ".join(response.text.split())[:200]
    return False, f"{where} HTTP {response.status_code}" + (f": {said}" if said else "")


@dataclass
class _Due:
    next_at: datetime
    failures: int = 0


class Resends:
    """When each (alert, Alertmanager receiver) pair is posted next, with backoff on failure."""

    def __init__(self) -> None:
        self._due: dict[tuple[int, str], _Due] = {}
        self._labels: dict[int, dict[str, str]] = {}

    def labels(self, delivery: Delivery, fleet: str) -> dict[str, str]:
        """The alert's labels as first posted (computed now if never posted by this process)."""
        if delivery.alert_id not in self._labels and len(self._labels) >= _REMEMBERED:
            for alert_id in sorted(self._labels)[: _REMEMBERED // 2]:
                del self._labels[alert_id]
        return self._labels.setdefault(delivery.alert_id, alert_labels(delivery, fleet))

    def refresh(self, standing: list[Standing]) -> list[Standing]:
        """Track exactly the pairs in ``standing``; return those due at their ``delivery.at``."""
        keys = {_key(s.delivery) for s in standing}
        for key in set(self._due) - keys:
            del self._due[key]
        due = []
        for s in standing:
            key = _key(s.delivery)
            if key not in self._due:
                failures = 0 if s.last_ok else 1
                self._due[key] = _Due(s.last_at + _wait(s.delivery.receiver, failures), failures)
            if self._due[key].next_at <= s.delivery.at:
                due.append(s)
        return due

    def posted(self, delivery: Delivery, ok: bool, now: datetime) -> int:
        """Schedule the pair's next post after one that succeeded or not; return failures before.

        The count returned is how many posts in a row had failed before this one.
        """
        entry = self._due.setdefault(_key(delivery), _Due(now))
        before = entry.failures
        entry.failures = 0 if ok else before + 1
        entry.next_at = now + _wait(delivery.receiver, entry.failures)
        return before

    def forget(self, delivery: Delivery) -> None:
        """The pair's resolution was taken: nothing more to post."""
        self._due.pop(_key(delivery), None)
        self._labels.pop(delivery.alert_id, None)


def _key(delivery: Delivery) -> tuple[int, str]:
    return delivery.alert_id, delivery.receiver.name


def _wait(receiver: Receiver, failures: int) -> timedelta:
    if failures == 0:
        return timedelta(seconds=receiver.resend_s)
    backoff = FIRST_RETRY_S * 2 ** min(failures - 1, 16)
    return timedelta(seconds=min(backoff, receiver.resend_s))


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
