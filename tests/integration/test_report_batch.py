"""Group commit of agent reports: nothing is lost when the server dies before the commit.

The server is killed with the halt acknowledgements of the whole fleet
stored in an open transaction (the store thread paused right before its
commit). Nothing of that batch may survive or have been acted on, and once
the server is back each agent's acknowledgement is recorded exactly once.
"""

from __future__ import annotations

import signal
from pathlib import Path

from knightwatch.server.report_batch import PAUSE_ENV
from knightwatch.testing import wait_until
from tests.integration.conftest import (
    SETTLE_S,
    Releases,
    converge_on,
    log_tail,
    make_fleet,
)

NODES = 3


def test_halt_acks_lost_with_the_server_before_their_commit_are_resent_and_recorded_once(
    tmp_path: Path, releases: Releases
) -> None:
    with make_fleet(tmp_path / "fleet", releases, nodes=NODES) as fleet:
        fleet.push(releases.store, releases.v1.release_id)
        converge_on(fleet, releases.v1)
        fleet.stop_server()
        fleet.start_server(env={PAUSE_ENV: "halt-ack-commit"})
        fleet.wait_connected(fleet.names, timeout=SETTLE_S)

        halt = fleet.client.post("/halts", {"reason": "group commit fault test"})
        number = halt["halt_id"]
        wait_until(
            lambda: "fault-pause: halt-ack-commit" in log_tail(fleet, "server", 200),
            timeout=SETTLE_S,
            what="the server to pause before committing the acknowledgements",
        )
        held = fleet.client.get(f"/halts/{number}")
        assert sorted(held["unacknowledged"]) == sorted(fleet.names)  # stored, not committed
        assert fleet.stop_server(signal.SIGKILL) == -signal.SIGKILL

        fleet.start_server()  # without the fault
        report = wait_until(
            lambda: (r := fleet.client.get(f"/halts/{number}"))["complete"] and r,
            timeout=SETTLE_S,
            what="every agent to acknowledge again",
        )
        assert sorted(n["node"] for n in report["nodes"]) == sorted(fleet.names)  # once each
        assert all(n["acknowledged"] and n["halted_at"] for n in report["nodes"])
        issued = fleet.client.get("/audit-log?action=halt.issued")
        assert [e["object"] for e in issued] == [f"halt {number}"]
        assert all(n["halted"] for n in fleet.status()["nodes"])
