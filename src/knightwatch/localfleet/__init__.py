"""A whole knightwatch fleet on one machine: ``knightwatch fleet up``, demos and tests.

:class:`LocalFleet` starts a control plane and N agents as separate
processes, each agent with its own root directory and service port, and one
directory holding their pid files and logs. Your own test suite can use it
to test a service against knightwatch exactly as it will run in production::

    with LocalFleet(tmp_path / "fleet", nodes=3, trust=[pub]) as fleet:
        fleet.push(store, "smars@2012.8.1")
        deployment = fleet.deploy("smars@2012.8.1")
        assert deployment["state"] == "SUCCEEDED"

By default the fleet serves HTTPS with a certificate from a CA it creates in
``DIR/tls/`` (:mod:`knightwatch.tlsca`); agents and the client pin that CA.
``fleet.json`` records every option the fleet was started with, so
:meth:`LocalFleet.attach` (``knightwatch fleet stop|start|restart``) can
start one piece again exactly as ``up`` did.
"""

from knightwatch.localfleet.fleet import FleetError, LocalFleet
from knightwatch.localfleet.processes import free_port, kill_strays, stop_fleet

__all__ = ["FleetError", "LocalFleet", "free_port", "kill_strays", "stop_fleet"]
