"""Deliver alert notifications: Alertmanager webhook JSON, POSTed or piped to a command,
or the alert itself posted into an Alertmanager (:mod:`knightwatch.server.alertmanager`).

Every notification is the JSON body Prometheus Alertmanager's ``webhook_config``
sends (``version`` "4", one alert per message), so existing receivers — chat
bridges, pagers, ticketing hooks — work unchanged. A command receiver gets
the same JSON on stdin, a small environment (no server secrets) and a
timeout; its exit status is what is recorded.

:class:`AlertNotifier` runs beside the orchestrator in the server's event
loop: it claims what is due (one short transaction that leases each alert),
then delivers each notification in its own task with no transaction open and
records its outcome as soon as it is known. The next round does not wait for
a slow or hanging receiver: a new alert is announced at once. Each round
also re-posts what Alertmanager receivers hold (:func:`standing_deliveries`)
when due; posts about one alert to one receiver never overlap, so a late
"firing" cannot land after its resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import httpx

from knightwatch.clock import Clock
from knightwatch.control.routing import (
    AlertRouting,
    Delivery,
    Standing,
    claim_due,
    record_delivery,
    record_resend,
    standing_deliveries,
)
from knightwatch.server.alertmanager import Resends, post_alert, postable_alert
from knightwatch.server.settings import ServerSettings
from knightwatch.store import Alert, Database
from knightwatch.vocabulary import AlertState

__all__ = ["AlertNotifier", "alertmanager_payload"]

log = logging.getLogger("knightwatch.alerts")
INTERVAL_S = 0.5  # escalation is measured in seconds or minutes; keep the store quiet
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt for an alert still firing


def alertmanager_payload(delivery: Delivery, external_url: str) -> dict[str, Any]:
    """The Alertmanager v4 webhook message announcing ``delivery``'s alert."""
    alert = delivery.alert
    labels = {
        "alertname": alert["rule"],
        "severity": alert["severity"],
        "fingerprint": alert["fingerprint"],
    }
    if alert["node"]:
        labels["node"] = alert["node"]
    annotations = {
        "summary": alert["summary"],
        "description": alert["detail"],
        "count": str(alert["count"]),
        "acknowledge": f"knightwatch alerts ack {alert['id']}",
    }
    resolved = delivery.status == "resolved" and alert["resolved_at"] is not None
    group = {k: labels[k] for k in ("alertname", "node") if k in labels}
    return {
        "version": "4",
        "groupKey": "{}:{" + ", ".join(f"{k}={json.dumps(v)}" for k, v in group.items()) + "}",
        "truncatedAlerts": 0,
        "status": delivery.status,
        "receiver": delivery.receiver.name,
        "groupLabels": group,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [
            {
                "status": delivery.status,
                "labels": labels,
                "annotations": annotations,
                "startsAt": _rfc3339(alert["first_at"]),
                "endsAt": _rfc3339(alert["resolved_at"]) if resolved else ZERO_TIME,
                "generatorURL": f"{external_url}/api/v1/alerts/{alert['id']}",
                "fingerprint": hashlib.sha256(alert["fingerprint"].encode()).hexdigest()[:16],
            }
        ],
    }


class AlertNotifier:
    """Sends due notifications to the route's receivers and records each delivery."""

    def __init__(
        self, db: Database, clock: Clock, routing: AlertRouting, external_url: str
    ) -> None:
        self._db = db
        self._clock = clock
        self._routing = routing
        self._external_url = external_url.rstrip("/")
        self._http: httpx.AsyncClient | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._resends = Resends()
        self._posting: dict[tuple[int, str], asyncio.Lock] = {}
        self._resolving: set[int] = set()
        """Alerts whose resolution an Alertmanager did not take yet (retried for a while)."""

    @classmethod
    def for_settings(cls, db: Database, clock: Clock, settings: ServerSettings) -> AlertNotifier:
        """A notifier for the server's ``[alerts]`` settings."""
        url = settings.alerts.external_url or settings.base_url
        return cls(db, clock, settings.alerts, url)

    async def run_forever(self, interval: float = INTERVAL_S) -> None:
        """Deliver what is due every ``interval`` seconds until cancelled."""
        async with httpx.AsyncClient(follow_redirects=False) as client:
            self._http = client
            try:
                while True:
                    await asyncio.sleep(interval)
                    try:
                        await self.tick()
                    except Exception:
                        log.exception("alert notifier tick failed")
            finally:  # an unrecorded delivery's lease runs out: it is sent again later
                for task in list(self._in_flight):
                    task.cancel()

    async def tick(self) -> int:
        """Claim everything due now and start delivering it; return how many were claimed.

        Re-posts due to Alertmanager receivers are started too (not counted).
        """
        if not self._routing.chain:
            return 0
        deliveries = await asyncio.to_thread(self._claim)
        for delivery in deliveries:
            self._start(self._deliver_and_record(delivery))
        if any(r.kind == "alertmanager" for r in self._routing.receivers):
            asked = set(self._resolving)
            standing = await asyncio.to_thread(self._standing, tuple(asked))
            self._resolving -= asked - {s.delivery.alert_id for s in standing}
            keys = {(s.delivery.alert_id, s.delivery.receiver.name) for s in standing}
            for key in [k for k, lock in self._posting.items() if not lock.locked()]:
                if key not in keys:
                    del self._posting[key]
            for due in self._resends.refresh(standing):
                if not self._lock(due.delivery).locked():
                    self._start(self._resend(due))
        return len(deliveries)

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def settle(self) -> None:
        """Wait until every delivery started so far is made and recorded."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _deliver_and_record(self, delivery: Delivery) -> None:
        try:
            if delivery.receiver.kind == "alertmanager":
                async with self._lock(delivery):
                    ok, detail = await self._deliver(delivery)
                    self._posted(delivery, ok)
                    await asyncio.to_thread(self._record, delivery, ok, detail)
            else:
                ok, detail = await self._deliver(delivery)
                await asyncio.to_thread(self._record, delivery, ok, detail)
        except Exception:
            log.exception(
                "delivery of alert %d to %s failed", delivery.alert_id, delivery.receiver.name
            )

    async def _resend(self, standing: Standing) -> None:
        """Post an Alertmanager's copy again; record a failure and a recovery, not each success."""
        delivery = standing.delivery
        try:
            async with self._lock(delivery):
                if not await asyncio.to_thread(self._still_due, delivery):
                    return
                delivery = dataclasses.replace(delivery, at=self._clock.now())
                ok, detail = await self._deliver(delivery, log_success=False)
                failed_before = self._posted(delivery, ok)
                if not ok and failed_before == 0:
                    detail += " (retrying with backoff)"
                elif ok and failed_before:
                    detail += f" (after {failed_before} failed attempt(s))"
                else:
                    return
                await asyncio.to_thread(self._record_resend, delivery, ok, detail)
        except Exception:
            log.exception(
                "re-post of alert %d to %s failed", delivery.alert_id, delivery.receiver.name
            )

    def _lock(self, delivery: Delivery) -> asyncio.Lock:
        return self._posting.setdefault((delivery.alert_id, delivery.receiver.name), asyncio.Lock())

    def _posted(self, delivery: Delivery, ok: bool) -> int:
        """Schedule the next post of this pair; forget it once its resolution was taken."""
        failed_before = self._resends.posted(delivery, ok, self._clock.now())
        if delivery.status == "resolved" and not ok:
            self._resolving.add(delivery.alert_id)
        elif delivery.status == "resolved":
            self._resends.forget(delivery)
            self._posting.pop((delivery.alert_id, delivery.receiver.name), None)
        return failed_before

    def _claim(self) -> list[Delivery]:
        with self._db.session() as session:
            return claim_due(session, self._routing, self._clock.now())

    def _standing(self, resolving: tuple[int, ...]) -> list[Standing]:
        with self._db.session() as session:
            return standing_deliveries(session, self._routing, self._clock.now(), resolving)

    def _still_due(self, delivery: Delivery) -> bool:
        """A firing re-post only while the alert is open; a resolution re-post only if resolved."""
        with self._db.session() as session:
            alert = session.get(Alert, delivery.alert_id)
            return alert is not None and (alert.state == AlertState.RESOLVED) == (
                delivery.status == "resolved"
            )

    def _record_resend(self, delivery: Delivery, ok: bool, detail: str) -> None:
        with self._db.session() as session:
            record_resend(session, delivery, ok=ok, detail=detail)

    def _record(self, delivery: Delivery, ok: bool, detail: str) -> None:
        with self._db.session() as session:
            record_delivery(session, delivery, ok=ok, detail=detail, routing=self._routing)

    async def _deliver(self, delivery: Delivery, *, log_success: bool = True) -> tuple[bool, str]:
        receiver = delivery.receiver
        if receiver.alertmanager is not None:
            labels = self._resends.labels(delivery, self._routing.fleet)
            alert = postable_alert(delivery, labels, self._external_url)
            client = self._http or httpx.AsyncClient(follow_redirects=False)
            try:
                ok, detail = await post_alert(client, receiver, alert)
            finally:
                if client is not self._http:
                    await client.aclose()
        elif receiver.webhook is not None:
            payload = alertmanager_payload(delivery, self._external_url)
            body = json.dumps(payload, sort_keys=True).encode()
            ok, detail = await self._post(receiver.webhook, body, receiver.timeout_s)
        else:
            assert receiver.command is not None
            payload = alertmanager_payload(delivery, self._external_url)
            body = json.dumps(payload, sort_keys=True).encode()
            ok, detail = await _run(receiver.command, body, receiver.timeout_s, _env(delivery))
        log.log(
            logging.WARNING if not ok else logging.INFO if log_success else logging.DEBUG,
            "alert %d %s → %s (level %d): %s",
            delivery.alert_id,
            delivery.status,
            receiver.name,
            delivery.level,
            detail,
        )
        return ok, detail

    async def _post(self, url: str, body: bytes, timeout: float) -> tuple[bool, str]:
        client = self._http or httpx.AsyncClient(follow_redirects=False)
        try:
            response = await client.post(
                url, content=body, headers={"Content-Type": "application/json"}, timeout=timeout
            )
        except httpx.HTTPError as exc:  # the URL may carry a token: never echo it
            return False, f"{type(exc).__name__}: {str(exc).replace(url, '<webhook>')}"[:300]
        finally:
            if client is not self._http:
                await client.aclose()
        return response.is_success, f"HTTP {response.status_code}"


async def _run(
    argv: tuple[str, ...], body: bytes, timeout: float, env: dict[str, str]
) -> tuple[bool, str]:
    """Run a command receiver with ``body`` on stdin; (exit 0?, what happened)."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return False, f"cannot run {argv[0]}: {exc.strerror or exc}"
    try:
        _, stderr = await asyncio.wait_for(process.communicate(body), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        return False, f"timed out after {timeout:g} s"
    if process.returncode == 0:
        return True, "exit 0"
    last = stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
    return False, f"exit {process.returncode}" + (f": {last[0][:200]}" if last else "")


def _env(delivery: Delivery) -> dict[str, str]:
    """What a command receiver sees: PATH, HOME, a locale and the alert — no server secrets."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"}
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    env["KNIGHTWATCH_ALERT_ID"] = str(delivery.alert_id)
    env["KNIGHTWATCH_ALERT_STATUS"] = delivery.status
    env["KNIGHTWATCH_RECEIVER"] = delivery.receiver.name
    return env


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
