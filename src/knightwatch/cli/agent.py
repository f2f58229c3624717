"""``knightwatch agent``: run the node agent (one per node, long-running).

Register it on the main app with :func:`register` (or
``app.command("agent", epilog=EPILOG)(agent)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from knightwatch.cli.output import fail
from knightwatch.errors import InvalidInputError, KnightwatchError

__all__ = ["EPILOG", "agent", "register"]

EPILOG = (
    "Example: knightwatch agent --server https://cp.example:7400 --ca ca.pem "
    "--root /var/lib/knightwatch --name node1 --join-file /etc/knightwatch/join.token "
    "--trust release.pub"
)


def agent(
    server: Annotated[
        str, typer.Option("--server", help="Control plane URL (http[s]://host:port)")
    ],
    root: Annotated[
        Path, typer.Option("--root", help="Agent root: releases, blobs, journal, logs")
    ],
    name: Annotated[str, typer.Option("--name", help="This node's name (a-z 0-9 . _ -)")],
    join: Annotated[
        str | None,
        typer.Option(
            "--join",
            envvar="KNIGHTWATCH_JOIN_TOKEN",
            show_envvar=True,
            help="One-time join token, needed on first start (visible in ps: prefer "
            "--join-file or KNIGHTWATCH_JOIN_TOKEN)",
        ),
    ] = None,
    join_file: Annotated[
        Path | None,
        typer.Option("--join-file", help="Read the one-time join token from this file"),
    ] = None,
    trust: Annotated[
        list[Path] | None,
        typer.Option(
            "--trust",
            help="Release-signing public key to trust (repeatable); "
            "this or --trust-fingerprint is needed to enroll",
        ),
    ] = None,
    trust_fingerprint: Annotated[
        list[str] | None,
        typer.Option(
            "--trust-fingerprint",
            help="SHA256:<key id> of a release key to accept from the server at enrollment "
            "(repeatable); the server's keys must include it",
        ),
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option(
            "--ca", help="CA certificate the control plane's TLS certificate must chain to"
        ),
    ] = None,
    service_port: Annotated[
        int | None,
        typer.Option(
            "--service-port",
            help="Port for the service (${KNIGHTWATCH_SERVICE_PORT}); remembered in state.json",
        ),
    ] = None,
    heartbeat: Annotated[
        float | None,
        typer.Option("--heartbeat", help="Seconds between heartbeats (default: the server's)"),
    ] = None,
    health_timeout: Annotated[
        float, typer.Option("--health-timeout", help="Seconds a new service has to turn healthy")
    ] = 30.0,
    cgroup_mount: Annotated[
        Path,
        typer.Option(
            "--cgroup-mount",
            help="Where cgroups are mounted; each service start gets a group there "
            "(none can be created: best-effort /proc accounting)",
        ),
    ] = Path("/sys/fs/cgroup"),
    audit_interval: Annotated[
        float,
        typer.Option(
            "--audit-interval", help="Seconds between full re-hashes of the active release"
        ),
    ] = 600.0,
    stat_interval: Annotated[
        float,
        typer.Option(
            "--stat-interval",
            help="Seconds between stat sweeps that catch changes inotify lost",
        ),
    ] = 5.0,
    process_check_interval: Annotated[
        float,
        typer.Option(
            "--process-check-interval",
            help="Seconds between checks for stale and unmanaged processes",
        ),
    ] = 1.0,
    functional_check_interval: Annotated[
        float,
        typer.Option(
            "--functional-check-interval",
            help="Seconds between health, smoke and version re-checks",
        ),
    ] = 60.0,
) -> None:
    """Run the node agent: stage, verify, switch and supervise releases.

    The agent keeps one WebSocket to the control plane and logs one
    key=value line per event on stderr. On SIGTERM or SIGINT it stops the
    service (halt hook, halt signal, grace period, SIGKILL) and exits 0; if
    it is killed outright, the service keeps running and the next agent
    start stops it and starts a fresh one.
    """
    from knightwatch.agent import AgentSettings, run_agent
    from knightwatch.agent.settings import AuditSettings

    try:
        settings = AgentSettings(
            server=server,
            root=root,
            name=name,
            join=_join_token(join, join_file),
            trust=tuple(trust or ()),
            trust_fingerprints=tuple(trust_fingerprint or ()),
            ca=ca,
            service_port=service_port,
            heartbeat_s=heartbeat,
            health_timeout_s=health_timeout,
            cgroup_mount=cgroup_mount,
            audit=AuditSettings(
                sweep_interval_s=audit_interval,
                stat_interval_s=stat_interval,
                process_interval_s=process_check_interval,
                functional_interval_s=functional_check_interval,
            ),
        )
        code = run_agent(settings)
    except KnightwatchError as exc:
        fail(exc)
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(code)


def _join_token(join: str | None, join_file: Path | None) -> str | None:
    """The join token from --join (or KNIGHTWATCH_JOIN_TOKEN) or from --join-file."""
    if join_file is None:
        return join
    if join is not None:
        raise InvalidInputError(
            "both a join token (--join or KNIGHTWATCH_JOIN_TOKEN) and --join-file are given",
            hint="give the token one way only",
        )
    try:
        token = join_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(
            f"--join-file {join_file}: cannot read the join token: {exc}",
            hint="write the token printed by knightwatch node enroll into that file",
        ) from None
    if not token:
        raise InvalidInputError(f"--join-file {join_file} is empty", hint="write the token into it")
    return token


def register(app: typer.Typer) -> None:
    """Add ``agent`` to ``app`` as the ``knightwatch agent`` command."""
    app.command("agent", epilog=EPILOG)(agent)
