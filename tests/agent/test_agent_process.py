"""The agent as a real process against the real control plane: SIGTERM halts, bad input exits 2.

What a SIGKILLed (or SIGHUPed) agent leaves running is adopted: tests/agent/test_adoption.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from knightwatch.agent.process import identify
from knightwatch.cli.agent import register
from knightwatch.localfleet import LocalFleet
from knightwatch.testing import free_port, wait_until
from tests.agent.conftest import (
    SETTLE_S,
    Releases,
    deploy,
    node_row,
    node_status,
    wait_connected,
)

AGENT = [
    sys.executable,
    "-c",
    "import typer; from knightwatch.cli.agent import agent; typer.run(agent)",
]


class AgentProcess:
    """``knightwatch agent`` started as a subprocess, its stderr kept in a file."""

    def __init__(self, fleet: LocalFleet, name: str, port: int, *extra: str) -> None:
        root = fleet.root(name)
        root.parent.mkdir(parents=True, exist_ok=True)
        self.log = root.parent / f"{name}-{len(list(root.parent.glob(f'{name}-*.log')))}.log"
        args = ["--server", fleet.url, "--root", str(root), "--name", name]
        args += ["--service-port", str(port), *extra]
        for key in fleet.trust:
            args += ["--trust", str(key)]
        with self.log.open("wb") as err:
            self.process = subprocess.Popen([*AGENT, *args], stderr=err)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` and wait for the exit status."""
        self.process.send_signal(signum)
        return self.process.wait(timeout=120)

    def kill(self) -> None:
        """Make sure the process is gone."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def deploy_example(fleet: LocalFleet, releases: Releases, name: str) -> int:
    """Deploy the example release to ``name`` for real; return the service pid it recorded."""
    built = releases.smars()
    done = deploy(fleet, releases.store, built, name)
    assert done["state"] == "SUCCEEDED", done
    row = node_row(done, name)
    assert row["phase"] == "ACTIVE" and row["pid"] is not None
    pid: int = row["pid"]
    return pid


class TestLifecycle:
    def test_sigterm_halts_the_service_and_exits_0(
        self,
        control_plane: LocalFleet,
        releases: Releases,
        node_name: str,
        reap: Callable[[int], None],
    ) -> None:
        """SIGTERM stops the service (its process group) and the agent exits 0."""
        fleet = control_plane
        agent = AgentProcess(fleet, node_name, free_port(), "--join", fleet.enroll(node_name))
        try:
            wait_connected(fleet, node_name)
            pid = deploy_example(fleet, releases, node_name)
            reap(pid)
            assert identify(pid) is not None
            assert agent.stop(signal.SIGTERM) == 0
        finally:
            agent.kill()
        assert identify(pid) is None
        log = agent.log.read_text()
        assert "event=connect" in log and "event=agent-stopped" in log
        assert "event=command-finished type=commit" in log
        assert json.loads((fleet.root(node_name) / "state.json").read_text())["service"] is None
        wait_until(
            lambda: not node_status(fleet, node_name)["connected"],
            timeout=SETTLE_S,
            what=f"{node_name} to disconnect",
        )


class TestCli:
    def test_help_shows_an_example(self) -> None:
        """``knightwatch agent --help`` documents itself with an example invocation."""
        app = typer.Typer()
        register(app)

        @app.command("other")
        def other() -> None:
            """Keep ``agent`` a subcommand."""

        result = CliRunner().invoke(app, ["agent", "--help"])
        assert result.exit_code == 0
        text = " ".join(result.output.split())
        assert "Example: knightwatch agent --server https://cp.example:7400 --ca ca.pem" in text

    def test_bad_node_name_exits_2(self, tmp_path: Path) -> None:
        """An invalid --name is refused before anything is written (exit code 2)."""
        done = subprocess.run(
            [
                *AGENT,
                "--server",
                "http://127.0.0.1:9",
                "--root",
                str(tmp_path / "r"),
                "--name",
                "N!",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2
        assert "not a valid node name" in done.stderr
        assert not (tmp_path / "r").exists()


class TestJoinToken:
    def test_join_token_from_a_file_stays_out_of_ps(
        self, control_plane: LocalFleet, node_name: str, tmp_path: Path
    ) -> None:
        """``--join-file`` enrolls the node, and the token is not on the agent's command line."""
        fleet = control_plane
        token = fleet.enroll(node_name)
        path = tmp_path / "join.token"
        path.write_text(token + "\n")
        agent = AgentProcess(fleet, node_name, free_port(), "--join-file", str(path))
        try:
            wait_connected(fleet, node_name)
            cmdline = Path(f"/proc/{agent.process.pid}/cmdline").read_bytes()
            assert token.encode() not in cmdline
            assert agent.stop(signal.SIGTERM) == 0
        finally:
            agent.kill()

    def test_join_token_from_the_environment(
        self,
        control_plane: LocalFleet,
        node_name: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """KNIGHTWATCH_JOIN_TOKEN enrolls the node when --join is not given."""
        fleet = control_plane
        monkeypatch.setenv("KNIGHTWATCH_JOIN_TOKEN", fleet.enroll(node_name))
        agent = AgentProcess(fleet, node_name, free_port())
        try:
            wait_connected(fleet, node_name)
            assert agent.stop(signal.SIGTERM) == 0
        finally:
            agent.kill()

    @pytest.mark.parametrize(
        ("case", "says"),
        [("both", "both a join token"), ("missing", "cannot read"), ("empty", "is empty")],
    )
    def test_unusable_join_file_exits_2(self, tmp_path: Path, case: str, says: str) -> None:
        """--join with --join-file, a missing file or an empty one is refused (exit 2), by name."""
        path = tmp_path / "join.token"
        if case != "missing":
            path.write_text("" if case == "empty" else "tok")
        extra = ["--join", "tok"] if case == "both" else []
        args = ["--server", "http://127.0.0.1:9", "--root", str(tmp_path / "r"), "--name", "node1"]
        done = subprocess.run(
            [*AGENT, *args, "--join-file", str(path), *extra],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert "--join-file" in done.stderr and says in done.stderr
        assert "Traceback" not in done.stderr and not (tmp_path / "r").exists()
