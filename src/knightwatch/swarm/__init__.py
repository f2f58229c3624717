"""Hollow agents: the real agent protocol with the node simulated, thousands per process.

What one control plane carries is measured with them (``knightwatch swarm``,
``bench/scale.py``), the way Kubernetes measures with kubemark's hollow
nodes and Salt with minionswarm.
"""

from knightwatch.swarm.hollow import HollowAgent, SwarmCounters
from knightwatch.swarm.swarm import HollowNode, Swarm, SwarmError, enroll_hollow, hollow_names

__all__ = [
    "HollowAgent",
    "HollowNode",
    "Swarm",
    "SwarmCounters",
    "SwarmError",
    "enroll_hollow",
    "hollow_names",
]
