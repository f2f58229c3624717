"""An agent upgrade never interrupts the service: the new agent adopts it, or says why not.

Real agents against a real control plane: an agent SIGKILLed and started
again, an agent upgraded in place by SIGHUP (re-exec), a journal naming a
process that is not the service, a release tree tampered while no agent
ran, and knightwatch 0.1.0's agent replaced by today's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from knightwatch.agent.process import identify
from knightwatch.localfleet import LocalFleet
from knightwatch.polling import WaitTimedOutError
from knightwatch.testing import free_port, wait_until
from tests.agent.conftest import (
    SERVER_ENV,
    SETTLE_S,
    Releases,
    deploy,
    node_row,
    node_status,
    wait_connected,
)
from tests.agent.test_agent_process import AgentProcess, deploy_example
from tests.upgrade.old_release import old_env, unpack_old_release


def journal(root: Path) -> dict[str, Any]:
    """The agent's state.json."""
    data: dict[str, Any] = json.loads((root / "state.json").read_text())
    return data


def wait_settled(root: Path) -> None:
    """Wait until the control plane has settled the node's last deployment (not ``awaiting``).

    An agent started while it is unsettled adopts nothing and starts no
    service before the control plane's word (test_commands.py tests that).
    """
    wait_until(
        lambda: journal(root)["awaiting"] is None, timeout=SETTLE_S, what="the deployment settled"
    )


def wait_service(fleet: LocalFleet, name: str, pid: Callable[[int | None], bool]) -> dict[str, Any]:
    """Wait until ``name``'s new agent reports a running, versioned service ``pid`` accepts."""

    def ready() -> dict[str, Any] | None:
        node = node_status(fleet, name)
        running = node.get("connected") and node["service_state"] == "running"
        running = running and node["service_version"] is not None
        running = running and adoption(node) != ""  # the new agent's report, not the old one's
        return node if running and pid(node["service_pid"]) else None

    try:
        return wait_until(ready, timeout=SETTLE_S, what=f"{name}'s service", interval=0.1)
    except WaitTimedOutError as exc:
        raise AssertionError(f"{exc}; last seen: {node_status(fleet, name)}") from None


def adoption(node: dict[str, Any]) -> str:
    """What the node's agent said about the service it found at its start."""
    return str((node.get("processes") or {}).get("adoption", ""))


def cli(fleet: LocalFleet, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``knightwatch ARGS`` against the control plane as its admin (wide output)."""
    env = {**os.environ, "KNIGHTWATCH_SERVER": fleet.url, "KNIGHTWATCH_TOKEN": fleet.token}
    return subprocess.run(
        [sys.executable, "-m", "knightwatch", *args],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "400"},
        timeout=120,
        check=False,
    )


def status_text(fleet: LocalFleet) -> str:
    """What ``knightwatch status`` prints."""
    done = cli(fleet, "status")
    assert done.returncode == 0, done.stderr
    return done.stdout


def group_members(path: str | None) -> list[int]:
    """The pids in a cgroup ([] once it is gone, or without one)."""
    if path is None:
        return []
    try:
        return [int(p) for p in (Path(path) / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    """Agents started by a test, killed at its end whatever happened."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


class Orphaned(NamedTuple):
    """A service left running by a SIGKILLed agent."""

    root: Path
    port: int
    pid: int
    group: str | None


def orphan_a_service(
    fleet: LocalFleet,
    releases: Releases,
    node_name: str,
    reap: Callable[[int], None],
    agents: list[AgentProcess],
) -> Orphaned:
    """Deploy the example through a first agent, then SIGKILL it: its service keeps running."""
    root, port = fleet.root(node_name), free_port()
    agents.append(AgentProcess(fleet, node_name, port, "--join", fleet.enroll(node_name)))
    wait_connected(fleet, node_name)
    pid = deploy_example(fleet, releases, node_name)
    reap(pid)
    wait_settled(root)
    group = journal(root)["service"]["cgroup"]
    agents[0].stop(signal.SIGKILL)
    return Orphaned(root, port, pid, group)


class TestAdoptionAfterSigkill:
    def test_the_next_agent_adopts_the_service_and_halts_it(
        self,
        control_plane: LocalFleet,
        releases: Releases,
        node_name: str,
        reap: Callable[[int], None],
        agents: list[AgentProcess],
    ) -> None:
        """Same pid after the agent's SIGKILL, adoption reported; SIGTERM then stops it whole."""
        fleet = control_plane
        root, port, pid, group = orphan_a_service(fleet, releases, node_name, reap, agents)
        agents.append(AgentProcess(fleet, node_name, port))
        node = wait_service(fleet, node_name, lambda p: p == pid)
        assert adoption(node).startswith(f"adopted running service pid {pid} (release smars@")
        assert node["service_version"].startswith("smars@2012.8.1+")
        assert journal(root)["service"]["pid"] == pid
        assert journal(root)["service"]["cgroup"] == group
        log = agents[1].log.read_text()
        assert "event=service-adopted" in log and "child=false" in log
        assert "event=service-start " not in log  # nothing was started afresh
        assert pid in group_members(group) or group is None
        shown = status_text(fleet)
        assert f"{node_name}: at agent start, adopted running service pid {pid} " in shown, shown
        assert agents[1].stop(signal.SIGTERM) == 0
        assert identify(pid) is None
        assert group_members(group) == []
        assert journal(root)["service"] is None

    def test_the_kill_switch_halts_the_adopted_service(
        self,
        control_plane: LocalFleet,
        releases: Releases,
        node_name: str,
        reap: Callable[[int], None],
        agents: list[AgentProcess],
    ) -> None:
        """``knightwatch kill`` halts an adopted service like a spawned one: its group empties."""
        fleet = control_plane
        root, port, pid, group = orphan_a_service(fleet, releases, node_name, reap, agents)
        agents.append(AgentProcess(fleet, node_name, port))
        wait_service(fleet, node_name, lambda p: p == pid)
        done = cli(fleet, "kill", "--json", "--nodes", node_name, "--reason", "adopted halt")
        report = json.loads(done.stdout)
        assert done.returncode == 0, done.stdout + done.stderr
        assert identify(pid) is None, report
        assert group_members(group) == []
        assert journal(root)["halted"] is True
        assert agents[1].stop(signal.SIGTERM) == 0

    def test_a_later_deploy_replaces_the_adopted_service(
        self,
        control_plane: LocalFleet,
        releases: Releases,
        node_name: str,
        reap: Callable[[int], None],
        agents: list[AgentProcess],
    ) -> None:
        """The adopted service is stopped by the next deploy like any other."""
        fleet = control_plane
        _root, port, old, group = orphan_a_service(fleet, releases, node_name, reap, agents)
        agents.append(AgentProcess(fleet, node_name, port))
        wait_service(fleet, node_name, lambda p: p == old)
        done = deploy(fleet, releases.store, releases.smars("2012.8.2"), node_name)
        assert done["state"] == "SUCCEEDED", done
        new = node_row(done, node_name)["pid"]
        reap(new)
        assert new != old and identify(old) is None
        assert group_members(group) == []
        assert agents[1].stop(signal.SIGTERM) == 0


class TestInPlaceUpgrade:
    def test_sighup_reexecs_the_agent_and_the_service_never_stops(
        self,
        control_plane: LocalFleet,
        releases: Releases,
        node_name: str,
        reap: Callable[[int], None],
        agents: list[AgentProcess],
    ) -> None:
        """Same agent pid, same service pid, /version answered throughout, adoption reported."""
        fleet, root, port = control_plane, control_plane.root(node_name), free_port()
        agent = AgentProcess(fleet, node_name, port, "--join", fleet.enroll(node_name))
        agents.append(agent)
        wait_connected(fleet, node_name)
        pid = deploy_example(fleet, releases, node_name)
        reap(pid)
        wait_settled(root)
        asked = Asker(f"http://127.0.0.1:{port}/version")
        asked.start()
        try:
            wait_until(lambda: asked.answers > 0, timeout=SETTLE_S, what="a first answer")
            agent.process.send_signal(signal.SIGHUP)
            wait_until(
                lambda: agent.log.read_text().count("event=agent-start") == 2,
                timeout=SETTLE_S,
                what="the re-executed agent to start",
            )
            node = wait_service(
                fleet, node_name, lambda p: p == pid and "service-adopted" in agent.log.read_text()
            )
            seen = asked.answers
            wait_until(lambda: asked.answers > seen, timeout=SETTLE_S, what="answers after")
        finally:
            asked.stop()
        assert asked.failures == [], asked.failures[:3]
        assert agent.process.poll() is None  # the same process, re-executed
        assert adoption(node).startswith(f"adopted running service pid {pid} ")
        log = agent.log.read_text()
        assert "event=agent-reexec" in log and "service_left_running=true" in log
        assert "child=true" in log  # exec kept the pid: the service is still its child
        assert journal(root)["service"]["pid"] == pid
        assert agent.stop(signal.SIGTERM) == 0
        assert identify(pid) is None
        assert "service-exit" not in agent.log.read_text()


class Asker(threading.Thread):
    """Asks a URL again and again, counting answers and keeping every failure."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answers = 0
        self.failures: list[str] = []
        self._done = threading.Event()

    def run(self) -> None:
        """Ask until stopped."""
        while not self._done.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as answer:
                    answer.read()
                self.answers += 1
            except OSError as exc:
                self.failures.append(str(exc))
            self._done.wait(0.02)

    def stop(self) -> None:
        """Stop asking and wait for the thread."""
        self._done.set()
        self.join()


class TestNotAdopted:
    @pytest.mark.parametrize("case", ["reused-pid", "other-cwd"])
    def test_a_journaled_pid_that_is_not_the_service_is_left_alone(
        self,
        control_plane: LocalFleet,
        releases: Releases,
        node_name: str,
        reap: Callable[[int], None],
        agents: list[AgentProcess],
        tmp_path: Path,
        case: str,
    ) -> None:
        """A stranger under the journaled pid is neither adopted nor killed; a new service runs."""
        fleet = control_plane
        root, port, old, _group = orphan_a_service(fleet, releases, node_name, reap, agents)
        os.killpg(old, signal.SIGKILL)
        wait_until(lambda: identify(old) is None, timeout=SETTLE_S, what="the service to die")
        stranger = subprocess.Popen(["sleep", "600"], cwd=tmp_path, start_new_session=True)
        reap(stranger.pid)
        try:
            ident = identify(stranger.pid)
            assert ident is not None
            state = journal(root)
            ticks = ident.start_ticks + (1 if case == "reused-pid" else 0)
            state["service"].update(pid=stranger.pid, start_ticks=ticks)
            (root / "state.json").write_text(json.dumps(state))
            agents.append(AgentProcess(fleet, node_name, port))
            node = wait_service(fleet, node_name, lambda p: p not in (None, stranger.pid))
            reap(node["service_pid"])
            assert stranger.poll() is None, "the stranger was killed"
            why = "start time does not match" if case == "reused-pid" else "does not run from"
            assert adoption(node).startswith("restarted service: "), adoption(node)
            assert why in adoption(node) and "left alone" in adoption(node)
            assert "action=leave" in agents[1].log.read_text()
            assert agents[1].stop(signal.SIGTERM) == 0
            assert stranger.poll() is None
        finally:
            stranger.kill()
            stranger.wait()

    def test_a_tree_tampered_while_no_agent_ran_is_not_adopted(
        self,
        control_plane: LocalFleet,
        releases: Releases,
        node_name: str,
        reap: Callable[[int], None],
        agents: list[AgentProcess],
    ) -> None:
        """The service of a tampered tree is stopped and started afresh; the drift is reported."""
        fleet = control_plane
        root, port, old, _group = orphan_a_service(fleet, releases, node_name, reap, agents)
        config = root / "current" / "config" / "routing.toml"
        config.chmod(0o644)
        config.write_text(config.read_text() + "\n# edited by hand\n")
        agents.append(AgentProcess(fleet, node_name, port))
        node = wait_service(fleet, node_name, lambda p: p not in (None, old))
        reap(node["service_pid"])
        assert identify(old) is None
        assert "differs from its manifest" in adoption(node), adoption(node)
        assert f"pid {old} stopped" in adoption(node)
        wait_until(
            lambda: node_status(fleet, node_name)["drift_state"] == "drifted",
            timeout=SETTLE_S,
            what="the drift to be reported",
        )
        assert agents[1].stop(signal.SIGTERM) == 0


class TestUpgradeFromOldRelease:
    def test_todays_agent_adopts_the_service_of_a_sigkilled_0_1_0_agent(
        self,
        tmp_path: Path,
        key_dir: Path,
        releases: Releases,
        reap: Callable[[int], None],
    ) -> None:
        """0.1.0 deploys, is SIGKILLed; today's agent on the same root keeps the same pid."""
        old_code = unpack_old_release(tmp_path / "old")
        fleet = LocalFleet(
            tmp_path / "plane",
            nodes=1,
            trust=[key_dir / "release.pub"],
            server_env=SERVER_ENV,
            tls=False,
        )
        for sub in ("logs", "pids", "nodes"):
            (fleet.directory / sub).mkdir(parents=True, exist_ok=True)
        try:
            fleet.start_server()
            fleet.start_agent("node1", join=fleet.enroll("node1"), env=old_env(old_code))
            wait_connected(fleet, "node1")
            done = deploy(fleet, releases.store, releases.smars(), "node1")
            assert done["state"] == "SUCCEEDED", done
            pid = node_row(done, "node1")["pid"]
            reap(pid)
            wait_settled(fleet.root("node1"))
            assert "cgroup" not in journal(fleet.root("node1"))["service"]  # 0.1.0's journal
            assert fleet.stop_agent("node1", signal.SIGKILL) == -signal.SIGKILL
            fleet.start_agent("node1")
            node = wait_service(fleet, "node1", lambda p: p == pid)
            assert adoption(node).startswith(f"adopted running service pid {pid} ")
            assert journal(fleet.root("node1"))["service"]["pid"] == pid
            log = (fleet.directory / "logs" / "node1.log").read_text()
            assert "event=service-adopted" in log
        finally:
            fleet.down()
        assert identify(pid) is None
