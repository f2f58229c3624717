"""A deployment's reason names at most a few dozen nodes, however many failed."""

from __future__ import annotations

from knightwatch.control.decisions import NAMES_SHOWN, NodeFacts, expire
from knightwatch.vocabulary import DeploymentState, NodePhase


def _node(i: int, phase: NodePhase) -> NodeFacts:
    return NodeFacts(name=f"n{i:05d}", phase=phase)


def test_a_timeout_of_ten_thousand_nodes_names_a_few_and_counts_the_rest() -> None:
    nodes = [_node(i, NodePhase.PREPARING) for i in range(10_000)]
    decision = expire(DeploymentState.PREPARING, nodes)
    assert decision.reason is not None
    assert decision.reason.startswith("PREPARING timed out waiting for: n00000, n00001")
    assert decision.reason.endswith(f"and {10_000 - NAMES_SHOWN:,} more (10,000 nodes)")
    assert len(decision.reason) < 1000
    assert len(decision.node_phases) == 10_000  # every node is still settled


def test_a_small_timeout_names_every_node() -> None:
    nodes = [_node(i, NodePhase.PREPARING) for i in range(3)]
    decision = expire(DeploymentState.PREPARING, nodes)
    assert decision.reason == "PREPARING timed out waiting for: n00000, n00001, n00002"
