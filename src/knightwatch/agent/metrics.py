"""Scraping the service's Prometheus endpoint, for the guards (P6: nothing fails silently).

The agent GETs the release's ``[service.metrics]`` endpoint every
``scrape_interval_s`` (default 0.1 s) and parses the text with
prometheus-client's parser. Each sample name (``smars_orders_total``,
``latency_seconds_bucket``, …) is summed over its label sets, giving one
number per name; a sample that is NaN is left out. Each scrape is offered
as a :class:`Snapshot`: the values, each value's change since the last
scrape (``delta``) and that change per second (``rate``). A counter that
went down was reset (the service restarted), so its change is its new value.
The first scrape has no ``delta`` or ``rate``.

A scrape that fails — no answer, a status other than 200, a body that is not
Prometheus text — is itself an alert (rule ``scrape``, warning), raised once
when scrapes start failing and resolved once they have worked
:data:`RECOVERY_SCRAPES` times in a row. The agent keeps running either way.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import httpx
from prometheus_client.parser import text_string_to_metric_families

from knightwatch.agent.checks import probe_client
from knightwatch.agent.events import event
from knightwatch.clock import Clock
from knightwatch.protocol.safety import AlertEvent

__all__ = [
    "RECOVERY_SCRAPES",
    "SCRAPE_RULE",
    "MetricsFormatError",
    "MetricsHistory",
    "ScrapeHealth",
    "Scraper",
    "Snapshot",
    "parse_metrics",
    "scrape_timeout",
]

SCRAPE_RULE = "scrape"
RECOVERY_SCRAPES = 3
MAX_BODY_BYTES = 8 * 1024 * 1024


class MetricsFormatError(ValueError):
    """The endpoint answered with something that is not Prometheus text exposition."""


def scrape_timeout(interval_s: float) -> float:
    """How long one scrape may take: ten intervals, at least 0.5 s, at most 10 s."""
    return min(10.0, max(0.5, 10 * interval_s))


def parse_metrics(text: str) -> tuple[dict[str, float], frozenset[str]]:
    """Return every sample name's value summed over its labels, and which names are counters.

    Raise :class:`MetricsFormatError` if ``text`` is not Prometheus text.
    """
    values: dict[str, float] = {}
    counters: set[str] = set()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if family.type == "counter" and sample.name.endswith("_total"):
                    counters.add(sample.name)
                if math.isnan(sample.value):
                    continue
                values[sample.name] = values.get(sample.name, 0.0) + float(sample.value)
    except Exception as exc:  # a foreign parser: any error means malformed text
        raise MetricsFormatError(f"not Prometheus text exposition: {exc}") from None
    return values, frozenset(counters)


@dataclass(frozen=True)
class Snapshot:
    """One scrape: each name's value, its change since the last scrape, and per second."""

    values: Mapping[str, float]
    delta: Mapping[str, float] = field(default_factory=dict)
    rate: Mapping[str, float] = field(default_factory=dict)
    first: bool = True
    """True for the first scrape of a run: ``delta`` and ``rate`` are empty."""


class MetricsHistory:
    """Turns successive scrapes into snapshots with ``delta`` and ``rate``."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[str, float]] | None = None

    def reset(self) -> None:
        """Forget the previous scrape (the service restarted or paused)."""
        self._last = None

    def advance(self, values: dict[str, float], counters: frozenset[str], at: float) -> Snapshot:
        """Return the snapshot of a scrape taken at monotonic time ``at``."""
        last, self._last = self._last, (at, values)
        if last is None:
            return Snapshot(values=values)
        elapsed = max(at - last[0], 1e-9)
        delta: dict[str, float] = {}
        for name, value in values.items():
            before = last[1].get(name)
            if before is None and name not in counters:
                continue  # a gauge seen for the first time has no change yet
            before = before or 0.0
            delta[name] = value if name in counters and value < before else value - before
        rate = {name: change / elapsed for name, change in delta.items()}
        return Snapshot(values=values, delta=delta, rate=rate, first=False)


class ScrapeHealth:
    """Raises the ``scrape`` alert when scrapes start failing and resolves it when they work."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.failing_since: datetime | None = None
        self._failures = 0
        self._successes = 0
        self._last_reason = ""

    def failed(self, reason: str, now: datetime) -> AlertEvent | None:
        """Record a failed scrape; return the alert if scrapes just started failing."""
        self._successes = 0
        self._failures += 1
        self._last_reason = reason
        if self.failing_since is not None:
            return None
        self.failing_since = now
        return AlertEvent(
            rule=SCRAPE_RULE,
            severity="warning",
            summary=f"metrics scrape of {self.endpoint} failed: {reason}"[:4096],
            detail="guards over the service's metrics cannot be evaluated until scrapes work again",
            first_at=now,
            last_at=now,
        )

    def succeeded(self, now: datetime) -> AlertEvent | None:
        """Record a good scrape; return the resolution once scrapes work again."""
        self._successes += 1
        if self.failing_since is None or self._successes < RECOVERY_SCRAPES:
            return None
        since, failures = self.failing_since, self._failures
        self.failing_since, self._failures = None, 0
        return AlertEvent(
            rule=SCRAPE_RULE,
            severity="warning",
            summary=f"metrics scrapes of {self.endpoint} work again",
            detail=f"{failures} scrapes failed; the last: {self._last_reason}"[:4096],
            count=max(1, failures),
            first_at=since,
            last_at=now,
            resolved=True,
        )


class Scraper:
    """Scrapes one endpoint on a fixed interval while the service runs."""

    def __init__(
        self,
        endpoint: str,
        interval_s: float,
        *,
        clock: Clock,
        timeout_s: float | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.interval_s = interval_s
        self.timeout_s = timeout_s if timeout_s is not None else scrape_timeout(interval_s)
        self.history = MetricsHistory()
        self.health = ScrapeHealth(endpoint)
        self._clock = clock

    async def scrape(self, client: httpx.AsyncClient) -> Snapshot:
        """Scrape once; raise MetricsFormatError, httpx.HTTPError or TimeoutError on failure."""
        body = bytearray()
        async with (
            asyncio.timeout(self.timeout_s),
            client.stream("GET", self.endpoint, timeout=self.timeout_s) as answer,
        ):
            if answer.status_code != 200:
                raise MetricsFormatError(f"HTTP {answer.status_code}")
            async for chunk in answer.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise MetricsFormatError(f"the answer is larger than {MAX_BODY_BYTES} bytes")
        values, counters = parse_metrics(body.decode("utf-8", "replace"))
        return self.history.advance(values, counters, self._clock.monotonic())

    async def run(
        self,
        on_snapshot: Callable[[Snapshot], Awaitable[None]],
        on_alert: Callable[[AlertEvent], None],
        *,
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        """Scrape forever; pass each snapshot to ``on_snapshot`` and each alert to ``on_alert``.

        While ``active()`` is false (the service is not running: starting,
        stopped, halted) nothing is scraped and the history is forgotten.
        """
        async with probe_client() as client:
            while True:
                started = self._clock.monotonic()
                if not active():
                    self.history.reset()
                else:
                    await self._once(client, on_snapshot, on_alert)
                spent = self._clock.monotonic() - started
                await asyncio.sleep(max(0.0, self.interval_s - spent))

    async def _once(
        self,
        client: httpx.AsyncClient,
        on_snapshot: Callable[[Snapshot], Awaitable[None]],
        on_alert: Callable[[AlertEvent], None],
    ) -> None:
        try:
            snapshot = await self.scrape(client)
        except (httpx.HTTPError, MetricsFormatError, TimeoutError) as exc:
            self.history.reset()
            alert = self.health.failed(_describe(exc), self._clock.now())
            if alert is not None:
                event("scrape-failing", endpoint=self.endpoint, reason=alert.summary)
                on_alert(alert)
            return
        resolved = self.health.succeeded(self._clock.now())
        if resolved is not None:
            event("scrape-recovered", endpoint=self.endpoint, failures=resolved.count)
            on_alert(resolved)
        await on_snapshot(snapshot)


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timed out"
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}"[:500] if str(exc) else type(exc).__name__
    return str(exc)[:500]
