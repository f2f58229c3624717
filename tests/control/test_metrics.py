"""``/metrics`` in every fleet state: what alerting rules need, and ``promtool check metrics``.

Each scene puts nodes in the store as their reports would have, lets 90
virtual seconds pass, and scrapes the collector: the ages count from when
the condition began, every family passes promtool's lint (skipped, naming
the package, when promtool is missing).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from knightwatch.api.metrics import FleetCollector
from knightwatch.clock import VirtualClock
from knightwatch.store import Database, Node
from knightwatch.store.queries import get_fleet
from tests.prometheus_servers import promtool

T0 = datetime(2012, 8, 1, 9, 30, tzinfo=UTC)
V1, V2 = "a" * 64, "b" * 64
LATER_S = 90.0


def node(name: str, **facts: Any) -> Node:
    """An enrolled node that reported at T0, on V1, clean, connected (unless ``facts`` say)."""
    row: dict[str, Any] = {
        "status": "enrolled",
        "created_at": T0,
        "enrolled_at": T0,
        "active_digest": V1,
        "desired_digest": V1,
        "service_state": "running",
        "drift_state": "clean",
        "connected": True,
        "connected_at": T0,
        "last_report_at": T0,
        **facts,
    }
    return Node(name=name, **row)


SCENES: dict[str, Callable[[], list[Node]]] = {
    "EMPTY": list,
    "CONVERGED": lambda: [node("node1"), node("node2")],
    "DRIFTED": lambda: [node("node1", drift_state="drifted", drift_since=T0), node("node2")],
    "MIXED": lambda: [
        node("node1", active_digest=V2, desired_digest=V2),
        node("node2", desired_digest=V2),
    ],
    "HALTED": lambda: [node("node1", halted=True, halt_source="kill"), node("node2")],
    "DEGRADED": lambda: [node("node1"), node("node2", service_state="crash_loop")],
    "UNKNOWN": lambda: [node("node1"), node("node2", connected=False)],
}
"""Each fleet state, as the nodes' rows that make it (new rows at every call)."""


def scrape(db: Database, clock: VirtualClock) -> tuple[str, dict[str, list[Any]]]:
    """The exposition text and its samples by family name."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(db, clock))
    text = generate_latest(registry).decode("utf-8")
    return text, {f.name: f.samples for f in text_string_to_metric_families(text)}


@pytest.mark.parametrize("state", sorted(SCENES))
def test_metrics_in_every_fleet_state_pass_promtool_and_count_ages_from_the_start(
    db: Database, state: str
) -> None:
    """The state, ages from when they began, per-node figures; promtool finds no problem."""
    clock = VirtualClock(T0)
    nodes = SCENES[state]()
    facts = [(n.name, n.connected, n.last_report_at is not None) for n in nodes]
    with db.session() as session:
        session.add_all(nodes)
        if state == "MIXED":
            get_fleet(session).mixed_since = T0
    clock.advance(LATER_S)
    text, samples = scrape(db, clock)

    assert {s.labels["state"]: s.value for s in samples["knightwatch_fleet_state"]}[state] == 1
    (mixed,) = samples["knightwatch_fleet_mixed_seconds"]
    assert mixed.value == (LATER_S if state == "MIXED" else 0)
    (drifted,) = samples["knightwatch_fleet_drifted_seconds"]
    assert drifted.value == (LATER_S if state == "DRIFTED" else 0)
    (behind,) = samples["knightwatch_nodes_behind"]
    assert behind.value == (1 if state == "MIXED" else 0)
    (agents,) = samples["knightwatch_agents_connected"]
    assert agents.value == sum(1 for _, up, _ in facts if up)
    ages = {s.labels["node"]: s.value for s in samples["knightwatch_node_last_report_age_seconds"]}
    assert ages == {name: LATER_S for name, _, reported in facts if reported}
    connected = {s.labels["node"]: s.value for s in samples["knightwatch_node_connected"]}
    assert connected == {name: 1.0 if up else 0.0 for name, up, _ in facts}
    kinds = {s.labels["kind"] for s in samples["knightwatch_deployments"]}
    assert kinds == {"deploy", "rollback", "catchup", "reconcile"}  # from 0, for increase()

    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0 and not checked.stdout.strip(), checked
