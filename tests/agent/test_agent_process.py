"""The agent as a real process: enroll, deploy, SIGTERM halts the service, SIGKILL adopts it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from knightwatch.agent.process import identify
from knightwatch.cli.agent import register
from knightwatch.protocol.messages import AckPhase, Commit, Prepare, ServiceState
from tests.agent.conftest import Releases, free_port, wait_for
from tests.agent.plane import StubPlane

AGENT = [
    sys.executable,
    "-c",
    "import typer; from knightwatch.cli.agent import agent; typer.run(agent)",
]


@pytest.fixture
def plane(releases: Releases, key_dir: Path) -> Iterator[StubPlane]:
    """A stub control plane serving the test store."""
    releases.store.mkdir(exist_ok=True)
    with StubPlane(releases.store, [(key_dir / "release.pub").read_text()]) as stub:
        yield stub


class AgentProcess:
    """``knightwatch agent`` started as a subprocess, its stderr kept in a file."""

    def __init__(self, plane: StubPlane, root: Path, port: int, *extra: str) -> None:
        self.log = root.parent / f"agent-{len(list(root.parent.glob('agent-*.log')))}.log"
        args = ["--server", plane.url, "--root", str(root), "--name", "node1"]
        args += ["--service-port", str(port), "--heartbeat", "0.2", *extra]
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


def deploy(plane: StubPlane, releases: Releases) -> int:
    """Deploy the example release through the WebSocket; return the service pid."""
    built = releases.smars()
    ids = {"deployment_id": 1, "digest": built.digest, "release_id": built.release_id}
    plane.send(Prepare(**ids))  # type: ignore[arg-type]
    wait_for(lambda: any(r.ack and r.ack.phase is AckPhase.PREPARED for r in plane.reports()), "")
    plane.send(Commit(**ids))  # type: ignore[arg-type]
    wait_for(
        lambda: any(r.ack and r.ack.phase is AckPhase.ACTIVE for r in plane.reports()),
        "no ACTIVE ack",
        120,
    )
    pid = plane.reports()[-1].state.service.pid
    assert pid is not None
    return pid


class TestLifecycle:
    def test_sigterm_halts_the_service_and_exits_0(
        self,
        plane: StubPlane,
        releases: Releases,
        tmp_path: Path,
        reap: Callable[[int], None],
    ) -> None:
        """SIGTERM stops the service (its process group) and the agent exits 0."""
        root = tmp_path / "node"
        agent = AgentProcess(plane, root, free_port(), "--join", plane.token)
        try:
            wait_for(plane.connected, "the agent did not connect")
            pid = deploy(plane, releases)
            reap(pid)
            assert agent.stop(signal.SIGTERM) == 0
        finally:
            agent.kill()
        assert identify(pid) is None
        log = agent.log.read_text()
        assert "event=connect" in log and "event=agent-stopped" in log
        assert "event=command-finished type=commit" in log
        assert json.loads((root / "state.json").read_text())["service"] is None

    def test_killed_agent_leaves_the_service_and_the_next_one_replaces_it(
        self,
        plane: StubPlane,
        releases: Releases,
        tmp_path: Path,
        reap: Callable[[int], None],
    ) -> None:
        """After SIGKILL the service runs on; the restarted agent stops it and starts afresh."""
        root, port = tmp_path / "node", free_port()
        first = AgentProcess(plane, root, port, "--join", plane.token)
        second: AgentProcess | None = None
        try:
            wait_for(plane.connected, "the agent did not connect")
            old = deploy(plane, releases)
            reap(old)
            first.stop(signal.SIGKILL)
            assert identify(old) is not None
            second = AgentProcess(plane, root, port)

            def new_service() -> int | None:
                if len(plane.sessions) < 2:
                    return None
                service = plane.reports()[-1].state.service
                running = service.state is ServiceState.RUNNING and service.pid != old
                return service.pid if running else None

            wait_for(lambda: new_service() is not None, "no fresh service", 120)
            new = new_service()
            assert new is not None
            reap(new)
            assert identify(old) is None
            state = json.loads((root / "state.json").read_text())
            assert state["service"]["pid"] == new
            assert second.stop(signal.SIGTERM) == 0
            assert identify(new) is None
        finally:
            first.kill()
            if second is not None:
                second.kill()


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
        assert "Example: knightwatch agent --server http://127.0.0.1:7400" in text

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
