"""The proofs before an adoption, and watching a process the agent did not spawn: real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from knightwatch.agent.adoption import Adoptable, Refusal, examine
from knightwatch.agent.childwatch import UNKNOWN_EXIT, AdoptedProcess
from knightwatch.agent.journal import AgentState, ServiceRecord
from knightwatch.agent.process import identify
from knightwatch.agent.runenv import ServiceLaunch
from knightwatch.bundle.spec import ServiceSpec
from tests.agent.conftest import run

DIGEST = "d" * 64
SLEEPER = "import time\nwhile True:\n    time.sleep(0.1)\n"


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A release tree under ``tmp_path/root`` with a script that sleeps."""
    tree = tmp_path / "root" / "releases" / DIGEST
    tree.mkdir(parents=True)
    (tree / "svc.py").write_text(SLEEPER)
    return tree.resolve()


def service_launch(tree: Path) -> ServiceLaunch:
    """How the agent runs the sleeper from ``tree``."""
    spec = ServiceSpec.model_validate({"command": ["python3", "svc.py"]})
    return ServiceLaunch(DIGEST, "svc@1.0+dddddddddddd", tree, spec, {})


@pytest.fixture
def spawn(reap: Callable[[int], None]) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a process in a session of its own (killed at the end)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, cwd=cwd, start_new_session=True)
        reap(process.pid)
        started.append(process)
        wait_for_exec(process.pid, argv[-1])
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def wait_for_exec(pid: int, last_arg: str) -> None:
    """Wait until ``pid`` runs its own command line (before exec it shows pytest's)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    deadline = time.monotonic() + 30
    while last_arg.encode() not in cmdline.read_bytes():
        assert time.monotonic() < deadline, f"pid {pid} did not exec {last_arg}"
        time.sleep(0.01)


def record_of(pid: int, *, ticks_off: int = 0) -> ServiceRecord:
    """The journal record the agent would have written for ``pid``."""
    ident = identify(pid)
    assert ident is not None
    return ServiceRecord(
        pid=pid,
        start_ticks=ident.start_ticks + ticks_off,
        boot_id=ident.boot_id,
        started_at=ident.started_at,
        digest=DIGEST,
    )


def judge(record: ServiceRecord, tree: Path, **state: object) -> Adoptable | Refusal:
    """Examine ``record`` on a node whose active release is the sleeper (no cgroups)."""
    journal = AgentState(node="node1", current=DIGEST).model_copy(update=state)
    return examine(
        record, journal, service_launch(tree), root=tree.parents[1], cgroups=None, node="node1"
    )


class TestProofs:
    def test_the_service_as_started_is_adoptable(
        self, release: Path, spawn: Callable[..., subprocess.Popen[bytes]]
    ) -> None:
        """Same pid and start time, its tree, its arguments (whatever the interpreter's path)."""
        process = spawn([sys.executable, "svc.py"], release)
        outcome = judge(record_of(process.pid), release)
        assert isinstance(outcome, Adoptable), outcome

    def test_a_changed_start_time_is_another_process_left_alone(
        self, release: Path, spawn: Callable[..., subprocess.Popen[bytes]]
    ) -> None:
        """A reused pid: not adopted, not ours to stop."""
        process = spawn([sys.executable, "svc.py"], release)
        outcome = judge(record_of(process.pid, ticks_off=1), release)
        assert outcome == Refusal(
            f"pid {process.pid}'s start time does not match the journal", ours=False
        )

    def test_a_process_outside_the_root_is_left_alone(
        self, release: Path, tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
    ) -> None:
        """The journal names it, but it runs from elsewhere: nothing of ours."""
        process = spawn([sys.executable, str(release / "svc.py")], tmp_path)
        outcome = judge(record_of(process.pid), release)
        assert isinstance(outcome, Refusal) and not outcome.ours
        assert "does not run from" in outcome.reason

    def test_other_arguments_or_release_are_ours_to_stop(
        self, release: Path, spawn: Callable[..., subprocess.Popen[bytes]]
    ) -> None:
        """Our process, but not the active release's service as it is started."""
        process = spawn([sys.executable, "svc.py", "--extra"], release)
        outcome = judge(record_of(process.pid), release)
        assert isinstance(outcome, Refusal) and outcome.ours
        assert "command line" in outcome.reason
        other = judge(record_of(process.pid), release, current="e" * 64)
        assert isinstance(other, Refusal) and other.ours and "the active release is" in other.reason

    def test_halted_or_held_is_never_adopted(
        self, release: Path, spawn: Callable[..., subprocess.Popen[bytes]]
    ) -> None:
        """The latch, or a deployment whose outcome is not known: stop it."""
        process = spawn([sys.executable, "svc.py"], release)
        halted = judge(record_of(process.pid), release, halted=True, halt_source="kill")
        assert isinstance(halted, Refusal) and halted.ours and "kill switch" in halted.reason
        held = judge(record_of(process.pid), release, awaiting=7)
        assert isinstance(held, Refusal) and held.ours and held.reason.startswith("held:")
        both = judge(record_of(process.pid), release, halted=True, halt_source="kill", awaiting=7)
        assert isinstance(both, Refusal) and both.ours
        assert "kill switch" in both.reason and "held:" in both.reason  # every reason listed

    def test_a_gone_pid_is_refused(
        self, release: Path, spawn: Callable[..., subprocess.Popen[bytes]]
    ) -> None:
        """Nothing to adopt, nothing to stop."""
        process = spawn([sys.executable, "svc.py"], release)
        record = record_of(process.pid)
        process.kill()
        process.wait()
        assert judge(record, release) == Refusal(f"pid {process.pid} is gone", ours=False)


class TestAdoptedProcess:
    def test_a_child_s_exit_status_is_read(
        self, release: Path, spawn: Callable[..., subprocess.Popen[bytes]]
    ) -> None:
        """After an exec the service is still our child: waitpid gives its status."""
        process = spawn([sys.executable, "svc.py"], release)
        ident = identify(process.pid)
        assert ident is not None

        async def main() -> str:
            watched = AdoptedProcess(ident)
            assert watched.alive
            os.kill(process.pid, signal.SIGTERM)
            return await watched.wait()

        assert run(main()) == "killed by SIGTERM"

    def test_an_orphan_s_exit_status_is_unknown(self, tmp_path: Path) -> None:
        """Not our child (its parent exited): its exit is seen, its status is not."""
        out = subprocess.run(
            ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        )
        pid = int(out.stdout)
        ident = identify(pid)
        assert ident is not None
        try:

            async def main() -> str:
                watched = AdoptedProcess(ident)
                os.kill(pid, signal.SIGKILL)
                return await watched.wait()

            assert run(main()) == UNKNOWN_EXIT
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert identify(pid) is None  # gone (or a zombie nobody here may reap)
