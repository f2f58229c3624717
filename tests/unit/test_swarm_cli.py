"""`knightwatch swarm` refuses clearly: bad options, a control plane it cannot reach."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

SWARM = (sys.executable, "-m", "knightwatch", "swarm")


def run(*args: str, server: str) -> subprocess.CompletedProcess[str]:
    """The swarm command against ``server``, with a token from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNIGHTWATCH_")}
    env |= {"KNIGHTWATCH_SERVER": server, "KNIGHTWATCH_TOKEN": "not-a-token"}
    return subprocess.run(
        [*SWARM, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_control_plane_is_one_line_and_a_hint() -> None:
    """No traceback: the URL, why, and what to check."""
    server = f"https://127.0.0.1:{closed_port()}"
    done = run("--count", "2", server=server)
    assert done.returncode == 1
    assert f"error: cannot reach the control plane at {server}" in done.stderr
    assert "hint:" in done.stderr and "Traceback" not in done.stderr


def test_a_count_below_one_is_refused_before_anything_happens() -> None:
    """A usage error (exit 2) naming the option."""
    done = run("--count", "0", server="https://127.0.0.1:1")
    assert done.returncode == 2
    assert "--count" in done.stderr
