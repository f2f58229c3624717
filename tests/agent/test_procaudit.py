"""The process audit (P2): stale service processes and unmanaged processes under ROOT.

Every test runs real processes against a fake ROOT holding two releases, A
(old) and B (current). Unless a test is about the agent's own descendants,
the audit is told that a separate sleeper is the agent, so the processes
this test starts count as strangers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from knightwatch.agent.procaudit import ProcessFinding, ServiceIdentity, audit_processes
from knightwatch.agent.process import open_files, read_stat
from knightwatch.testing import wait_until

A = hashlib.sha256(b"release A").hexdigest()
B = hashlib.sha256(b"release B").hexdigest()
SLEEP = "import time; time.sleep(60)"
HOLD_OPEN = "import os, time; f = open(os.environ['HOLD']); time.sleep(60)"
HOLD_MAPPED = (
    "import mmap, os, time\n"
    "with open(os.environ['HOLD'], 'rb') as f:\n"
    "    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\n"
    "time.sleep(60)\n"
)
FORK_INTO = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', {sleep!r}], cwd={cwd!r})\n"
    "time.sleep(60)\n"
)


@dataclass(frozen=True)
class Node:
    """A fake ROOT: releases/A and releases/B, current -> releases/B, and a place outside."""

    root: Path
    elsewhere: Path

    def release(self, digest: str) -> Path:
        """``ROOT/releases/<digest>``."""
        return self.root / "releases" / digest


Spawn = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    """Build the fake ROOT with a file in each release and a logs directory."""
    root = tmp_path / "root"
    for digest in (A, B):
        (root / "releases" / digest).mkdir(parents=True)
        (root / "releases" / digest / "x.txt").write_text(f"{digest}\n")
    (root / "logs").mkdir()
    (root / "current").symlink_to(f"releases/{B}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return Node(root, elsewhere)


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start Python processes; kill each one (its whole group if it leads one) at teardown."""
    started: list[tuple[subprocess.Popen[bytes], bool]] = []

    def start(
        code: str, cwd: Path, *args: str, session: bool = False, hold: Path | None = None
    ) -> subprocess.Popen[bytes]:
        env = {**os.environ, "HOLD": os.fspath(hold)} if hold else None
        process = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=session,
        )
        started.append((process, session))
        return process

    yield start
    for process, session in started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if session:
                os.killpg(process.pid, signal.SIGKILL)
            elif process.poll() is None:
                process.kill()
        process.wait()


@pytest.fixture
def agent_pid(spawn: Spawn, node: Node) -> int:
    """A sleeper standing in for the agent, so that this test's children are not its own."""
    return spawn(SLEEP, node.elsewhere).pid


def audit(
    node: Node,
    agent_pid: int,
    *,
    service: ServiceIdentity | None = None,
    switched_at: float | None = None,
    current: str | None = B,
) -> dict[int, ProcessFinding]:
    """Run the audit on ``node`` and index the findings by pid (asserting one per pid)."""
    findings = audit_processes(
        node.root, current, service, switched_at, agent_pid=agent_pid, tolerance_s=0.5
    )
    assert findings == sorted(findings, key=lambda f: (f.kind, f.pid))
    by_pid = {finding.pid: finding for finding in findings}
    assert len(by_pid) == len(findings)
    return by_pid


def wait_open(pid: int, path: Path) -> None:
    """Wait until ``pid`` has ``path`` open or mapped."""

    def holds() -> bool:
        maps = Path(f"/proc/{pid}/maps").read_text()
        return os.fspath(path) in open_files(pid) or os.fspath(path) in maps

    wait_until(holds, timeout=30, what=f"pid {pid} to open {path}")


def group_members(pgid: int) -> list[int]:
    """The live pids of process group ``pgid``."""
    pids = (int(name) for name in os.listdir("/proc") if name.isdigit())
    stats = (read_stat(pid) for pid in pids)
    return [s.pid for s in stats if s is not None and s.pgid == pgid and not s.dead]


class TestUnmanaged:
    def test_process_working_in_an_old_release_is_reported_with_that_release(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """A stranger whose cwd is releases/A is unmanaged, and the detail says A is not current."""
        process = spawn(SLEEP, node.release(A))
        finding = audit(node, agent_pid)[process.pid]
        assert finding.kind == "unmanaged-process"
        assert finding.release == A
        assert f"pid {process.pid} (python" in finding.detail
        assert f"runs from release {A[:12]}… which is not current" in finding.detail
        assert f"(cwd {node.release(A)})" in finding.detail

    def test_a_reader_of_an_old_release_is_not_reported(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """A stranger elsewhere that only holds releases/A/x.txt open (a backup, a checksum
        sweep) runs no release code: not drift."""
        held = node.release(A) / "x.txt"
        process = spawn(HOLD_OPEN, node.elsewhere, hold=held)
        wait_open(process.pid, held)
        assert process.pid not in audit(node, agent_pid)

    def test_an_interpreter_running_an_old_release_script_is_reported(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """python3 started elsewhere with a script of release A on its command line is drift."""
        script = node.release(A) / "x.txt"
        process = spawn(HOLD_OPEN, node.elsewhere, os.fspath(script), hold=script)
        wait_open(process.pid, script)
        finding = audit(node, agent_pid)[process.pid]
        assert finding.kind == "unmanaged-process"
        assert finding.release == A

    def test_a_checksum_tool_naming_a_release_file_is_not_reported(
        self, node: Node, agent_pid: int, tmp_path: Path
    ) -> None:
        """sha256sum (whose name starts like "sh") only reads the files it names: not drift."""
        named = node.release(A) / "x.txt"
        fifo = tmp_path / "pending"
        os.mkfifo(fifo)  # sha256sum hashes x.txt, then waits here: alive, naming x.txt
        process = subprocess.Popen(["sha256sum", os.fspath(named), os.fspath(fifo)], cwd=tmp_path)
        try:
            wait_until(
                lambda: (stat := read_stat(process.pid)) is not None and stat.comm == "sha256sum",
                timeout=30,
                what="sha256sum to run",
            )
            assert process.pid not in audit(node, agent_pid)
        finally:
            process.kill()
            process.wait()

    def test_file_mapped_after_its_fd_is_closed_is_still_seen(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """A file of an old release that is only mapped (fd closed) still counts."""
        held = node.release(A) / "x.txt"
        process = spawn(HOLD_MAPPED, node.elsewhere, hold=held)
        wait_open(process.pid, held)
        finding = audit(node, agent_pid)[process.pid]
        assert finding.release == A
        assert f"(mapped {held})" in finding.detail

    def test_command_line_naming_a_release_path_is_reported(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """A stranger whose argv names a path in releases/A is unmanaged though it opens nothing."""
        named = node.release(A) / "x.txt"
        process = spawn(SLEEP, node.elsewhere, f"--input={named}")
        finding = audit(node, agent_pid)[process.pid]
        assert finding.kind == "unmanaged-process"
        assert finding.release == A
        assert f"(argv {named})" in finding.detail

    def test_process_in_the_current_release_that_is_not_the_service(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """A stranger working in the current release B is unmanaged: it is not the service."""
        process = spawn(SLEEP, node.release(B))
        finding = audit(node, agent_pid)[process.pid]
        assert finding.kind == "unmanaged-process"
        assert finding.release == B
        assert "but is not the service" in finding.detail

    def test_process_elsewhere_under_root_names_no_release(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """A stranger working in ROOT/logs is unmanaged, with no release to name."""
        process = spawn(SLEEP, node.root / "logs")
        finding = audit(node, agent_pid)[process.pid]
        assert finding.kind == "unmanaged-process"
        assert finding.release is None
        assert f"runs from {node.root} (cwd {node.root / 'logs'})" in finding.detail

    def test_several_reasons_make_one_finding_led_by_the_old_release(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """cwd in the current release plus a script of A as argv: one finding, A named first."""
        held = node.release(A) / "x.txt"
        process = spawn(HOLD_OPEN, node.release(B), os.fspath(held), hold=held)
        wait_open(process.pid, held)
        finding = audit(node, agent_pid)[process.pid]
        assert finding.release == A
        assert finding.detail.index(A[:12]) < finding.detail.index(f"cwd {node.release(B)}")
        assert "; also " in finding.detail

    def test_with_no_current_release_every_release_is_old(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """When no release is current, a stranger in releases/B runs from a release not current."""
        process = spawn(SLEEP, node.release(B))
        finding = audit(node, agent_pid, current=None)[process.pid]
        assert f"runs from release {B[:12]}… which is not current" in finding.detail

    def test_a_removed_release_is_still_named(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """A stranger whose release tree was renamed to .trash-… and deleted is still caught."""
        process = spawn(SLEEP, node.release(A))
        trash = node.root / "releases" / f".trash-{A}-0a1b2c3d"
        node.release(A).rename(trash)
        shutil.rmtree(trash)
        finding = audit(node, agent_pid)[process.pid]
        assert finding.release == A
        assert "(deleted)" in finding.detail

    def test_root_given_through_a_symlink_is_resolved(
        self, node: Node, spawn: Spawn, agent_pid: int, tmp_path: Path
    ) -> None:
        """ROOT passed as a symlink still matches the kernel's resolved paths."""
        link = tmp_path / "root-link"
        link.symlink_to(node.root)
        process = spawn(SLEEP, node.release(A))
        findings = audit(Node(link, node.elsewhere), agent_pid)
        assert findings[process.pid].release == A


class TestNotReported:
    def test_processes_unrelated_to_root_are_not_reported(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """A process working, opening and naming things outside ROOT is not reported."""
        outside = node.elsewhere / "y.txt"
        outside.write_text("y\n")
        process = spawn(HOLD_OPEN, node.elsewhere, os.fspath(outside), hold=outside)
        wait_open(process.pid, outside)
        assert process.pid not in audit(node, agent_pid)
        assert agent_pid not in audit(node, agent_pid)

    def test_the_agent_and_its_descendants_are_not_reported(self, node: Node, spawn: Spawn) -> None:
        """With this process as the agent, its children in the release (check commands) pass."""
        child = spawn(SLEEP, node.release(B))
        grandchild_parent = spawn(
            FORK_INTO.format(sleep=SLEEP, cwd=os.fspath(node.release(A))),
            node.elsewhere,
            session=True,
        )
        wait_until(
            lambda: len(group_members(grandchild_parent.pid)) == 2,
            timeout=30,
            what="the grandchild",
        )
        findings = audit(node, os.getpid())
        members = group_members(grandchild_parent.pid)
        assert not {child.pid, *members} & findings.keys()

    def test_a_zombie_is_skipped(self, node: Node, spawn: Spawn, agent_pid: int) -> None:
        """A child that exited in releases/A and is not reaped yet is not reported."""
        process = spawn("pass", node.release(A))

        def zombie() -> bool:
            stat = read_stat(process.pid)
            return stat is not None and stat.dead

        wait_until(zombie, timeout=30, what="the child to exit")
        assert process.pid not in audit(node, agent_pid)


class TestService:
    def test_service_started_after_the_switch_in_the_current_release_passes(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """The service group, started from B right after the switch to B, has no finding."""
        switched_at = time.time()
        service = spawn(SLEEP, node.release(B), session=True)
        findings = audit(
            node, agent_pid, service=ServiceIdentity(service.pid, B), switched_at=switched_at
        )
        assert service.pid not in findings

    def test_service_started_before_the_switch_is_stale(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """A service whose start precedes the last switch by more than the tolerance is stale."""
        service = spawn(SLEEP, node.release(B), session=True)
        switched_at = time.time() + 1.0
        findings = audit(
            node, agent_pid, service=ServiceIdentity(service.pid, B), switched_at=switched_at
        )
        finding = findings[service.pid]
        assert finding.kind == "stale-process"
        assert finding.release == B
        assert "s before the last switch" in finding.detail

    def test_service_working_in_an_old_release_is_stale(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """A service whose cwd is releases/A while current is B is stale, naming A."""
        switched_at = time.time()
        service = spawn(SLEEP, node.release(A), session=True)
        findings = audit(
            node, agent_pid, service=ServiceIdentity(service.pid, B), switched_at=switched_at
        )
        finding = findings[service.pid]
        assert finding.kind == "stale-process"
        assert finding.release == A
        assert f"runs from release {A[:12]}… which is not current" in finding.detail

    def test_service_started_from_an_older_release_is_stale(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """A service the agent started from A while current is B is stale, wherever it works."""
        service = spawn(SLEEP, node.release(B), session=True)
        findings = audit(node, agent_pid, service=ServiceIdentity(service.pid, A))
        assert f"was started from release {A[:12]}…, current is {B[:12]}…" in (
            findings[service.pid].detail
        )

    def test_service_working_outside_any_release_is_stale(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """A service whose cwd is not in the current release at all is stale."""
        service = spawn(SLEEP, node.elsewhere, session=True)
        findings = audit(node, agent_pid, service=ServiceIdentity(service.pid, B))
        finding = findings[service.pid]
        assert finding.kind == "stale-process"
        assert f"works outside the current release (cwd {node.elsewhere})" in finding.detail

    def test_every_member_of_the_service_group_is_checked(
        self, node: Node, spawn: Spawn, agent_pid: int
    ) -> None:
        """A group member other than the leader, working in releases/A, is stale on its own."""
        switched_at = time.time()
        code = FORK_INTO.format(sleep=SLEEP, cwd=os.fspath(node.release(A)))
        service = spawn(code, node.release(B), session=True)
        wait_until(
            lambda: len(group_members(service.pid)) == 2, timeout=30, what="the service's child"
        )
        findings = audit(
            node, agent_pid, service=ServiceIdentity(service.pid, B), switched_at=switched_at
        )
        (member,) = set(group_members(service.pid)) - {service.pid}
        assert service.pid not in findings
        assert findings[member].kind == "stale-process"
        assert findings[member].release == A
