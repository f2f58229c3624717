"""The functional audit's view of what a service was started with."""

from __future__ import annotations

import subprocess
import sys

from knightwatch.agent.functional import read_environ


def test_read_environ_returns_what_the_process_was_started_with() -> None:
    """The release ID a service was given is read back from /proc/<pid>/environ."""
    env = {"KNIGHTWATCH_RELEASE_ID": "smars@2012.8.1+0123456789ab", "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"up\n"  # exec'd: environ is the child's own now
        environ = read_environ(process.pid)
        assert environ is not None
        assert environ["KNIGHTWATCH_RELEASE_ID"] == "smars@2012.8.1+0123456789ab"
    finally:
        process.kill()
        process.communicate()


def test_read_environ_of_a_gone_process_is_none() -> None:
    """A pid that no longer exists gives None, never an exception."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert read_environ(process.pid) is None
