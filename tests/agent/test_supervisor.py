"""Supervising a real service process: start, restart, crash loop, halt, adoption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from knightwatch.agent.journal import ServiceRecord
from knightwatch.agent.process import group_alive, identify
from knightwatch.agent.runenv import ServiceLaunch
from knightwatch.agent.servicelog import ServiceLog
from knightwatch.agent.supervisor import RestartPolicy, Supervisor
from knightwatch.bundle.spec import ServiceSpec
from knightwatch.protocol.messages import ServiceState
from knightwatch.testing import wait_until_async
from tests.agent.conftest import run

FAST = RestartPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, health_timeout_s=20, settle_s=0.3)
DIGEST = "d" * 64


def launch(tmp_path: Path, script: str, **spec: Any) -> ServiceLaunch:
    """A service running ``script`` with this Python, from ``tmp_path/rel``."""
    release = tmp_path / "rel"
    release.mkdir(exist_ok=True)
    (release / "svc.py").write_text(script)
    service = ServiceSpec.model_validate({"command": [sys.executable, "svc.py"], **spec})
    variables = {
        "KNIGHTWATCH_RELEASE_ID": "svc@1.0+dddddddddddd",
        "KNIGHTWATCH_RELEASE_DIGEST": DIGEST,
        "KNIGHTWATCH_NODE": "node1",
        "KNIGHTWATCH_MARK": str(tmp_path / "mark"),
    }
    return ServiceLaunch(DIGEST, "svc@1.0+dddddddddddd", release, service, variables)


def supervisor(tmp_path: Path, policy: RestartPolicy = FAST) -> Supervisor:
    """A supervisor logging to ``tmp_path/service.log``."""
    return Supervisor(ServiceLog(tmp_path / "service.log"), policy=policy)


async def until(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait (generously) until ``check()`` is true, without blocking the event loop."""
    await wait_until_async(check, timeout=timeout_s, what="the condition", interval=0.02)


async def printed_pid(tmp_path: Path) -> int:
    """The pid the service prints on its log's last line, once it has."""
    log = tmp_path / "service.log"

    def last_line() -> str:
        lines = log.read_text().strip().splitlines() if log.exists() else []
        return lines[-1] if lines else ""

    await until(lambda: last_line().isdigit())
    return int(last_line())


SLEEPER = "import time\nwhile True:\n    time.sleep(0.1)\n"


class TestStartStop:
    def test_runs_with_its_environment_and_output(
        self, tmp_path: Path, reap: Callable[[int], None]
    ) -> None:
        """The service runs in the release dir with the KNIGHTWATCH_* environment; it logs."""
        script = (
            "import os, sys, time\n"
            "print('hello from', os.getcwd(), os.environ['KNIGHTWATCH_NODE'], flush=True)\n"
            "print(os.environ['GREETING'], file=sys.stderr, flush=True)\n"
            "while True:\n    time.sleep(0.1)\n"
        )
        svc = launch(tmp_path, script, env={"GREETING": "hi ${KNIGHTWATCH_NODE}"})
        sup = supervisor(tmp_path)

        async def scenario() -> None:
            try:
                await sup.start(svc)
                assert sup.record() is not None
                reap(sup.record().pid)  # type: ignore[union-attr]
                assert await sup.wait_ready() is None
                status = sup.status()
                assert status.state is ServiceState.RUNNING and status.pid is not None
                assert status.started_at is not None and abs(status.started_at - time.time()) < 60
                log = tmp_path / "service.log"
                await until(lambda: "hi node1" in log.read_text())
                assert f"hello from {tmp_path / 'rel'} node1" in log.read_text()
                pid = status.pid
            finally:
                await sup.stop()
            assert identify(pid) is None
            assert sup.status().state is ServiceState.STOPPED and sup.status().pid is None

        run(scenario())

    def test_unstartable_command_is_a_clear_error(self, tmp_path: Path) -> None:
        """A command that cannot be executed fails start() naming the program."""
        svc = launch(tmp_path, "")
        svc = ServiceLaunch(
            svc.digest,
            svc.release_id,
            svc.release_dir,
            ServiceSpec.model_validate({"command": ["no-such-program-kw"]}),
            svc.variables,
        )
        sup = supervisor(tmp_path)
        with pytest.raises(Exception, match=r"cannot start the service .*no-such-program-kw"):
            run(sup.start(svc))


class TestCrashes:
    def test_crash_is_restarted(self, tmp_path: Path, reap: Callable[[int], None]) -> None:
        """A service that crashes once is started again and then runs."""
        script = (
            "import os, sys, time\n"
            "mark = os.environ['KNIGHTWATCH_MARK']\n"
            "if not os.path.exists(mark):\n"
            "    open(mark, 'w').close()\n    sys.exit(3)\n"
            "while True:\n    time.sleep(0.1)\n"
        )
        sup = supervisor(tmp_path)

        async def scenario() -> None:
            try:
                await sup.start(launch(tmp_path, script))
                await until(lambda: sup.status().restarts == 1 and sup.running)
                reap(sup.status().pid or 0)
                assert await sup.wait_ready() is None
                assert sup.status().state is ServiceState.RUNNING
            finally:
                await sup.stop()

        run(scenario())

    def test_crash_loop_is_reported(self, tmp_path: Path) -> None:
        """Five crashes within the window show as crash_loop, with the exit, and restarts go on."""
        sup = supervisor(tmp_path, replace(FAST, settle_s=10.0))

        async def scenario() -> None:
            try:
                await sup.start(launch(tmp_path, "import sys\nprint('boom')\nsys.exit(3)\n"))
                reason = await sup.wait_ready()
                assert reason is not None and "exit status 3" in reason and "boom" in reason
                await until(lambda: sup.status().state is ServiceState.CRASH_LOOP)
                status = sup.status()
                assert status.detail is not None and "exit status 3" in status.detail
                restarts = status.restarts
                await until(lambda: sup.status().restarts > restarts)
            finally:
                await sup.stop()
            assert sup.status().state is ServiceState.STOPPED

        run(scenario())


class TestHalt:
    def test_sigterm_ignored_means_sigkill_after_grace(
        self, tmp_path: Path, reap: Callable[[int], None]
    ) -> None:
        """A service ignoring the halt signal, and its children, are killed after the grace."""
        script = (
            "import signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
            "print(child.pid, flush=True)\n"
            "while True:\n    time.sleep(0.1)\n"
        )
        sup = supervisor(tmp_path)
        svc = launch(tmp_path, script, halt={"signal": "SIGTERM", "grace_s": 0.3})

        async def scenario() -> None:
            await sup.start(svc)
            pgid = sup.status().pid or 0
            reap(pgid)
            child = await printed_pid(tmp_path)
            await sup.stop(halted=True)
            assert not group_alive(pgid)
            assert identify(child) is None
            assert sup.status().state is ServiceState.HALTED

        run(scenario())

    def test_a_worker_that_left_the_group_is_stopped_too(
        self, tmp_path: Path, reap: Callable[[int], None]
    ) -> None:
        """A worker started with setsid escapes a signal to the group; the stop finds it."""
        script = (
            "import subprocess, sys, time\n"
            "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],"
            " start_new_session=True)\n"
            "print(worker.pid, flush=True)\n"
            "while True:\n    time.sleep(0.1)\n"
        )
        sup = supervisor(tmp_path)
        svc = launch(tmp_path, script, halt={"signal": "SIGTERM", "grace_s": 2.0})

        async def scenario() -> None:
            await sup.start(svc)
            pgid = sup.status().pid or 0
            reap(pgid)
            worker = await printed_pid(tmp_path)
            reap(worker)
            assert os.getpgid(worker) != pgid
            stopped = await sup.stop(halted=True)
            assert identify(worker) is None
            assert set(stopped.pids) == {pgid, worker}

        run(scenario())

    def test_halt_hook_and_signal(self, tmp_path: Path, reap: Callable[[int], None]) -> None:
        """The halt hook runs first, then the configured signal reaches the service."""
        script = (
            "import os, signal, sys, time\n"
            "def bye(signum, frame):\n"
            "    open(os.environ['KNIGHTWATCH_MARK'], 'a').write(f'signal {signum}\\n')\n"
            "    sys.exit(0)\n"
            "signal.signal(signal.SIGUSR1, bye)\n"
            "print('armed', flush=True)\n"
            "while True:\n    time.sleep(0.1)\n"
        )
        hook = [sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write('hook\\n')"]
        svc = launch(
            tmp_path,
            script,
            halt={"signal": "SIGUSR1", "grace_s": 20, "hook": [*hook, "${KNIGHTWATCH_MARK}"]},
        )
        sup = supervisor(tmp_path)

        async def scenario() -> None:
            await sup.start(svc)
            reap(sup.status().pid or 0)
            await until(lambda: "armed" in (tmp_path / "service.log").read_text())
            await sup.stop()

        run(scenario())
        assert (tmp_path / "mark").read_text() == f"hook\nsignal {int(signal.SIGUSR1)}\n"


class TestAdoption:
    def test_left_over_service_is_stopped(self, tmp_path: Path) -> None:
        """A service recorded by an earlier agent (same pid and start time) is stopped."""
        process = subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=True)
        try:
            identity = identify(process.pid)
            assert identity is not None
            record = ServiceRecord(
                pid=process.pid,
                start_ticks=identity.start_ticks,
                boot_id=identity.boot_id,
                started_at=identity.started_at,
                digest=DIGEST,
            )
            stopped = run(supervisor(tmp_path).stop_adopted(record, None))
            assert stopped
            assert process.wait(timeout=30) == -signal.SIGTERM
        finally:
            process.kill()
            process.wait()

    def test_reused_pid_is_left_alone(self, tmp_path: Path) -> None:
        """A live process whose start time differs from the record is not ours: untouched."""
        process = subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=True)
        try:
            identity = identify(process.pid)
            assert identity is not None
            record = ServiceRecord(
                pid=process.pid,
                start_ticks=identity.start_ticks + 1,
                boot_id=identity.boot_id,
                started_at=identity.started_at,
                digest=DIGEST,
            )
            assert not run(supervisor(tmp_path).stop_adopted(record, None))
            assert process.poll() is None
        finally:
            process.kill()
            process.wait()


class TestServiceLog:
    def test_rotation_keeps_the_service_writing(self, tmp_path: Path) -> None:
        """Copy-truncate rotation moves old output to .1 and new writes land in the fresh file."""
        log = ServiceLog(tmp_path / "service.log", max_bytes=100, backups=2)
        fd = log.open_for_child()
        try:
            os.write(fd, b"x" * 150)
            assert log.rotate_if_needed()
            os.write(fd, b"after\n")
        finally:
            os.close(fd)
        assert (tmp_path / "service.log.1").read_bytes() == b"x" * 150
        assert (tmp_path / "service.log").read_bytes() == b"after\n"
        assert not log.rotate_if_needed()
