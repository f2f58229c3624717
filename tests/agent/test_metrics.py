"""Scraping a service's metrics: parsing, delta and rate, and the ``scrape`` alert.

The endpoint is a real HTTP server on a free port (:class:`MetricsServer`)
whose answer the tests change as they go; the text is parsed by
prometheus-client's parser, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from knightwatch.agent.metrics import (
    RECOVERY_SCRAPES,
    SCRAPE_RULE,
    MetricsFormatError,
    MetricsHistory,
    ScrapeHealth,
    Scraper,
    Snapshot,
    parse_metrics,
    scrape_timeout,
)
from knightwatch.clock import SystemClock, VirtualClock
from knightwatch.protocol.safety import AlertEvent
from tests.agent.conftest import run

GOOD = """\
# HELP orders_total Orders routed.
# TYPE orders_total counter
orders_total{venue="NYSE"} 3
orders_total{venue="BATS"} 4
# TYPE queue_depth gauge
queue_depth 7.5
"""
MALFORMED = "<html>this is not { prometheus\n"
NOW = datetime(2012, 8, 1, 13, 30, tzinfo=UTC)


class MetricsServer:
    """A real HTTP server answering GET /metrics with ``body`` and ``status``."""

    def __init__(self) -> None:
        self.body = GOOD
        self.status = 200
        self.delay_s = 0.0
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits += 1
                time.sleep(server.delay_s)
                data = server.body.encode()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(server.status if self.path == "/metrics" else 404)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/metrics"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __enter__(self) -> MetricsServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()


@pytest.fixture
def metrics_server() -> Iterator[MetricsServer]:
    """A running metrics endpoint serving GOOD."""
    with MetricsServer() as server:
        yield server


class TestParse:
    def test_sums_each_sample_name_over_its_labels(self) -> None:
        """Every sample name gets one value: the sum over its label sets."""
        values, counters = parse_metrics(GOOD)
        assert values == {"orders_total": 7.0, "queue_depth": 7.5}
        assert counters == {"orders_total"}

    def test_histograms_give_one_value_per_sample_name(self) -> None:
        """A histogram's _bucket, _sum and _count are separate names."""
        text = (
            "# TYPE latency histogram\n"
            'latency_bucket{le="1"} 2\nlatency_bucket{le="+Inf"} 3\n'
            "latency_sum 4.5\nlatency_count 3\n"
        )
        values, _ = parse_metrics(text)
        assert values == {"latency_bucket": 5.0, "latency_sum": 4.5, "latency_count": 3.0}

    def test_nan_samples_are_left_out(self) -> None:
        """A NaN sample is no data, not a number to compare with."""
        values, _ = parse_metrics("a NaN\nb 1\n")
        assert values == {"b": 1.0}

    @pytest.mark.parametrize("text", [MALFORMED, "x{a=1} 2\n", "x one\n"])
    def test_malformed_text_is_refused(self, text: str) -> None:
        """Text that is not Prometheus exposition raises MetricsFormatError."""
        with pytest.raises(MetricsFormatError, match="not Prometheus text"):
            parse_metrics(text)

    def test_timeout_is_bounded_by_the_interval(self) -> None:
        """A scrape may take ten intervals, never less than 0.5 s nor more than 10 s."""
        assert scrape_timeout(0.1) == 1.0
        assert scrape_timeout(0.01) == 0.5
        assert scrape_timeout(60) == 10.0


class TestHistory:
    def test_first_scrape_has_no_change(self) -> None:
        """The first snapshot offers values only."""
        snapshot = MetricsHistory().advance({"a": 1.0}, frozenset(), at=10.0)
        assert snapshot == Snapshot(values={"a": 1.0})

    def test_delta_and_rate_between_scrapes(self) -> None:
        """delta is the change since the last scrape; rate is that change per second."""
        history = MetricsHistory()
        history.advance({"a": 10.0, "g": 5.0}, frozenset({"a"}), at=100.0)
        snapshot = history.advance({"a": 16.0, "g": 4.0}, frozenset({"a"}), at=100.5)
        assert not snapshot.first
        assert snapshot.delta == {"a": 6.0, "g": -1.0}
        assert snapshot.rate == {"a": 12.0, "g": -2.0}

    def test_a_counter_that_went_down_was_reset(self) -> None:
        """A counter lower than before restarted from zero: its change is its new value."""
        history = MetricsHistory()
        history.advance({"a": 100.0}, frozenset({"a"}), at=0.0)
        assert history.advance({"a": 3.0}, frozenset({"a"}), at=1.0).delta == {"a": 3.0}

    def test_new_counters_count_from_zero_new_gauges_have_no_change(self) -> None:
        """A counter seen for the first time grew from 0; a new gauge has no change yet."""
        history = MetricsHistory()
        history.advance({}, frozenset(), at=0.0)
        snapshot = history.advance({"c": 4.0, "g": 9.0}, frozenset({"c"}), at=2.0)
        assert snapshot.delta == {"c": 4.0}
        assert snapshot.rate == {"c": 2.0}

    def test_reset_forgets_the_last_scrape(self) -> None:
        """After reset the next snapshot is a first one again."""
        history = MetricsHistory()
        history.advance({"a": 1.0}, frozenset(), at=0.0)
        history.reset()
        assert history.advance({"a": 2.0}, frozenset(), at=1.0).first


class TestScrapeHealth:
    def test_one_alert_while_scrapes_keep_failing(self) -> None:
        """The first failure raises the scrape alert; further failures add nothing."""
        health = ScrapeHealth("http://svc/metrics")
        alert = health.failed("HTTP 500", NOW)
        assert alert is not None
        assert (alert.rule, alert.severity, alert.resolved) == (SCRAPE_RULE, "warning", False)
        assert "HTTP 500" in alert.summary
        assert health.failed("HTTP 500", NOW) is None

    def test_resolved_after_scrapes_work_again(self) -> None:
        """The alert resolves after RECOVERY_SCRAPES good scrapes in a row."""
        health = ScrapeHealth("http://svc/metrics")
        health.failed("timed out", NOW)
        health.failed("timed out", NOW)
        results = [health.succeeded(NOW) for _ in range(RECOVERY_SCRAPES)]
        assert results[:-1] == [None] * (RECOVERY_SCRAPES - 1)
        resolved = results[-1]
        assert resolved is not None and resolved.resolved
        assert resolved.count == 2
        assert health.succeeded(NOW) is None

    def test_a_failure_during_recovery_starts_the_count_again(self) -> None:
        """Good scrapes must be consecutive to resolve."""
        health = ScrapeHealth("http://svc/metrics")
        health.failed("x", NOW)
        for _ in range(RECOVERY_SCRAPES - 1):
            health.succeeded(NOW)
        assert health.failed("x", NOW) is None  # still the same episode
        assert all(health.succeeded(NOW) is None for _ in range(RECOVERY_SCRAPES - 1))
        assert health.succeeded(NOW) is not None


class TestScraper:
    def test_scrapes_a_real_endpoint(self, metrics_server: MetricsServer) -> None:
        """Two scrapes of a live endpoint give values, then delta and rate."""
        clock = VirtualClock()
        scraper = Scraper(metrics_server.url, 0.1, clock=clock)

        async def twice() -> tuple[Snapshot, Snapshot]:
            import httpx  # noqa: PLC0415

            async with httpx.AsyncClient() as client:
                first = await scraper.scrape(client)
                metrics_server.body = GOOD.replace('BATS"} 4', 'BATS"} 6')
                clock.advance(2.0)
                return first, await scraper.scrape(client)

        first, second = run(twice())
        assert first.values["orders_total"] == 7.0 and first.first
        assert second.delta == {"orders_total": 2.0, "queue_depth": 0.0}
        assert second.rate["orders_total"] == 1.0

    @pytest.mark.parametrize(
        ("body", "status", "reason"),
        [(MALFORMED, 200, "not Prometheus text"), (GOOD, 503, "HTTP 503")],
    )
    def test_a_bad_answer_is_one_alert_then_resolved(
        self, metrics_server: MetricsServer, body: str, status: int, reason: str
    ) -> None:
        """Malformed text or a non-200 answer raises one scrape alert; good scrapes resolve it."""
        metrics_server.body, metrics_server.status = body, status
        scraper = Scraper(metrics_server.url, 0.01, clock=SystemClock())
        alerts, snapshots = scrape_until(scraper, lambda a, _: bool(a) and metrics_server.hits >= 5)
        assert len(alerts) == 1 and reason in alerts[0].summary
        assert snapshots == []
        metrics_server.body, metrics_server.status = GOOD, 200
        alerts, snapshots = scrape_until(scraper, lambda a, _: any(x.resolved for x in a))
        assert [a.resolved for a in alerts] == [True]
        assert snapshots  # metrics flow again

    def test_an_endpoint_that_is_down_is_an_alert(self) -> None:
        """Nothing listening on the port is a failed scrape, not a crash."""
        with MetricsServer() as server:
            url = server.url
        alerts, _ = scrape_until(Scraper(url, 0.01, clock=SystemClock()), lambda a, _: bool(a))
        assert alerts[0].rule == SCRAPE_RULE

    def test_a_slow_endpoint_is_a_timed_out_scrape(self, metrics_server: MetricsServer) -> None:
        """An answer slower than the scrape timeout is a failed scrape."""
        metrics_server.delay_s = 2.0
        scraper = Scraper(metrics_server.url, 0.01, clock=SystemClock(), timeout_s=0.1)
        alerts, _ = scrape_until(scraper, lambda a, _: bool(a))
        assert "timed out" in alerts[0].summary
        metrics_server.delay_s = 0.0

    def test_nothing_is_scraped_while_inactive(self, metrics_server: MetricsServer) -> None:
        """While the service is not running the endpoint is left alone."""
        scraper = Scraper(metrics_server.url, 0.01, clock=SystemClock())
        calls = 0

        def inactive() -> bool:
            nonlocal calls
            calls += 1
            return False

        scrape_until(scraper, lambda _a, _s: calls >= 5, active=inactive)
        assert metrics_server.hits == 0


Done = Callable[[list[AlertEvent], list[Snapshot]], bool]


def scrape_until(
    scraper: Scraper, done: Done, *, active: Callable[[], bool] = lambda: True
) -> tuple[list[AlertEvent], list[Snapshot]]:
    """Run ``scraper`` until ``done(alerts, snapshots)``; return what it produced."""
    alerts: list[AlertEvent] = []
    snapshots: list[Snapshot] = []

    async def on_snapshot(snapshot: Snapshot) -> None:
        snapshots.append(snapshot)

    async def until() -> None:
        task = asyncio.create_task(scraper.run(on_snapshot, alerts.append, active=active))
        try:
            async with asyncio.timeout(60):
                while not done(alerts, snapshots):
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run(until())
    return alerts, snapshots
