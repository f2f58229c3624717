"""The service process the supervisor watches: one it spawned, or one it adopted.

A spawned service is an :class:`asyncio.subprocess.Process`; its exit
status comes from ``waitpid``. An adopted one (:class:`AdoptedProcess`) was
started by an earlier agent: after an in-place upgrade (``exec`` keeps the
pid) it is still this process's child and ``waitpid`` still reaps it, but
after a SIGKILLed agent it is not — the kernel gave it to another parent,
and its exit status is nobody's to read here. Its exit is then seen through
a pidfd (``pidfd_open``, readable once the process is gone) or, where the
kernel has none, by polling its identity; the status is reported *unknown*.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from knightwatch.agent.process import ProcessIdentity, identify

__all__ = ["UNKNOWN_EXIT", "AdoptedProcess", "ServiceProcess", "SpawnedProcess", "describe_exit"]

UNKNOWN_EXIT = "exit status unknown (an adopted process that is not the agent's child)"
_POLL_S = 0.2


def describe_exit(status: int) -> str:
    """Describe a return code: ``exit status 3`` or ``killed by SIGKILL``."""
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-status).name}"
        return f"killed by signal {-status}"
    return f"exit status {status}"


class SpawnedProcess:
    """A service process this agent spawned (its child)."""

    adopted = False

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self.pid = process.pid

    @property
    def alive(self) -> bool:
        """True until the process has exited and been reaped."""
        return self._process.returncode is None

    async def wait(self) -> str:
        """Wait for the exit; return how it ended (:func:`describe_exit`)."""
        return describe_exit(await self._process.wait())


class AdoptedProcess:
    """A service process an earlier agent started, watched by pidfd (or by polling)."""

    adopted = True

    def __init__(self, identity: ProcessIdentity) -> None:
        self.pid = identity.pid
        self._identity = identity
        self._exit: str | None = None
        self._pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self._pidfd = os.pidfd_open(identity.pid)
        if self._pidfd is not None and not self._same():
            self._release()  # the pid was reused in between: never watch another process
            self._exit = UNKNOWN_EXIT

    @property
    def alive(self) -> bool:
        """True until the process is seen gone."""
        return self._exit is None

    async def wait(self) -> str:
        """Wait for the exit; return how it ended (the status when it is still our child)."""
        if self._exit is not None:
            return self._exit
        if self._pidfd is not None:
            await self._readable(self._pidfd)
        else:
            while self._same():
                await asyncio.sleep(_POLL_S)
        self._exit = self._exit or self._reap()
        self._release()
        return self._exit

    def _same(self) -> bool:
        now = identify(self.pid)
        return now is not None and now.start_ticks == self._identity.start_ticks

    def _reap(self) -> str:
        """The exit status when the process is our child (after an exec), else unknown."""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return UNKNOWN_EXIT
        if pid == 0:  # a child still running cannot happen after the pidfd fired
            return UNKNOWN_EXIT
        return describe_exit(os.waitstatus_to_exitcode(status))

    async def _readable(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(fd, ready)
        try:
            await gone
        finally:
            loop.remove_reader(fd)

    def _release(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


ServiceProcess = SpawnedProcess | AdoptedProcess
"""What the supervisor watches."""
