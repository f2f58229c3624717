"""The Knightmare drill: 1 August 2012 replayed on a real fleet, with and without knightwatch.

Four scenarios run on one simulated trading day (:mod:`.scenario`):

* A — the manual process Knight used: copied by hand to 7 of 8 nodes, a
  repurposed flag switched on with no checks, warnings to a file, no kill
  switch, and a "fix" that rolls the seven good nodes back;
* B — the same intent through knightwatch: refused, aborted, converged,
  approved, audited, then a normal day;
* C — a node's tree altered by hand after the deploy: drift found before the
  open, the flag change refused, an alert escalated until someone acts;
* D — a runaway anyway: a guard halts the node, the kill switch the fleet.

Every number in the report comes from the run.
"""

from __future__ import annotations

from knightwatch.sim.drill.report import DrillReport
from knightwatch.sim.drill.run import run_drill
from knightwatch.sim.drill.settings import DrillSettings

__all__ = ["DrillReport", "DrillSettings", "run_drill"]
