"""The continuous configuration audit on real agents and real files (P2, P3).

One fleet is shared by the tamper matrix: each tamper must turn the node
DRIFTED with a finding that names it, deploys are then refused, and
``knightwatch reconcile`` restores the exact release (and stops whatever
ran from the agent's root) through a recorded deployment, after which the
node is clean again and the next tamper starts from a clean node.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from knightwatch.bundle import BuildResult, SigningKey, build_release
from knightwatch.errors import GateRefusedError
from knightwatch.localfleet import LocalFleet
from knightwatch.testing import free_port, wait_until
from tests.helpers import EXAMPLE
from tests.integration.conftest import (
    BUILD_ENV,
    SETTLE_S,
    Releases,
    converge_on,
    deploy_ok,
    kw,
    make_fleet,
    pid_alive,
    processes_under,
    smars_variant,
)

NODE = "node1"
Finding = dict[str, Any]

# A v1 whose service leaves a worker behind when it is stopped: on SIGTERM it
# daemonizes a worker (an intermediate process starts it in a session of its
# own and exits), then exits. The worker was not among the service's processes
# when the stop began, so the switch to v2 cannot know it; it keeps old code in
# memory. (A worker that only left the group while the service ran is still a
# descendant, and every stop finds it: see test_supervisor.)
LEAKY_LAUNCHER = '''#!/usr/bin/env python3
"""Start the SMARS router; when told to stop, leave a daemonized worker behind."""
import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
DAEMONIZE = (
    "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; "
    "time.sleep(3600)'], start_new_session=True, stdin=subprocess.DEVNULL, "
    "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)"
)


def leave_a_worker(_signum, _frame):
    subprocess.run([sys.executable, "-c", DAEMONIZE], cwd=str(HERE), check=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, leave_a_worker)
sys.path.insert(0, str(HERE))
from smars.router import serve  # noqa: E402

serve(int(os.environ.get("SMARS_PORT", "18080")))
'''


@pytest.fixture(scope="module")
def leaky(
    releases: Releases, signing_key: SigningKey, tmp_path_factory: pytest.TempPathFactory
) -> BuildResult:
    """smars 2012.8.0-leaky: its service leaves a detached worker running from its tree."""
    work = tmp_path_factory.mktemp("leaky")
    source = smars_variant(work / "smars", "2012.8.0", launcher=LEAKY_LAUNCHER)
    return build_release(source, releases.store, signing_key, environ=BUILD_ENV)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Iterator[LocalFleet]:
    """One node on v2 (v1 kept on disk as its rollback target), audited every second."""
    directory = tmp_path_factory.mktemp("audit-fleet")
    audit_args = ("--stat-interval", "1", "--functional-check-interval", "2")
    with make_fleet(directory, releases, nodes=1, agent_args=audit_args) as fleet:
        fleet.push(releases.store, releases.v1.release_id)
        fleet.push(releases.store, releases.v2.release_id)
        deploy_ok(fleet, releases.v1)
        converge_on(fleet, releases.v2)
        wait_clean(fleet)
        yield fleet


def node_status(fleet: LocalFleet) -> dict[str, Any]:
    """The node's entry in the fleet status."""
    return next(n for n in fleet.status()["nodes"] if n["name"] == NODE)


def wait_clean(fleet: LocalFleet) -> dict[str, Any]:
    """Wait until the node's audit has run and found nothing."""

    def clean() -> dict[str, Any] | None:
        node = node_status(fleet)
        return node if node["drift_state"] == "clean" and not node["findings"] else None

    return wait_until(clean, timeout=SETTLE_S, what=f"{NODE} clean", interval=0.2)


def wait_finding(fleet: LocalFleet, match: Callable[[Finding], bool], what: str) -> Finding:
    """Wait until the node is DRIFTED with a finding ``match`` accepts; return the finding."""

    def found() -> Finding | None:
        node = node_status(fleet)
        if node["drift_state"] != "drifted":
            return None
        return next((f for f in node["findings"] if match(f)), None)

    return wait_until(found, timeout=SETTLE_S, what=what, interval=0.1)


def reconcile(fleet: LocalFleet) -> dict[str, Any]:
    """Run ``knightwatch reconcile`` through the API; insist it SUCCEEDED and the node is clean."""
    started = fleet.client.post(f"/nodes/{NODE}/reconcile", {"reason": "test"})
    assert started["kind"] == "reconcile"
    done = fleet.wait_deployment(started["id"], timeout=180)
    assert done["state"] == "SUCCEEDED", done
    wait_clean(fleet)
    return done


def tree(fleet: LocalFleet, release: BuildResult) -> Path:
    """The release's tree on the node."""
    return fleet.root(NODE) / "releases" / release.digest


def writable(path: Path) -> None:
    """Let the test (root or not) change a read-only release path."""
    path.parent.chmod(0o755)
    if path.exists() and not path.is_symlink():
        path.chmod(0o644)


def drift_alerts(fleet: LocalFleet, state: str) -> list[dict[str, Any]]:
    """The fleet's drift alerts in ``state`` (a loaded machine may also raise a scrape alert)."""
    alerts: list[dict[str, Any]] = fleet.client.get(f"/alerts?state={state}")
    return [alert for alert in alerts if alert["rule"] == "node-drift"]


def flip_byte(path: Path) -> None:
    """Change one byte of ``path`` in place (through any hard link)."""
    writable(path)
    with path.open("r+b") as handle:
        handle.seek(10)
        byte = handle.read(1)
        handle.seek(10)
        handle.write(bytes([byte[0] ^ 0x01]))


def test_modified_byte_is_drift_and_blocks_deploys(fleet: LocalFleet, releases: Releases) -> None:
    """One changed byte: DRIFTED naming the file and both digests; deploys refused; reconciled."""
    flip_byte(tree(fleet, releases.v2) / "smars" / "orders.py")
    finding = wait_finding(
        fleet, lambda f: f["kind"] == "modified" and f["path"] == "smars/orders.py", "modified"
    )
    assert finding["severity"] == "critical"
    assert finding["expected"] != finding["actual"]
    assert fleet.status()["state"] == "DRIFTED"
    with pytest.raises(GateRefusedError, match="drift"):
        fleet.client.post("/deployments", {"release": releases.v1.release_id})
    [alert] = drift_alerts(fleet, "firing")
    assert (alert["node"], alert["severity"]) == (NODE, "critical")
    assert "smars/orders.py" in alert["summary"]
    reconcile(fleet)
    assert fleet.status()["state"] == "CONVERGED"
    assert drift_alerts(fleet, "firing") == []
    assert drift_alerts(fleet, "resolved")[0]["id"] == alert["id"]
    data = (tree(fleet, releases.v2) / "smars" / "orders.py").read_bytes()
    assert data == (EXAMPLE / "smars" / "orders.py").read_bytes()


def test_deleted_file_is_missing(fleet: LocalFleet, releases: Releases) -> None:
    """A deleted file is reported missing."""
    target = tree(fleet, releases.v2) / "config" / "routing.toml"
    writable(target)
    target.unlink()
    wait_finding(
        fleet, lambda f: f["kind"] == "missing" and f["path"] == "config/routing.toml", "missing"
    )
    reconcile(fleet)
    assert target.is_file()


def test_added_python_file_is_critical(fleet: LocalFleet, releases: Releases) -> None:
    """An extra .py beside the release is critical unmanaged code."""
    extra = tree(fleet, releases.v2) / "smars" / "backdoor.py"
    writable(extra)
    extra.write_text("print('hello')\n")
    finding = wait_finding(fleet, lambda f: f.get("path") == "smars/backdoor.py", "extra .py")
    assert (finding["kind"], finding["severity"]) == ("unmanaged", "critical")
    reconcile(fleet)
    assert not extra.exists()


def test_added_pth_file_is_critical(fleet: LocalFleet, releases: Releases) -> None:
    """An extra .pth whose import line would run in every interpreter is critical and says so."""
    extra = tree(fleet, releases.v2) / "zz-hook.pth"
    writable(extra)
    extra.write_text("import os; os.system('true')\n")
    finding = wait_finding(fleet, lambda f: f.get("path") == "zz-hook.pth", "extra .pth")
    assert (finding["kind"], finding["severity"]) == ("unmanaged", "critical")
    assert "every interpreter" in finding["detail"]
    reconcile(fleet)
    assert not extra.exists()


def test_chmod_executable_is_critical(fleet: LocalFleet, releases: Releases) -> None:
    """chmod +x on a non-executable release file is a critical mode change."""
    target = tree(fleet, releases.v2) / "smars" / "orders.py"
    target.chmod(0o555)
    finding = wait_finding(
        fleet, lambda f: f["kind"] == "mode" and f["path"] == "smars/orders.py", "mode"
    )
    assert finding["severity"] == "critical"
    reconcile(fleet)
    assert not os.stat(target).st_mode & 0o111


def test_file_replaced_by_symlink(fleet: LocalFleet, releases: Releases) -> None:
    """A release file replaced by a symlink is a type change naming the link's target."""
    target = tree(fleet, releases.v2) / "smars" / "orders.py"
    writable(target)
    target.unlink()
    target.symlink_to("/etc/hostname")
    finding = wait_finding(
        fleet, lambda f: f["kind"] == "type" and f["path"] == "smars/orders.py", "symlink"
    )
    assert "/etc/hostname" in finding["detail"]
    reconcile(fleet)
    assert target.is_file() and not target.is_symlink()


def test_current_repointed_by_hand(fleet: LocalFleet, releases: Releases) -> None:
    """``current`` re-pointed at the old release by hand is critical drift."""
    root = fleet.root(NODE)
    temporary = root / "current.by-hand"
    temporary.symlink_to(f"releases/{releases.v1.digest}")
    temporary.replace(root / "current")
    finding = wait_finding(fleet, lambda f: f["kind"] == "current", "current re-pointed")
    assert releases.v1.digest in finding["detail"]
    reconcile(fleet)
    assert os.readlink(root / "current") == f"releases/{releases.v2.digest}"


def test_old_tree_copied_over_the_new_one(fleet: LocalFleet, releases: Releases) -> None:
    """Copying v1's files over v2's tree (through the hard links) is found file by file."""
    old, new = tree(fleet, releases.v1), tree(fleet, releases.v2)
    for path in sorted(old.rglob("*")):
        if path.is_file() and not path.is_symlink():
            target = new / path.relative_to(old)
            writable(target)
            target.write_bytes(path.read_bytes())
    wait_finding(
        fleet,
        lambda f: f["kind"] == "modified" and f["path"] == "config/routing.toml",
        "v1's routing.toml",
    )
    reconcile(fleet)
    assert b"EDGX" in (new / "config" / "routing.toml").read_bytes()


def test_process_started_from_old_release(fleet: LocalFleet, releases: Releases) -> None:
    """A service started by hand from the old release's directory is an unmanaged process."""
    old = tree(fleet, releases.v1)
    env = {**os.environ, "SMARS_PORT": str(free_port()), "PYTHONDONTWRITEBYTECODE": "1"}
    process = subprocess.Popen(
        [sys.executable, "bin/smars-router"],
        cwd=old,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        finding = wait_finding(
            fleet,
            lambda f: f["kind"] == "unmanaged-process" and f.get("pid") == process.pid,
            "old copy running",
        )
        assert releases.v1.digest[:12] in finding["detail"]
        reconcile(fleet)
        process.wait(timeout=30)  # reconcile stopped it
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def without_cgroups(fleet: LocalFleet, directory: Path) -> Iterator[None]:
    """Run the node's agent where no cgroup can be created (the /proc fallback), then restore."""
    (directory / "no-cgroups").mkdir(exist_ok=True)
    fleet.stop_agent(NODE)
    fleet.start_agent(NODE, extra=["--cgroup-mount", str(directory / "no-cgroups")])
    fleet.wait_connected([NODE], timeout=SETTLE_S)
    try:
        yield
    finally:
        fleet.stop_agent(NODE)
        fleet.start_agent(NODE)
        fleet.wait_connected([NODE], timeout=SETTLE_S)


def test_a_detached_worker_dies_with_its_cgroup_at_the_switch(
    fleet: LocalFleet, releases: Releases, leaky: BuildResult
) -> None:
    """In a cgroup, the worker leaky daemonizes on SIGTERM is a member: the switch stops it too."""
    if "exact" not in str(node_status(fleet).get("processes")):
        pytest.skip("the agent runs without cgroups here")
    fleet.push(releases.store, leaky.release_id)
    deploy_ok(fleet, leaky)
    old = fleet.root(NODE) / "releases" / leaky.digest.removeprefix("sha256:")
    assert processes_under(old), "leaky's service runs from its tree"
    deploy_ok(fleet, releases.v2)  # the halt signal makes leaky daemonize its worker
    assert processes_under(old) == [], "nothing of the old release outlived the switch"
    wait_clean(fleet)


def test_old_service_process_left_running_after_switch(
    fleet: LocalFleet, releases: Releases, leaky: BuildResult, tmp_path: Path
) -> None:
    """Without cgroups, a worker that survived the switch (old code in memory) is drift."""
    with without_cgroups(fleet, tmp_path):
        fleet.push(releases.store, leaky.release_id)
        deploy_ok(fleet, leaky)
        deploy_ok(fleet, releases.v2)  # the switch stops leaky's service, not its worker
        _leaked_worker_is_found_and_reconciled(fleet, leaky)


def _leaked_worker_is_found_and_reconciled(fleet: LocalFleet, leaky: BuildResult) -> None:
    finding = wait_finding(
        fleet,
        lambda f: (
            f["kind"] in ("unmanaged-process", "stale-process") and leaky.digest[:12] in f["detail"]
        ),
        "leaked worker of the old release",
    )
    pid = finding["pid"]
    assert pid_alive(pid)
    reconcile(fleet)
    wait_until(lambda: not pid_alive(pid), timeout=30, what="leaked worker stopped")


def start_outside_root(argv: list[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own, working in / (nothing of it lies under ROOT)."""
    env = {**os.environ, "SMARS_PORT": str(free_port()), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen(
        argv,
        cwd="/",
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def kill_session(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of ``process``'s group and reap it."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def test_reconcile_stops_a_release_script_run_from_outside_the_root(
    fleet: LocalFleet, releases: Releases
) -> None:
    """``cd / && setsid python3 ROOT/releases/D/bin/smars-router`` is flagged, then stopped."""
    script = tree(fleet, releases.v2) / "bin" / "smars-router"
    process = start_outside_root([sys.executable, str(script)])
    try:
        finding = wait_finding(
            fleet,
            lambda f: f["kind"] == "unmanaged-process" and f.get("pid") == process.pid,
            "release script run from outside the root",
        )
        assert "command line" in finding["detail"]
        done = kw(fleet, "reconcile", "--node", NODE, "--reason", "test", "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
        process.wait(timeout=30)  # the reconcile stopped exactly what the audit flagged
        wait_clean(fleet)
    finally:
        kill_session(process)


def test_reconcile_that_leaves_drift_is_not_succeeded(
    fleet: LocalFleet, releases: Releases
) -> None:
    """A flagged process that comes back as it is stopped: the reconcile fails, naming it."""
    script = tree(fleet, releases.v2) / "bin" / "smars-router"
    # The loop itself (bash, in /) touches nothing under ROOT: only its child is flagged.
    loop = f"while :; do {sys.executable} {script}; sleep 0.05; done"
    respawner = start_outside_root(["bash", "-c", loop])
    try:
        wait_finding(
            fleet,
            lambda f: f["kind"] == "unmanaged-process" and str(script) in f["detail"],
            "respawned release script",
        )
        started = fleet.client.post(f"/nodes/{NODE}/reconcile", {"reason": "test"})
        done = fleet.wait_deployment(started["id"], timeout=180)
        assert done["state"] != "SUCCEEDED", done
        assert "flagged process" in (done["reason"] or ""), done
        assert fleet.status()["state"] == "DRIFTED"
    finally:
        kill_session(respawner)
    wait_clean(fleet)


def test_audit_command_reports_every_file(fleet: LocalFleet, releases: Releases) -> None:
    """``knightwatch audit`` passes on a clean node and names expected and actual digests."""
    clean = kw(fleet, "audit", "--json")
    assert clean.returncode == 0, clean.stderr
    flip_byte(tree(fleet, releases.v2) / "smars" / "router.py")
    extra = tree(fleet, releases.v2) / "notes.txt"
    writable(extra)
    extra.write_text("left behind\n")
    dirty = kw(fleet, "audit", "--node", NODE, "--files")
    assert dirty.returncode == 1, dirty.stdout
    assert "smars/router.py" in dirty.stdout and "notes.txt" in dirty.stdout
    assert "do not match" in dirty.stderr
    reconcile(fleet)
    assert kw(fleet, "audit").returncode == 0
