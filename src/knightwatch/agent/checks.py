"""Health, smoke and version checks of a running service (the functional audit).

A check is an HTTP GET expecting a status (and, for smoke checks, a body
substring) or a command expected to exit 0, each bounded by its
``timeout_s``. Every function returns None when the check passes and a
one-line reason naming the check, the URL or command, and what was seen
when it fails; checks never raise for a failing service.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import ssl

import httpx

from knightwatch.agent.errors import ServiceError
from knightwatch.agent.runenv import ServiceLaunch
from knightwatch.bundle.spec import HealthCheck, SmokeCheck

__all__ = [
    "probe",
    "probe_client",
    "read_version",
    "run_command",
    "run_smoke",
    "version_matches",
    "wait_healthy",
]

_MAX_BODY = 64 * 1024


@functools.cache
def _tls() -> ssl.SSLContext:
    # Loading the CA bundle costs ~25 ms of CPU; a client per probe made that 5 probes
    # a second per agent while a service starts, enough to starve the services of a
    # few agents sharing two cores. One context serves every probe.
    return ssl.create_default_context()


def probe_client(timeout_s: float = 5.0) -> httpx.AsyncClient:
    """An HTTP client for probing the local service (no proxies, the shared TLS context)."""
    return httpx.AsyncClient(timeout=timeout_s, trust_env=False, verify=_tls())


async def probe(check: HealthCheck, launch: ServiceLaunch) -> str | None:
    """Run ``check`` once; None if it passes, else why it failed."""
    try:
        if check.http is not None:
            return await _probe_http(check, launch.expand(check.http))
        assert check.command is not None  # the spec model guarantees exactly one probe
        return await _probe_command(check, launch)
    except ServiceError as exc:
        return exc.message


async def _probe_http(check: HealthCheck, url: str) -> str | None:
    try:
        async with probe_client(check.timeout_s) as client:
            response = await client.get(url)
    except httpx.TimeoutException:
        return f"GET {url}: no answer within {check.timeout_s:g} s"
    except httpx.HTTPError as exc:
        return f"GET {url}: {_describe(exc)}"
    if response.status_code != check.expect_status:
        return f"GET {url}: status {response.status_code}, expected {check.expect_status}"
    expected = check.expect_body if isinstance(check, SmokeCheck) else None
    if expected is not None and expected not in response.text[:_MAX_BODY]:
        return f"GET {url}: the body does not contain {expected!r}"
    return None


async def _probe_command(check: HealthCheck, launch: ServiceLaunch) -> str | None:
    assert check.command is not None
    argv = launch.argv(check.command)
    status, output = await run_command(
        argv, cwd=os.fspath(launch.release_dir), env=launch.environment(), timeout_s=check.timeout_s
    )
    if status is None:
        return f"{' '.join(argv)}: no exit within {check.timeout_s:g} s"
    if status != 0:
        tail = f": {output}" if output else ""
        return f"{' '.join(argv)}: exit status {status}{tail}"
    return None


async def run_command(
    argv: list[str], *, cwd: str, env: dict[str, str], timeout_s: float
) -> tuple[int | None, str]:
    """Run ``argv`` in its own process group; return (exit status or None on timeout, output).

    On timeout the whole group is killed and reaped. The output is the last
    line printed, for failure reasons.
    """
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return 127, f"cannot run {argv[0]}: {exc.strerror or exc}"
    try:
        async with asyncio.timeout(timeout_s):
            output, _ = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.communicate()
        return None, ""
    lines = output.decode("utf-8", "replace").strip().splitlines()
    return process.returncode, lines[-1][:500] if lines else ""


async def wait_healthy(
    check: HealthCheck, launch: ServiceLaunch, *, timeout_s: float, interval_s: float = 0.2
) -> str | None:
    """Poll ``check`` until it passes (None) or ``timeout_s`` ends (the last reason)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        reason = await probe(check, launch)
        if reason is None:
            return None
        if loop.time() + interval_s >= deadline:
            return f"health check {check.name!r} still failing after {timeout_s:g} s: {reason}"
        await asyncio.sleep(interval_s)


async def run_smoke(checks: list[SmokeCheck], launch: ServiceLaunch) -> str | None:
    """Run each smoke check once, in order; None if all pass, else the first failure."""
    for check in checks:
        reason = await probe(check, launch)
        if reason is not None:
            return f"smoke check {check.name!r} failed: {reason}"
    return None


async def read_version(launch: ServiceLaunch, *, timeout_s: float = 5.0) -> tuple[str, str | None]:
    """Return (the version the service reports, a reason if it could not be read).

    Without a ``version_url`` the version is the release ID the service was
    given in ``KNIGHTWATCH_RELEASE_ID``.
    """
    if launch.spec.version_url is None:
        return launch.release_id, None
    check = SmokeCheck(name="version", http=launch.spec.version_url, timeout_s=timeout_s)
    try:
        url = launch.expand(launch.spec.version_url)
        async with probe_client(timeout_s) as client:
            response = await client.get(url)
    except ServiceError as exc:
        return launch.release_id, exc.message
    except httpx.HTTPError as exc:
        return launch.release_id, f"GET {check.http}: {_describe(exc)}"
    if response.status_code != 200:
        return launch.release_id, f"GET {url}: status {response.status_code}, expected 200"
    return response.text[:200].strip(), None


def version_matches(reported: str, launch: ServiceLaunch, name: str, version: str) -> bool:
    """Tell whether a reported version names this release (its ID, ``name@version`` or version)."""
    return reported in (launch.release_id, f"{name}@{version}", version)


def _describe(exc: httpx.HTTPError) -> str:
    text = (str(exc) or type(exc).__name__).splitlines()[0]
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({text})"
    return text
