"""``knightwatch fleet up | stop | start | restart | down`` as an operator runs them.

The fleet is started by the real command in a subprocess; its pieces are
then stopped and started one at a time by further commands, which must
reuse the options ``up`` recorded (trust keys, CA, ports), so a deploy after
a restart still succeeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from knightwatch.localfleet import LocalFleet, stop_fleet
from tests.integration.conftest import SETTLE_S, Releases, assert_fleet_on, deploy_ok

KNIGHTWATCH = str(Path(sys.executable).with_name("knightwatch"))


def fleet_cmd(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``knightwatch fleet ARGS --dir DIRECTORY`` and capture its output."""
    return subprocess.run(
        [KNIGHTWATCH, "fleet", *args, "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "COLUMNS": "250"},
    )


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Iterator[Path]:
    """A two-node fleet started by ``knightwatch fleet up`` and deployed to v1."""
    where = tmp_path_factory.mktemp("fleet-cli") / "fleet"
    up = fleet_cmd(
        where, "up", "--nodes", "2", "--trust", str(releases.public_key),
        "--store", str(releases.store), "--release", releases.v1.release_id, "--json",
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr
        summary = json.loads(up.stdout)
        assert summary["server"].startswith("https://")
        assert summary["deployment"]["state"] == "SUCCEEDED"
        yield where
    finally:
        stop_fleet(where)


def pid(directory: Path, piece: str) -> int:
    """The pid ``piece``'s pid file names."""
    return int((directory / "pids" / f"{piece}.pid").read_text())


def test_the_fleet_file_pins_the_ca_and_records_the_options(directory: Path) -> None:
    """fleet.json (0600) names the CA and the options a later start reuses."""
    path = directory / "fleet.json"
    data = json.loads(path.read_text())
    assert path.stat().st_mode & 0o777 == 0o600
    assert Path(data["ca"]).is_file()
    assert data["options"]["tls"] is True
    assert data["options"]["trust"], "the trust keys are recorded"


def test_restart_a_node_then_the_server_and_deploy(directory: Path, releases: Releases) -> None:
    """node1 and the server restarted by the CLI keep the fleet working: a deploy succeeds."""
    before = pid(directory, "node1")
    restarted = fleet_cmd(directory, "restart", "node1", "--json")
    assert restarted.returncode == 0, restarted.stderr
    answer = json.loads(restarted.stdout)
    assert answer["piece"] == "node1" and answer["pid"] != before
    assert fleet_cmd(directory, "stop", "server").returncode == 0
    started = fleet_cmd(directory, "start", "server")
    assert started.returncode == 0, started.stderr
    assert "started server" in started.stdout
    fleet = LocalFleet.attach(directory)
    try:
        fleet.wait_connected(fleet.names, timeout=SETTLE_S)
        log = (directory / "logs" / "node1.log").read_text()
        assert "no-trusted-keys" not in log, "the restarted agent has its trust keys"
        fleet.push(releases.store, releases.v2.release_id)
        deploy_ok(fleet, releases.v2)
        assert_fleet_on(fleet, releases.v2.digest)
    finally:
        fleet.client.close()


def test_stop_then_start_a_node(directory: Path) -> None:
    """A stopped node shows as disconnected; start brings it back connected."""
    stopped = fleet_cmd(directory, "stop", "node2")
    assert stopped.returncode == 0, stopped.stderr
    assert not (directory / "pids" / "node2.pid").exists()
    started = fleet_cmd(directory, "start", "node2", "--json")
    assert started.returncode == 0, started.stderr
    fleet = LocalFleet.attach(directory)
    try:
        nodes = {n["name"]: n for n in fleet.status()["nodes"]}
    finally:
        fleet.client.close()
    assert nodes["node2"]["connected"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("start", "node9"), "this fleet has no node 'node9'"),
        (("start", "node1"), "node1 is already running"),
        (("restart", "server"), "no fleet is up in"),
    ],
)
def test_bad_requests_are_refused_in_one_line(
    directory: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    """Unknown node, a piece already running, no fleet: exit 2, one line plus a hint."""
    where = tmp_path / "nothing" if "no fleet" in message else directory
    result = fleet_cmd(where, *args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert 1 <= len(lines) <= 2 and message in lines[0], result.stderr


def test_up_without_trust_is_refused(tmp_path: Path) -> None:
    """``fleet up`` without --trust exits 2: agents would have no trust anchor."""
    result = fleet_cmd(tmp_path / "f", "up", "--nodes", "1")
    assert result.returncode == 2
    assert "fleet up needs --trust" in result.stderr
    assert not (tmp_path / "f" / "pids").exists()
