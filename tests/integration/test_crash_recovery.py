"""The control plane SIGKILLed at every persisted transition never leaves a split fleet (P1).

Each case runs its own two-node fleet on v1, restarts its control plane with
``KNIGHTWATCH_FAULT_CRASH_AFTER=<transition>`` (the server kills itself
right after committing that transition, before acting on it), starts a
deployment, waits for the crash, restarts the control plane normally and
checks that recovery ends the deployment and leaves every node on the old
release or every node on the new one — which one is decided by the
transition, as :mod:`knightwatch.control.deploy` documents: an unfinished
PREPARE is abandoned, an unfinished switch rolled back, a finished one kept.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from knightwatch.bundle import BuildResult
from knightwatch.control.faults import CRASH_ENV
from knightwatch.errors import KnightwatchError
from knightwatch.localfleet import LocalFleet
from knightwatch.testing import wait_until
from tests.integration.conftest import (
    SETTLE_S,
    Releases,
    assert_fleet_on,
    deploy_ok,
    fleet_digests,
    log_tail,
    make_fleet,
)

Target = Literal["v2", "broken", "corrupt-v2"]


@dataclass(frozen=True)
class Case:
    """Where the control plane dies, what it was deploying, and how recovery must end."""

    crash_after: str
    target: Target
    ends: str
    lands_on_new: bool = False
    strategy: Literal["atomic", "canary"] = "atomic"

    @property
    def id(self) -> str:
        return f"{self.crash_after}-{self.strategy}-{self.target}"


CASES = [
    Case("PREPARING", "v2", ends="FAILED"),
    Case("node:PREPARED", "v2", ends="FAILED"),
    Case("COMMITTING", "v2", ends="ROLLED_BACK"),
    Case("node:ACTIVE", "v2", ends="ROLLED_BACK"),
    Case("SUCCEEDED", "v2", ends="SUCCEEDED", lands_on_new=True),
    Case("CANARY", "v2", ends="ROLLED_BACK", strategy="canary"),
    Case("SOAKING", "v2", ends="ROLLED_BACK", strategy="canary"),
    Case("FAILED", "corrupt-v2", ends="FAILED"),
    Case("ROLLING_BACK", "broken", ends="ROLLED_BACK"),
    Case("node:ROLLED_BACK", "broken", ends="ROLLED_BACK"),
    Case("ROLLED_BACK", "broken", ends="ROLLED_BACK"),
]


@pytest.fixture
def fleet(tmp_path: Path, releases: Releases) -> Iterator[LocalFleet]:
    """A fresh two-node fleet with v1 pushed and deployed normally."""
    with make_fleet(tmp_path / "fleet", releases, nodes=2) as local:
        local.push(releases.store, releases.v1.release_id)
        deploy_ok(local, releases.v1)
        yield local


def corrupt_a_blob_only(fleet: LocalFleet, new: BuildResult, old: BuildResult) -> None:
    """Flip one byte of a blob of ``new`` that ``old`` does not share, in the server's store."""

    def blobs(release: BuildResult) -> set[str]:
        detail = fleet.client.get(f"/releases/{release.digest}")
        return {f["digest"] for f in detail["manifest"]["files"] if f.get("digest")}

    digest = sorted(blobs(new) - blobs(old))[0]
    path = fleet.directory / "server" / "blobs" / "sha256" / digest[:2] / digest[2:]
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_control_plane_killed_at_a_transition_recovers_without_a_split_fleet(
    fleet: LocalFleet, releases: Releases, case: Case
) -> None:
    """A control plane SIGKILLed right after a transition recovers to one release fleet-wide."""
    old = releases.v1
    new = releases.broken if case.target == "broken" else releases.v2
    fleet.push(releases.store, new.release_id)
    if case.target == "corrupt-v2":
        corrupt_a_blob_only(fleet, new, old)
    baseline = fleet.client.get("/deployments")[0]["id"]

    fleet.stop_server()
    fleet.start_server(env={CRASH_ENV: case.crash_after})
    fleet.wait_connected(fleet.names, timeout=SETTLE_S)
    with contextlib.suppress(KnightwatchError):  # it may die before answering (PREPARING)
        fleet.deploy(new.release_id, wait=False, strategy=case.strategy)
    status = fleet.server_exit_status(timeout=180)
    assert status == -signal.SIGKILL, (
        f"the control plane did not kill itself after {case.crash_after} (status {status}):\n"
        + log_tail(fleet, "server")
    )
    fleet.forget_server()

    fleet.start_server()
    latest = wait_until(
        lambda: fleet.client.get("/deployments")[0], timeout=SETTLE_S, what="the deployment list"
    )
    assert latest["id"] > baseline and latest["release_digest"] == new.digest, latest
    done = fleet.wait_deployment(latest["id"], timeout=180)
    fleet.wait_connected(fleet.names, timeout=SETTLE_S)

    on_disk = fleet_digests(fleet)
    assert set(on_disk.values()) in ({old.digest}, {new.digest}), f"split fleet: {on_disk}"
    assert done["state"] == case.ends, done
    expected = new if case.lands_on_new else old
    assert on_disk == dict.fromkeys(fleet.names, expected.digest)
    status_now = fleet.wait_state("CONVERGED", timeout=SETTLE_S)
    assert status_now["desired_release"] == expected.release_id
    assert_fleet_on(fleet, expected.digest)
