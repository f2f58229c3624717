"""The agent confined as its systemd unit confines it: no capability at all, no new privileges.

``setpriv`` applies the unit's ``CapabilityBoundingSet=`` (here empty, what
``install-unit --capabilities none`` writes) and ``NoNewPrivileges=yes`` to a
real agent, which must still enroll, create its service's cgroups, deploy,
supervise and stop the service. The capabilities the unit keeps by default
are for the service's sake, never the agent's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from knightwatch.agent.cgroup import probe_cgroups
from knightwatch.agent.errors import CgroupUnavailableError
from knightwatch.agent.process import identify
from knightwatch.localfleet import LocalFleet
from knightwatch.testing import free_port
from tests.agent.conftest import Releases, deploy, node_row, wait_connected

SETPRIV = shutil.which("setpriv")
CONFINED = [str(SETPRIV), "--bounding-set", "-all", "--no-new-privs", "--"]

pytestmark = pytest.mark.skipif(
    SETPRIV is None or os.geteuid() != 0, reason="needs root and setpriv (util-linux)"
)


def _cgroups_here() -> bool:
    """Whether an unconfined root process can create service cgroups on this machine."""
    try:
        probe_cgroups()
    except CgroupUnavailableError:
        return False
    return True


def test_agent_supervises_without_any_capability(
    control_plane: LocalFleet,
    releases: Releases,
    node_name: str,
    reap: Callable[[int], None],
) -> None:
    """Enroll, cgroups, deploy, supervise and stop, with an empty bounding set."""
    fleet = control_plane
    root = fleet.root(node_name)
    root.parent.mkdir(parents=True, exist_ok=True)
    log = root.parent / f"{node_name}-confined.log"
    args = ["--server", fleet.url, "--root", str(root), "--name", node_name]
    args += ["--service-port", str(free_port()), "--join", fleet.enroll(node_name)]
    for key in fleet.trust:
        args += ["--trust", str(key)]
    with log.open("wb") as err:
        agent = subprocess.Popen(
            [*CONFINED, sys.executable, "-m", "knightwatch", "agent", *args], stderr=err
        )
    try:
        wait_connected(fleet, node_name)
        status = Path(f"/proc/{agent.pid}/status").read_text()
        assert "CapBnd:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
        done = deploy(fleet, releases.store, releases.smars(), node_name)
        assert done["state"] == "SUCCEEDED", (done, log.read_text()[-3000:])
        pid = node_row(done, node_name)["pid"]
        reap(pid)
        assert identify(pid) is not None
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=120) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert identify(pid) is None
    text = log.read_text()
    if _cgroups_here():
        assert "event=cgroup-layout" in text, text[-3000:]
    assert "event=agent-stopped" in text
