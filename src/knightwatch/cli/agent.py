"""``knightwatch agent``: run the node agent (one per node, long-running).

``knightwatch agent [OPTIONS]`` runs the agent, as it always has; the group
also holds ``install-unit`` and ``config show``. Each option may instead come
from a ``KNIGHTWATCH_AGENT_*`` variable or the agent's configuration file
(:mod:`knightwatch.cli.agentconfig`). Register it on the main app with
:func:`register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from knightwatch.cli import hostconfig, hostunits
from knightwatch.cli.options import refuse_group_options, require_options
from knightwatch.cli.output import fail
from knightwatch.errors import InvalidInputError, KnightwatchError

__all__ = ["EPILOG", "AgentConfigOpt", "agent", "app", "register"]

EPILOG = (
    "Example: knightwatch agent --server https://cp.example:7400 --ca ca.pem "
    "--root /var/lib/knightwatch --name node1 --join-file /etc/knightwatch/join.token "
    "--trust release.pub"
)
AgentConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Settings file (TOML; default /etc/knightwatch/agent.toml if it exists; "
        "env KNIGHTWATCH_AGENT_CONFIG)",
    ),
]
"""``--config FILE``: the agent's settings file (it must exist when named)."""

app = typer.Typer()
"""The ``knightwatch agent`` group: its callback runs it, its subcommands set it up."""


@app.callback(invoke_without_command=True, epilog=EPILOG)
def agent(
    ctx: typer.Context,
    server: Annotated[
        str | None,
        typer.Option("--server", help="Control plane URL, http:// or https://host:port (required)"),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option("--root", help="Agent root: releases, blobs, journal, logs (required)"),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="This node's name (a-z 0-9 . _ -) (required)")
    ] = None,
    config: AgentConfigOpt = None,
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
        float | None,
        typer.Option(
            "--health-timeout",
            help="Seconds a new service has to turn healthy (default 30.0)",
        ),
    ] = None,
    cgroup_mount: Annotated[
        Path | None,
        typer.Option(
            "--cgroup-mount",
            help="Where cgroups are mounted; each service start gets a group there "
            "(none can be created: best-effort /proc accounting) (default /sys/fs/cgroup)",
        ),
    ] = None,
    audit_interval: Annotated[
        float | None,
        typer.Option(
            "--audit-interval",
            help="Seconds between full re-hashes of the active release (default 600.0)",
        ),
    ] = None,
    stat_interval: Annotated[
        float | None,
        typer.Option(
            "--stat-interval",
            help="Seconds between stat sweeps that catch changes inotify lost (default 5.0)",
        ),
    ] = None,
    process_check_interval: Annotated[
        float | None,
        typer.Option(
            "--process-check-interval",
            help="Seconds between checks for stale and unmanaged processes (default 1.0)",
        ),
    ] = None,
    functional_check_interval: Annotated[
        float | None,
        typer.Option(
            "--functional-check-interval",
            help="Seconds between health, smoke and version re-checks (default 60.0)",
        ),
    ] = None,
) -> None:
    """Run the node agent: stage, verify, switch and supervise releases.

    The agent keeps one WebSocket to the control plane and logs one
    key=value line per event on stderr. On SIGTERM or SIGINT it stops the
    service (halt hook, halt signal, grace period, SIGKILL) and exits 0; if
    it is killed outright, the service keeps running and the next agent
    start stops it and starts a fresh one. Every option but --join may come
    from KNIGHTWATCH_AGENT_<OPTION> or the --config file instead.
    """
    if ctx.invoked_subcommand is not None:
        refuse_group_options(ctx)
        return
    options = {k: v for k, v in ctx.params.items() if k not in ("ctx", "config", "join")}
    try:
        from knightwatch.cli.agentconfig import agent_values

        values = agent_values(options, config).values
        require_options(ctx, values, ["server", "root", "name"])
        code = _run(values, join)
    except KnightwatchError as exc:
        fail(exc)
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(code)


def _run(values: dict[str, Any], join: str | None) -> int:
    """Build the agent's settings from the merged ``values`` and run it until it stops."""
    from knightwatch.agent import AgentSettings, run_agent
    from knightwatch.agent.settings import AuditSettings

    settings = AgentSettings(
        server=values["server"],
        root=values["root"],
        name=values["name"],
        join=_join_token(join, values["join_file"]),
        trust=tuple(values["trust"]),
        trust_fingerprints=tuple(values["trust_fingerprint"]),
        ca=values["ca"],
        service_port=values["service_port"],
        heartbeat_s=values["heartbeat"],
        health_timeout_s=values["health_timeout"],
        cgroup_mount=values["cgroup_mount"],
        audit=AuditSettings(
            sweep_interval_s=values["audit_interval"],
            stat_interval_s=values["stat_interval"],
            process_interval_s=values["process_check_interval"],
            functional_interval_s=values["functional_check_interval"],
        ),
    )
    return run_agent(settings)


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


def register(main: typer.Typer) -> None:
    """Add ``agent`` and its subcommands to ``main`` as ``knightwatch agent``."""
    main.add_typer(app, name="agent")


hostunits.register_agent(app)
hostconfig.register_agent(app)
