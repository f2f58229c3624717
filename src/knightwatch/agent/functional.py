"""The functional audit: is the active release's service healthy, and is it that release?

Health and smoke checks run again (not only at deploy time), and the version
the service reports about itself — its ``version_url``, else the
``KNIGHTWATCH_RELEASE_ID`` in the environment it was started with, read from
``/proc/<pid>/environ`` — must name the active release. A failing check is
a warning (the service is unhealthy, which status already shows); another
version is critical drift (the process is not the release).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from knightwatch.agent.checks import probe, read_version, version_matches
from knightwatch.agent.runenv import ServiceLaunch
from knightwatch.agent.supervisor import Supervisor
from knightwatch.bundle.manifest import Manifest
from knightwatch.protocol.audit import CheckOutcome, Finding, FindingKind, Severity
from knightwatch.protocol.messages import ServiceState

__all__ = ["functional_checks", "read_environ"]

K, V = FindingKind, Severity


async def functional_checks(
    supervisor: Supervisor, current: str | None, manifest: Manifest | None
) -> tuple[list[CheckOutcome], list[Finding]]:
    """Run the service's checks now; return every outcome and the findings."""
    launch = supervisor.launch
    if current is None or launch is None or launch.digest != current:
        return [], []
    status = supervisor.status()
    if status.state is ServiceState.HALTED:
        return [CheckOutcome(name="service", ok=True, detail="halted on purpose")], []
    if not supervisor.running:
        detail = f"the service is {status.state.value}" + (
            f" ({status.detail})" if status.detail else ""
        )
        outcome = CheckOutcome(name="service", ok=False, detail=detail[:2000])
        return [outcome], [_functional_finding("service", detail)]
    outcomes = [CheckOutcome(name="service", ok=True, detail=f"pid {status.pid}")]
    for check in [c for c in (launch.spec.health,) if c is not None] + list(launch.spec.smoke):
        reason = await probe(check, launch)
        outcomes.append(CheckOutcome(name=check.name, ok=reason is None, detail=reason))
    findings = [_functional_finding(o.name, o.detail or "") for o in outcomes if not o.ok]
    version, version_findings = await _check_version(launch, status.pid, manifest)
    return [*outcomes, version], [*findings, *version_findings]


async def _check_version(
    launch: ServiceLaunch, pid: int | None, manifest: Manifest | None
) -> tuple[CheckOutcome, list[Finding]]:
    if launch.spec.version_url is not None:
        reported, reason = await read_version(launch)
        source = launch.spec.version_url
    else:
        environ = await asyncio.to_thread(read_environ, pid) if pid else None
        reported = (environ or {}).get("KNIGHTWATCH_RELEASE_ID", "")
        reason = None if environ is not None else "cannot read the service's environment"
        source = "KNIGHTWATCH_RELEASE_ID in its environment"
    if reason is not None:
        outcome = CheckOutcome(name="version", ok=False, detail=reason[:2000])
        return outcome, [_functional_finding("version", reason)]
    if manifest is not None and not version_matches(
        reported, launch, manifest.name, manifest.version
    ):
        detail = (
            f"the service reports {reported!r} ({source}), "
            f"the active release is {launch.release_id}"
        )
        finding = Finding(
            kind=K.VERSION,
            severity=V.CRITICAL,
            detail=detail[:2000],
            expected=launch.release_id,
            actual=reported[:200],
        )
        return CheckOutcome(name="version", ok=False, detail=detail[:2000]), [finding]
    return CheckOutcome(name="version", ok=True, detail=reported[:200]), []


def _functional_finding(name: str, detail: str) -> Finding:
    return Finding(kind=K.FUNCTIONAL, severity=V.WARNING, detail=f"{name}: {detail}"[:2000])


def read_environ(pid: int) -> dict[str, str] | None:
    """Return the environment a process was started with, or None if it cannot be read."""
    try:
        data = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in data.split(b"\0") if b"=" in item)
    return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in pairs}
