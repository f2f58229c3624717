"""``GET /metrics``: the control plane's own figures in the Prometheus text format.

No authentication, as Prometheus scrapers expect; only counts, ages and
node names are exposed (no names of releases, no findings). A custom
collector on a registry of its own reads the store at scrape time, so every
replica reports the same figures and nothing is kept in memory between
scrapes. Ages are counted from when the condition began, as recorded where
it changed, so an alerting rule on them survives a Prometheus restart;
``examples/prometheus/`` has rules over these figures.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from knightwatch.api.plane import Plane
from knightwatch.clock import Clock
from knightwatch.control.alerts import ALERT_STATES, SEVERITY_RANK
from knightwatch.control.fleet_status import FleetState
from knightwatch.control.releases import ReleaseCatalog
from knightwatch.control.statistics import FleetStatistics, fleet_statistics
from knightwatch.server.hub import AgentHub
from knightwatch.store import Database
from knightwatch.vocabulary import TERMINAL_STATES, DeploymentKind

__all__ = [
    "TIME_TO_HALT_BUCKETS",
    "FleetCollector",
    "SessionCollector",
    "UploadCollector",
    "router",
]

router = APIRouter()
TIME_TO_HALT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_KINDS: tuple[str, ...] = tuple(DeploymentKind)


class FleetCollector(Collector):
    """Reads :func:`fleet_statistics` from the store at every scrape."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        """Yield every knightwatch_* family."""
        with self._db.reading() as session:  # a scrape writes nothing
            stats = fleet_statistics(session, self._clock.now())
        yield _fleet_state(stats)
        yield from _ages(stats)
        yield _condition_ages(stats)
        yield _nodes(stats)
        yield from _per_node(stats)
        yield from _deployments(stats)
        yield GaugeMetricFamily(
            "knightwatch_halts_active", "Kill-switch halts not lifted yet.", stats.halts_active
        )
        yield _time_to_halt(stats)
        yield _alerts(stats)


class UploadCollector(Collector):
    """Release uploads of this replica: staged now, and deleted as abandoned since it started."""

    def __init__(self, catalog: ReleaseCatalog) -> None:
        self._catalog = catalog

    def collect(self) -> Iterator[Metric]:
        """Yield knightwatch_uploads_pending and knightwatch_uploads_expired_total."""
        yield GaugeMetricFamily(
            "knightwatch_uploads_pending",
            "Release uploads staged and not yet committed, aborted or expired.",
            self._catalog.pending_uploads(),
        )
        yield CounterMetricFamily(
            "knightwatch_uploads_expired",
            "Abandoned release uploads deleted since this control plane started.",
            self._catalog.expired_total,
        )


class SessionCollector(Collector):
    """What this replica's agent sessions shed: stale heartbeats dropped unchecked."""

    def __init__(self, hub: AgentHub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        """Yield knightwatch_heartbeats_dropped_total."""
        yield CounterMetricFamily(
            "knightwatch_heartbeats_dropped",
            "Agent heartbeats this replica dropped unchecked because a later report of the same"
            " node had already arrived: a rising rate means the control plane is behind.",
            self._hub.heartbeats_dropped,
        )


@router.get("/metrics", include_in_schema=False)
def metrics(plane: Plane) -> Response:
    """The Prometheus text exposition of the control plane's figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(plane.db, plane.clock))
    registry.register(UploadCollector(plane.catalog))
    registry.register(SessionCollector(plane.hub))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _fleet_state(stats: FleetStatistics) -> Metric:
    family = GaugeMetricFamily(
        "knightwatch_fleet_state", "1 for the fleet's current state, 0 otherwise.", labels=["state"]
    )
    for state in FleetState:
        family.add_metric([state.value], 1.0 if state == stats.state else 0.0)
    return family


def _ages(stats: FleetStatistics) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "knightwatch_fleet_mixed_seconds",
        "Seconds since the fleet's nodes began to run different releases (MIXED); 0 while "
        "they run one.",
        stats.mixed_for_s or 0.0,
    )
    yield GaugeMetricFamily(
        "knightwatch_fleet_drifted_seconds",
        "Seconds since the oldest drift still present on a node began; 0 without drift.",
        stats.drifted_for_s or 0.0,
    )


def _per_node(stats: FleetStatistics) -> Iterator[Metric]:
    figures = stats.node_figures
    yield GaugeMetricFamily(
        "knightwatch_agents_connected",
        "Node agents connected to the control plane now.",
        sum(1 for n in figures if n.connected),
    )
    yield GaugeMetricFamily(
        "knightwatch_nodes_behind",
        "Enrolled nodes not running the release they were told to run (left behind).",
        sum(1 for n in figures if n.behind),
    )
    connected = GaugeMetricFamily(
        "knightwatch_node_connected",
        "1 while the node's agent is connected, 0 otherwise.",
        labels=["node", "group"],
    )
    age = GaugeMetricFamily(
        "knightwatch_node_last_report_age_seconds",
        "Seconds since the node's agent last reported (absent for a node that never did).",
        labels=["node", "group"],
    )
    for node in figures:
        connected.add_metric([node.name, node.group], 1.0 if node.connected else 0.0)
        if node.last_report_age_s is not None:
            age.add_metric([node.name, node.group], max(0.0, node.last_report_age_s))
    yield connected
    yield age


def _condition_ages(stats: FleetStatistics) -> Metric:
    family = GaugeMetricFamily(
        "knightwatch_fleet_condition_seconds",
        "Seconds since each present condition (mixed, drifted, halted) began, as recorded then.",
        labels=["condition"],
    )
    for condition, age in sorted(stats.condition_ages_s.items()):
        family.add_metric([condition], age)
    return family


def _nodes(stats: FleetStatistics) -> Metric:
    family = GaugeMetricFamily(
        "knightwatch_nodes",
        "Enrolled nodes by drift state, connection and halt "
        "(drift_state and halted are unknown for a node whose agent is gone).",
        labels=["drift_state", "connected", "halted"],
    )
    for (drift, connected, halted), count in sorted(stats.nodes.items(), key=str):
        shown = "unknown" if halted is None else str(halted).lower()
        family.add_metric([drift, str(connected).lower(), shown], count)
    return family


def _deployments(stats: FleetStatistics) -> Iterator[Metric]:
    finished = CounterMetricFamily(
        "knightwatch_deployments",
        "Deployments that ended, by kind and final state.",
        labels=["kind", "state"],
    )
    running = GaugeMetricFamily(
        "knightwatch_deployments_active",
        "Deployments under way, by kind and state.",
        labels=["kind", "state"],
    )
    # every ended (kind, state) from zero, so a rule's increase() sees the first failure too
    counts = {(kind, str(state)): 0 for kind in _KINDS for state in sorted(TERMINAL_STATES)}
    counts.update(stats.deployments)
    for (kind, state), count in sorted(counts.items()):
        (finished if state in TERMINAL_STATES else running).add_metric([kind, state], count)
    yield finished
    yield running


def _time_to_halt(stats: FleetStatistics) -> Metric:
    times = stats.times_to_halt_s
    buckets = [(_le(b), float(sum(1 for t in times if t <= b))) for b in TIME_TO_HALT_BUCKETS]
    return HistogramMetricFamily(
        "knightwatch_time_to_halt_seconds",
        "Seconds from a halt's issue to each node's service being gone.",
        buckets=[*buckets, ("+Inf", float(len(times)))],
        sum_value=sum(times),
    )


def _alerts(stats: FleetStatistics) -> Metric:
    family = GaugeMetricFamily(
        "knightwatch_alerts", "Alerts by state and severity.", labels=["state", "severity"]
    )
    for state in ALERT_STATES:
        for severity in SEVERITY_RANK:
            family.add_metric([state, severity], stats.alerts.get((state, severity), 0))
    return family


def _le(bound: float) -> str:
    return repr(bound)
