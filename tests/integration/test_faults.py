"""Faults on the nodes during a deploy: the fleet never ends up split (P1).

Each test breaks its own two-node fleet: an agent killed in the middle of
PREPARE or COMMIT, a read-only or full release directory, a blob served with
one wrong byte, a first deploy with nothing to roll back to, a node lost
during a rollback, a service orphaned by a killed agent. The windows inside
PREPARE and COMMIT are hit with the agent's fault hook
``KNIGHTWATCH_FAULT_PAUSE_IN=prepare|commit``, which makes it stall at that
point of the command until it is killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from knightwatch.bundle import BuildResult, ReleaseStore
from knightwatch.localfleet import LocalFleet
from knightwatch.testing import wait_until
from tests.integration.conftest import (
    SETTLE_S,
    Releases,
    assert_fleet_on,
    current_digest,
    deploy_ok,
    fleet_digests,
    log_tail,
    make_fleet,
    pid_alive,
    processes_under,
    wait_explained,
)

PAUSE_ENV = "KNIGHTWATCH_FAULT_PAUSE_IN"
VICTIM = "node2"


@pytest.fixture
def fleet(tmp_path: Path, releases: Releases) -> Iterator[LocalFleet]:
    """A fresh two-node fleet with v1 and v2 pushed, nothing deployed."""
    with make_fleet(tmp_path / "fleet", releases, nodes=2) as local:
        for release in (releases.v1, releases.v2):
            local.push(releases.store, release.release_id)
        yield local


def restart_agent_with_env(
    fleet: LocalFleet, name: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restart node ``name``'s agent with ``env`` added to its environment."""
    fleet.stop_agent(name)
    with monkeypatch.context() as patched:  # LocalFleet spawns with this process's environment
        for key, value in env.items():
            patched.setenv(key, value)
        fleet.start_agent(name)
    fleet.wait_connected([name], timeout=SETTLE_S)


def wait_paused(
    fleet: LocalFleet, deployment_id: int, paused: Callable[[], bool], command: str
) -> None:
    """Wait until the victim is inside ``command`` and check it stays there (the hook sleeps)."""
    before = {"prepare": {"PREPARING"}, "commit": {"PREPARING", "PREPARED", "COMMITTING"}}

    def inside_or_past() -> str | None:
        if paused():
            return "paused"
        return None if node_phase(fleet, deployment_id, VICTIM) in before[command] else "past"

    where = wait_until(inside_or_past, timeout=SETTLE_S, what=f"{VICTIM} to reach {command}")
    if where == "paused":
        time.sleep(1.0)  # the hook sleeps far longer: the window must still be open
    assert where == "paused" and paused(), (
        f"{VICTIM} did not stay paused in {command}: is the agent's {PAUSE_ENV} hook "
        f"implemented? Without it this window cannot be hit deterministically. Its log:\n"
        + log_tail(fleet, VICTIM)
    )


def release_blobs(releases: Releases, release: BuildResult) -> dict[str, int]:
    """digest → size of every blob of ``release``."""
    manifest = json.loads(
        ReleaseStore(releases.store).find(release.release_id).read("manifest.json")
    )
    return {f["digest"]: f["size"] for f in manifest["files"] if f.get("digest")}


def staging_dirs(fleet: LocalFleet, name: str) -> list[Path]:
    """Half-built release trees on node ``name``."""
    return sorted((fleet.root(name) / "releases").glob(".staging-*"))


def cached(fleet: LocalFleet, name: str, digest: str) -> bool:
    """Whether node ``name``'s blob cache holds ``digest``."""
    return (fleet.root(name) / "blobs" / "sha256" / digest[:2] / digest[2:]).is_file()


def node_phase(fleet: LocalFleet, deployment_id: int, name: str) -> str:
    """Node ``name``'s phase in a deployment."""
    data = fleet.client.get(f"/deployments/{deployment_id}")
    return str(next(r["phase"] for r in data["nodes"] if r["node"] == name))


class TestAgentKilled:
    def test_agent_killed_during_prepare_fails_the_deploy_and_switches_nobody(
        self, fleet: LocalFleet, releases: Releases, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An agent SIGKILLed in the middle of PREPARE: FAILED, every node still on v1."""
        deploy_ok(fleet, releases.v1)
        restart_agent_with_env(fleet, VICTIM, {PAUSE_ENV: "prepare"}, monkeypatch)
        started = fleet.deploy(releases.v2.release_id, wait=False)
        blobs = release_blobs(releases, releases.v2)

        def paused_in_prepare() -> bool:  # blobs fetched, tree not yet published
            return (
                bool(staging_dirs(fleet, VICTIM))
                and all(cached(fleet, VICTIM, d) for d in blobs)
                and not (fleet.root(VICTIM) / "releases" / releases.v2.digest).exists()
            )

        wait_paused(fleet, started["id"], paused_in_prepare, "prepare")
        fleet.stop_agent(VICTIM, signal.SIGKILL)

        done = fleet.wait_deployment(started["id"], timeout=180)
        assert done["state"] == "FAILED", done
        assert VICTIM in done["reason"], done["reason"]
        assert fleet_digests(fleet) == dict.fromkeys(fleet.names, releases.v1.digest)

        fleet.start_agent(VICTIM)
        fleet.wait_connected([VICTIM], timeout=SETTLE_S)
        fleet.wait_state("CONVERGED", timeout=SETTLE_S)
        assert_fleet_on(fleet, releases.v1.digest)
        assert staging_dirs(fleet, VICTIM) == []

    def test_agent_killed_during_commit_rolls_the_whole_fleet_back(
        self, fleet: LocalFleet, releases: Releases, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An agent SIGKILLed after its switch: once it returns, every node is back on v1."""
        deploy_ok(fleet, releases.v1)
        restart_agent_with_env(fleet, VICTIM, {PAUSE_ENV: "commit"}, monkeypatch)
        started = fleet.deploy(releases.v2.release_id, wait=False)

        service_log = fleet.root(VICTIM) / "logs" / "service.log"

        def paused_in_commit() -> bool:  # switched, v2's service not started yet
            return (
                current_digest(fleet, VICTIM) == releases.v2.digest
                and f"starting {releases.v2.release_id}" not in service_log.read_text()
            )

        wait_paused(fleet, started["id"], paused_in_commit, "commit")
        fleet.stop_agent(VICTIM, signal.SIGKILL)

        wait_until(
            lambda: fleet.client.get(f"/deployments/{started['id']}")["state"] == "ROLLING_BACK",
            timeout=SETTLE_S,
            what="the deployment to roll back",
        )
        fleet.start_agent(VICTIM)
        done = fleet.wait_deployment(started["id"], timeout=180)
        assert done["state"] == "ROLLED_BACK", done
        assert VICTIM in done["reason"], done["reason"]
        fleet.wait_state("CONVERGED", timeout=SETTLE_S)
        assert_fleet_on(fleet, releases.v1.digest)


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs with ``options`` over ``where`` (skip when we cannot); always unmount."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def assert_nobody_switched(fleet: LocalFleet, release: BuildResult) -> None:
    """No node has a ``current``, and the staged trees of ``release`` were abandoned."""
    assert fleet_digests(fleet) == dict.fromkeys(fleet.names)

    def abandoned() -> bool:
        return not any(
            (fleet.root(n) / "releases" / release.digest).exists() or staging_dirs(fleet, n)
            for n in fleet.names
        )

    wait_until(abandoned, timeout=SETTLE_S, what=f"every node to drop {release.release_id}")


class TestDiskFaults:
    def test_read_only_release_directory_aborts_naming_the_node(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """A node that cannot write its release directory fails PREPARE: FAILED, no switch."""
        with tmpfs(fleet.root(VICTIM) / "releases", "ro,size=1m"):
            done = fleet.deploy(releases.v1.release_id, timeout=180)
            assert done["state"] == "FAILED", done
            assert f"{VICTIM}:" in done["reason"], done["reason"]
            assert "Read-only file system" in done["reason"], done["reason"]
            assert_nobody_switched(fleet, releases.v1)

    def test_full_disk_aborts_naming_the_node(self, fleet: LocalFleet, releases: Releases) -> None:
        """A node whose disk fills while staging fails PREPARE: FAILED, no half tree left."""
        with tmpfs(fleet.root(VICTIM) / "releases", "size=64k") as releases_dir:
            filler = releases_dir / ".filler"  # leave room for a few files, not the release
            filler.write_bytes(bytes(56 * 1024))
            done = fleet.deploy(releases.v1.release_id, timeout=180)
            assert done["state"] == "FAILED", done
            assert f"{VICTIM}:" in done["reason"], done["reason"]
            assert "No space left on device" in done["reason"], done["reason"]
            assert_nobody_switched(fleet, releases.v1)


class TestCorruptBlob:
    def test_blob_served_with_a_wrong_byte_is_refused(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """A blob the server serves with one flipped byte: FAILED naming it, nobody switched."""
        blobs = release_blobs(releases, releases.v1)
        digest = max(blobs, key=lambda d: blobs[d])
        path = fleet.directory / "server" / "blobs" / "sha256" / digest[:2] / digest[2:]
        path.chmod(0o644)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))

        done = fleet.deploy(releases.v1.release_id, timeout=180)
        assert done["state"] == "FAILED", done
        assert digest[:12] in done["reason"], done["reason"]
        assert "PREPARE_FAILED" in {r["phase"] for r in done["nodes"]}, done["nodes"]
        assert_nobody_switched(fleet, releases.v1)
        assert not any(cached(fleet, name, digest) for name in fleet.names)

    def test_a_cached_blob_changed_behind_the_audits_back_never_reaches_a_tree(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """Same size, mtime put back, written through the blob cache (no watch sees it).

        The next deployment that uses the blob must not take the agent's hash
        proof for it: the node refuses to switch, evicts the blob, and the
        deployment after that brings the release with its true bytes.
        """
        first = fleet.deploy(releases.v1.release_id, timeout=180)
        assert first["state"] == "SUCCEEDED", first
        shared = set(release_blobs(releases, releases.v1)) & set(
            release_blobs(releases, releases.v2)
        )
        digest = max(shared, key=lambda d: release_blobs(releases, releases.v1)[d])
        blob = fleet.root(VICTIM) / "blobs" / "sha256" / digest[:2] / digest[2:]
        before = blob.stat()
        blob.chmod(0o644)
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0x01
        blob.write_bytes(bytes(data))
        blob.chmod(0o444)
        os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))

        done = fleet.deploy(releases.v2.release_id, timeout=180)
        assert done["state"] == "FAILED", done
        assert f"{VICTIM}:" in done["reason"] and "content differs" in done["reason"], done
        assert not (fleet.root(VICTIM) / "releases" / releases.v2.digest).exists()
        assert not cached(fleet, VICTIM, digest)

        again = fleet.deploy(releases.v2.release_id, timeout=180)
        assert again["state"] == "SUCCEEDED", again
        for path in (fleet.root(VICTIM) / "releases" / releases.v2.digest).rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert hashlib.sha256(path.read_bytes()).hexdigest() in release_blobs(
                    releases, releases.v2
                ), path


class TestRollbackLimits:
    def test_first_deploy_failing_health_leaves_no_node_on_it(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """A first-ever deploy failing its health check leaves no node running that release."""
        fleet.push(releases.store, releases.broken.release_id)
        done = fleet.deploy(releases.broken.release_id, timeout=180)
        assert done["state"] == "ROLLED_BACK", done
        # with no previous release, rolling back means running nothing: no `current`, no
        # service (before 21565b4 the nodes were marked ROLLED_BACK and kept the release)
        assert fleet_digests(fleet) == dict.fromkeys(fleet.names), (
            f"{done['state']} ({done['reason']}) but nodes still run "
            f"{releases.broken.release_id}: {fleet_digests(fleet)}"
        )
        for name in fleet.names:
            with pytest.raises(httpx.ConnectError):
                httpx.get(
                    f"http://127.0.0.1:{fleet.service_port(name)}/health",
                    timeout=5.0,
                    trust_env=False,
                )
            assert processes_under(fleet.root(name) / "releases") == []

    def test_node_lost_during_rollback_is_named_then_caught_up(
        self, tmp_path: Path, releases: Releases, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A node that cannot roll back ends ROLLBACK_FAILED naming it, and is caught up later."""
        with make_fleet(
            tmp_path / "fleet",
            releases,
            nodes=2,
            server_env={"KNIGHTWATCH_ROLLBACK_TIMEOUT_S": "15"},  # node1 needs far less
        ) as fleet:
            for release in (releases.v1, releases.v2):
                fleet.push(releases.store, release.release_id)
            deploy_ok(fleet, releases.v1)
            restart_agent_with_env(fleet, VICTIM, {PAUSE_ENV: "commit"}, monkeypatch)
            started = fleet.deploy(releases.v2.release_id, wait=False)
            wait_paused(
                fleet,
                started["id"],
                lambda: current_digest(fleet, VICTIM) == releases.v2.digest,
                "commit",
            )
            fleet.stop_agent(VICTIM, signal.SIGKILL)  # and it stays away during the rollback

            done = fleet.wait_deployment(started["id"], timeout=180)
            assert done["state"] == "ROLLBACK_FAILED", done
            assert f"rollback failed on {VICTIM}" in done["reason"], done["reason"]
            phases = {row["node"]: row["phase"] for row in done["nodes"]}
            assert phases == {"node1": "ROLLED_BACK", VICTIM: "ROLLBACK_FAILED"}, phases
            assert fleet_digests(fleet) == {"node1": releases.v1.digest, VICTIM: releases.v2.digest}
            # ROLLBACK_FAILED is terminal: it must not hold the fleet in DEPLOYING, refuse
            # every later deploy and block the catch-up (store/queries.py TERMINAL_STATES)
            status = fleet.status()
            assert status["deployment_id"] is None, status["reasons"]
            assert status["state"] == "MIXED", status
            assert any(VICTIM in reason for reason in status["reasons"]), status["reasons"]

            fleet.start_agent(VICTIM)
            fleet.wait_connected([VICTIM], timeout=SETTLE_S)
            fleet.wait_state("CONVERGED", timeout=SETTLE_S)
            assert_fleet_on(fleet, releases.v1.digest)


class TestOrphanedService:
    def test_service_left_running_by_a_killed_agent_is_replaced_on_restart(
        self, fleet: LocalFleet, releases: Releases
    ) -> None:
        """A service the killed agent had not journaled yet is stopped by the next agent."""
        deploy_ok(fleet, releases.v1)
        orphan = next(n for n in fleet.status()["nodes"] if n["name"] == VICTIM)["service_pid"]
        fleet.stop_agent(VICTIM, signal.SIGKILL)  # the service runs on in its own session
        assert pid_alive(orphan)
        # The agent journals the service's identity only after spawning it; a kill in
        # between leaves a running service that state.json does not name. Recreate that
        # instant exactly: the same journal without its `service` record.
        state_file = fleet.root(VICTIM) / "state.json"
        state = json.loads(state_file.read_text())
        state["service"] = None
        temp = state_file.with_name(".state.json.test")
        temp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        temp.replace(state_file)

        fleet.start_agent(VICTIM)
        fleet.wait_connected([VICTIM], timeout=SETTLE_S)
        # Left running, the orphan would keep the service port: the new service would die
        # with "Address already in use" while a process nobody tracks answered the node's
        # health and /version checks. The agent stops any process running from releases/.
        wait_explained(
            fleet,
            lambda: not pid_alive(orphan),
            f"the orphaned service {orphan} to be stopped",
            logs=(VICTIM,),
        )
        assert_fleet_on(fleet, releases.v1.digest)
