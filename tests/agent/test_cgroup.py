"""A service in a cgroup of its own: exact membership, a halt nothing escapes, its limits.

Real processes in real cgroups; skipped (with the reason) where this
machine lets no cgroup be created.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from knightwatch.agent import cgroup
from knightwatch.agent.cgroup import (
    CgroupHost,
    ServiceCgroup,
    create_group,
    probe_cgroups,
    remove_empty_groups,
)
from knightwatch.agent.errors import CgroupUnavailableError
from knightwatch.agent.limitwatch import OOM_RULE, PIDS_RULE, LimitWatch, Usage
from knightwatch.agent.procaudit import audit_processes
from knightwatch.agent.process import ProcessStat, read_stat
from knightwatch.agent.runenv import ServiceLaunch
from knightwatch.agent.servicelog import ServiceLog
from knightwatch.agent.supervisor import BEST_EFFORT, Supervisor
from knightwatch.agent.termination import stop_strays
from knightwatch.bundle.spec import LimitsSpec, ServiceSpec, parse_spec
from knightwatch.clock import SystemClock
from knightwatch.errors import SpecError
from knightwatch.protocol.messages import CgroupStatus
from tests.agent.conftest import run
from tests.agent.test_supervisor import DIGEST, FAST, SLEEPER, launch, until


def _host() -> CgroupHost | None:
    try:
        return probe_cgroups()
    except (CgroupUnavailableError, OSError):
        return None


HOST = _host()
needs_cgroups = pytest.mark.skipif(
    HOST is None, reason="no cgroup can be created here (needs root and a cgroup mount)"
)

# Forks a daemon (double fork + setsid) on start and again on SIGTERM, then exits slowly.
DOUBLE_FORK = """\
import os, signal, sys, time

def daemon():
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            while True:
                time.sleep(0.1)
        os._exit(0)

def on_term(*_):
    daemon()
    time.sleep(0.3)
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
daemon()
print(os.getpid(), flush=True)
while True:
    time.sleep(0.1)
"""

FORK_BOMB = """\
import os, time
for _ in range(100):
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
    except OSError:
        pass
print("forked", flush=True)
while True:
    time.sleep(0.1)
"""

MEMORY_HOG = """\
import time
hoard = []
while True:
    hoard.append(bytearray(4 * 1024 * 1024))
    time.sleep(0.001)
"""


@pytest.fixture
def groups() -> Iterator[list[ServiceCgroup]]:
    """Groups to kill and remove at the end of the test, whatever happened."""
    made: list[ServiceCgroup] = []
    yield made
    for group in made:
        with contextlib.suppress(OSError):
            group.kill()
        for _ in range(200):
            if not group.members():
                break
            os.sched_yield()
        group.remove()


def _alive(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and not stat.dead


def _watch(sup: Supervisor) -> LimitWatch:
    """A limit watch over ``sup``'s cgroup, as the agent runs it."""

    def usage() -> Usage | None:
        group = sup.cgroup_status()
        return Usage("svc@1.0", group) if group is not None else None

    return LimitWatch(usage, lambda alerts: None, clock=SystemClock())


def _supervisor(tmp_path: Path, host: CgroupHost | None) -> Supervisor:
    return Supervisor(ServiceLog(tmp_path / "service.log"), policy=FAST, cgroups=host, node="n1")


@needs_cgroups
class TestMembership:
    def test_double_forked_daemons_stay_in_and_a_halt_leaves_none(
        self, tmp_path: Path, groups: list[ServiceCgroup]
    ) -> None:
        """Every process of a double-forking service is a member; a stop leaves none alive."""

        async def scenario() -> None:
            sup = _supervisor(tmp_path, HOST)
            await sup.start(launch(tmp_path, DOUBLE_FORK, halt={"grace_s": 5}))
            group = sup.group
            assert group is not None
            groups.append(group)
            leader = sup.status().pid  # type: ignore[union-attr]

            def others() -> list[ProcessStat]:
                """The live members besides the leader."""
                stats = (read_stat(pid) for pid in group.members() if pid != leader)
                return [s for s in stats if s is not None and not s.dead]

            # The intermediate child is briefly a member in the leader's process group;
            # wait until it has exited, leaving its daemon in a session of its own.
            await until(lambda: bool(now := others()) and all(s.pgid != leader for s in now))
            members = group.members()
            daemons = others()
            assert leader in members and daemons
            assert all(s.pgid != leader and s.pid in members for s in daemons), (
                "the daemon left the service's session, yet is a member"
            )
            status = sup.status()
            assert status.accounting == f"exact (cgroup {HOST.version})"  # type: ignore[union-attr]
            assert status.cgroup is not None and status.cgroup.members == len(members)
            assert status.cgroup.path == str(group.path)
            assert (group.path / "cgroup.procs").exists()
            stopped = await sup.stop(halted=True)
            assert not [pid for pid in members if _alive(pid)]
            assert set(members) <= set(stopped.pids)
            assert not group.path.exists(), "the empty group is removed"

        run(scenario())

    def test_the_halt_signal_daemon_is_killed_too(
        self, tmp_path: Path, groups: list[ServiceCgroup]
    ) -> None:
        """A daemon forked in the SIGTERM handler, after the signal went out, is killed too."""

        async def scenario() -> None:
            sup = _supervisor(tmp_path, HOST)
            await sup.start(launch(tmp_path, DOUBLE_FORK, halt={"grace_s": 0.5}))
            group = sup.group
            assert group is not None
            groups.append(group)
            await until(lambda: len(group.members()) >= 2)
            await sup.stop(halted=True)
            assert not group.members()
            assert not [p for p in _python_processes_under(tmp_path / "rel") if _alive(p)]

        run(scenario())


@needs_cgroups
class TestLimits:
    def test_a_fork_bomb_is_held_at_the_pids_limit(
        self, tmp_path: Path, groups: list[ServiceCgroup]
    ) -> None:
        """A release with pids = 20 that forks 100 children has 20; the limit's counter rises."""

        async def scenario() -> None:
            sup = _supervisor(tmp_path, HOST)
            await sup.start(launch(tmp_path, FORK_BOMB, limits={"pids": 20}))
            group = sup.group
            assert group is not None
            groups.append(group)
            await until(lambda: "forked" in (tmp_path / "service.log").read_text())
            assert len(group.members()) == 20
            status = sup.status()
            assert status.cgroup is not None and status.cgroup.pids_limit_hits > 0
            alerts = _watch(sup).check()
            assert [a.rule for a in alerts] == [PIDS_RULE]
            assert str(group.path) in alerts[0].detail
            await sup.stop()
            assert not group.members()

        run(scenario())

    def test_a_memory_breach_is_counted_as_an_oom_kill(
        self, tmp_path: Path, groups: list[ServiceCgroup]
    ) -> None:
        """A service over its memory limit is OOM-killed inside its group; the counter says so."""

        async def scenario() -> None:
            sup = _supervisor(tmp_path, HOST)
            await sup.start(launch(tmp_path, MEMORY_HOG, limits={"memory": 32 * 1024 * 1024}))
            group = sup.group
            assert group is not None
            groups.append(group)

            def killed() -> bool:
                status = sup.status().cgroup
                return status is not None and status.oom_kills > 0

            await until(killed)
            alerts = _watch(sup).check()
            assert OOM_RULE in [a.rule for a in alerts]
            assert "oom_kill" in next(a.detail for a in alerts if a.rule == OOM_RULE)
            await sup.stop()

        run(scenario())

    def test_limits_are_written_to_the_group(self, groups: list[ServiceCgroup]) -> None:
        """Memory, pids and CPU quota land in the kernel's own files."""
        assert HOST is not None
        limits = LimitsSpec(memory=64 * 1024 * 1024, pids=30, cpu=0.5, cpu_weight=200)
        group = create_group(HOST, f"test-limits-{os.getpid()}", limits)
        groups.append(group)
        if group.version == "v1":
            assert (group.dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == str(
                64 * 1024 * 1024
            )
            assert (group.dirs["pids"] / "pids.max").read_text().strip() == "30"
            assert (group.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
            assert (group.dirs["cpu"] / "cpu.shares").read_text().strip() == "2048"
        else:
            assert (group.path / "memory.max").read_text().strip() == str(64 * 1024 * 1024)
            assert (group.path / "pids.max").read_text().strip() == "30"
            assert (group.path / "cpu.max").read_text().split() == ["50000", "100000"]


class TestFallback:
    def test_an_unwritable_mount_is_refused_with_why(self, tmp_path: Path) -> None:
        """A mount point the agent cannot use gives CgroupUnavailableError naming each layout."""
        mount = tmp_path / "cgroup"
        (mount / "freezer").mkdir(parents=True)
        with pytest.raises(CgroupUnavailableError, match="no cgroup can be created here"):
            probe_cgroups(mount)

    def test_without_cgroups_the_service_runs_best_effort(self, tmp_path: Path) -> None:
        """Without a cgroup the service runs and stops as before; status says best effort."""

        async def scenario() -> None:
            sup = _supervisor(tmp_path, None)
            await sup.start(launch(tmp_path, SLEEPER))
            assert sup.running and sup.group is None
            status = sup.status()
            assert status.accounting == BEST_EFFORT
            assert status.cgroup is None
            pid = status.pid
            assert pid is not None
            await sup.stop()
            assert not _alive(pid)

        run(scenario())


class TestLimitsSpec:
    @pytest.mark.parametrize(
        ("line", "key"),
        [
            ("memory = 1024", "service.limits.memory"),
            ("pids = 0", "service.limits.pids"),
            ("cpu = -1", "service.limits.cpu"),
            ('cpu = "lots"', "service.limits.cpu"),
            ("cpu_weight = 0", "service.limits.cpu_weight"),
            ("memroy = 5", "service.limits.memroy"),
        ],
    )
    def test_bad_values_name_the_key(self, line: str, key: str) -> None:
        """A bad [service.limits] value is refused at build, the error naming file and key."""
        text = SPEC + "[service.limits]\n" + line + "\n"
        with pytest.raises(SpecError, match=rf"knightwatch.toml: {re.escape(key)}:"):
            parse_spec(text)

    def test_good_limits_parse(self) -> None:
        """Every limit set: the spec carries them as written."""
        spec = parse_spec(SPEC + "[service.limits]\nmemory = 8388608\ncpu = 0.5\npids = 20\n")
        assert spec.service is not None
        assert spec.service.limits == LimitsSpec(memory=8388608, cpu=0.5, pids=20)


SPEC = """\
[release]
name = "a"
version = "1.0"
[[component]]
name = "c"
version = "1"
paths = ["*"]
[service]
command = ["x"]
"""


def _python_processes_under(directory: Path) -> list[int]:
    """Pids whose working directory is ``directory`` (the test's release)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{name}/cwd") == str(directory):
                    found.append(int(name))
    return found


def test_signal_is_not_sent_outside_the_group() -> None:
    """An empty group signals nobody (membership is the kernel's, not a guess)."""
    group = ServiceCgroup("v2", {"unified": Path("/nonexistent/knightwatch/x")})
    assert group.members() == []
    group.signal(signal.SIGKILL)  # no member: nothing happens


@needs_cgroups
class TestOnePredicate:
    def test_a_process_started_by_hand_is_a_stranger_and_reconcile_stops_it(
        self, tmp_path: Path, groups: list[ServiceCgroup]
    ) -> None:
        """Members (daemons too) are the service; a hand-started release process is not."""
        root = tmp_path / "root"
        release = root / "releases" / DIGEST
        release.mkdir(parents=True)
        (release / "svc.py").write_text(DOUBLE_FORK)
        (release / "by_hand.py").write_text(SLEEPER)
        spec = ServiceSpec.model_validate({"command": [sys.executable, "svc.py"]})
        service = ServiceLaunch(DIGEST, "svc@1.0", release, spec, {})

        async def scenario() -> None:
            sup = _supervisor(tmp_path, HOST)
            await sup.start(service)
            group = sup.group
            assert group is not None
            groups.append(group)
            await until(lambda: len(group.members()) >= 2)
            out = subprocess.run(
                ["sh", "-c", f"setsid {sys.executable} by_hand.py >/dev/null 2>&1 & echo $!"],
                cwd=release,
                capture_output=True,
                text=True,
                check=True,
            )
            stranger = int(out.stdout)
            try:
                found = audit_processes(root, DIGEST, sup.identity(), None)
                flagged = {f.pid for f in found}
                assert stranger in flagged
                assert not flagged & set(group.members()), "a member counted as a stranger"
                stopped = await stop_strays(root, DIGEST, service=sup.identity())
                assert stranger in {f.pid for f in stopped}
                assert not flagged & set(group.members())
                await until(lambda: not _alive(stranger))
                assert sup.running, "the service itself was left alone"
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stranger, signal.SIGKILL)
            await sup.stop()
            leftovers = audit_processes(root, DIGEST, None, None)
            assert not leftovers, leftovers

        run(scenario())


class TestLimitWatch:
    def test_one_alert_per_rise_of_a_counter(self) -> None:
        """A counter that rises alerts once; unchanged it stays quiet; a new group starts at 0."""
        samples = [
            CgroupStatus(path="/g1", members=3, oom_kills=0, pids_limit_hits=0),
            CgroupStatus(path="/g1", members=3, oom_kills=1, pids_limit_hits=0),
            CgroupStatus(path="/g1", members=3, oom_kills=1, pids_limit_hits=0),
            CgroupStatus(path="/g1", members=20, oom_kills=1, pids_limit_hits=7),
            CgroupStatus(path="/g2", members=1, oom_kills=1, pids_limit_hits=0),
        ]
        it = iter(samples)
        watch = LimitWatch(lambda: Usage("svc@1", next(it)), lambda a: None, clock=SystemClock())
        rules = [[a.rule for a in watch.check()] for _ in samples]
        assert rules == [[], [OOM_RULE], [], [PIDS_RULE], [OOM_RULE]]


def _v2_root() -> Path | None:
    """A v2 hierarchy this test may create groups in (controllers not needed), or None."""
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (root / "cgroup.controllers").exists() and os.access(root, os.W_OK):
            return root
    return None


V2 = _v2_root()


@pytest.mark.skipif(V2 is None, reason="no writable cgroup v2 hierarchy here")
class TestV2Group:
    def test_membership_freeze_and_kill_on_the_unified_hierarchy(self, tmp_path: Path) -> None:
        """A v2 group holds a double-forked daemon, freezes it, and cgroup.kill empties it."""
        assert V2 is not None
        directory = V2 / f"knightwatch-test-{os.getpid()}"
        directory.mkdir()
        group = ServiceCgroup("v2", {"unified": directory})
        try:
            script = tmp_path / "svc.py"
            script.write_text(DOUBLE_FORK)
            leader = subprocess.Popen(
                [sys.executable, str(script)],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                preexec_fn=group.join(),  # noqa: PLW1509  the agent's own way in
                start_new_session=True,
            )
            deadline = 200
            while len(group.members()) < 2 and deadline:
                deadline -= 1
                subprocess.run(["sleep", "0.05"], check=True)
            members = group.members()
            assert leader.pid in members and len(members) >= 2
            group.freeze()
            for _ in range(200):  # freezing completes asynchronously
                if "frozen 1" in (directory / "cgroup.events").read_text():
                    break
                subprocess.run(["sleep", "0.05"], check=True)
            assert "frozen 1" in (directory / "cgroup.events").read_text()
            assert all(read_stat(pid).state in "DST" for pid in members)  # type: ignore[union-attr]
            group.kill()
            leader.wait(timeout=30)
            for _ in range(200):
                if not group.members():
                    break
                subprocess.run(["sleep", "0.05"], check=True)
            assert not group.members()
            assert not [pid for pid in members if _alive(pid)]
        finally:
            with contextlib.suppress(OSError):
                group.kill()
            for _ in range(100):
                if group.remove():
                    break
                subprocess.run(["sleep", "0.05"], check=True)


@needs_cgroups
def test_empty_groups_of_an_earlier_run_are_removed_and_only_those(
    groups: list[ServiceCgroup], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's empty groups go; a group with members, a new one and another node's stay."""
    assert HOST is not None
    mine = f"sweep{os.getpid()}."
    empty = create_group(HOST, mine + "old", None)
    other = create_group(HOST, f"other{os.getpid()}.old", None)
    busy = create_group(HOST, mine + "busy", None)
    groups.extend([empty, other, busy])
    assert remove_empty_groups(HOST, mine) == []  # just made: a start may be about to join it
    monkeypatch.setattr(cgroup, "YOUNG_GROUP_S", 0.0)  # as if made a minute ago
    sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=busy.join())  # noqa: PLW1509
    try:
        assert remove_empty_groups(HOST, mine) == [mine + "old"]
        assert not empty.path.exists() and other.path.exists() and busy.path.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
