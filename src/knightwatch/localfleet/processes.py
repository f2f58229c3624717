"""The processes of a local fleet: starting, stopping, and finding what is left of them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from knightwatch.agent.process import groups_running_under
from knightwatch.localfleet.ports import release_ports

__all__ = ["FleetProcess", "alive", "free_port", "kill_strays", "stop_fleet", "stop_process"]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class FleetProcess:
    """One process a fleet started: its name, handle and log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path


def stop_process(entry: FleetProcess, sig: int, grace: float = 15.0) -> int | None:
    """Signal ``entry`` and wait ``grace`` seconds; SIGKILL its group if it is still there."""
    process = entry.process
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    return process.returncode


def kill_strays(directory: Path) -> list[int]:
    """SIGKILL every process group running (cwd or executable) under ``directory``."""
    groups = groups_running_under(directory)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return groups


def stop_fleet(directory: Path, grace: float = 15.0) -> list[str]:
    """Stop a fleet started by another process, from its pid files; return what was stopped."""
    pids_dir = directory / "pids"
    entries = sorted(pids_dir.glob("*.pid")) if pids_dir.is_dir() else []
    agents = [p for p in entries if p.stem != "server"]
    server = [p for p in entries if p.stem == "server"]
    stopped = []
    for group in (agents, server):
        running = {p.stem: int(p.read_text()) for p in group}
        for pid in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(pid) for pid in running.values()):
            time.sleep(0.1)
        for name, pid in running.items():
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            stopped.append(name)
        for path in group:
            path.unlink(missing_ok=True)
    kill_strays(directory)
    release_ports(directory.resolve())
    return stopped


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    try:
        return state.read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
