"""``knightwatch server install-unit`` and ``knightwatch agent install-unit``: systemd units.

Each renders the packaged unit (:mod:`knightwatch.hosting.units`) with the
operator's paths and options and writes it atomically to
``/etc/systemd/system`` (``--output-dir``), or prints it (``--stdout``,
``--dry-run``). Bad input is refused before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from knightwatch.cli.options import JsonOpt
from knightwatch.cli.output import err, out, print_json, shown
from knightwatch.errors import InvalidInputError

if TYPE_CHECKING:
    from knightwatch.hosting.configfiles import ConfigFile

__all__ = ["install_agent_unit", "install_server_unit", "register_agent", "register_server"]

ExecutableOpt = Annotated[
    Path | None,
    typer.Option(
        "--executable",
        help="The knightwatch command the unit runs (absolute) (default this knightwatch)",
    ),
]
OutputDirOpt = Annotated[Path, typer.Option("--output-dir", help="Where the unit file is written")]
StdoutOpt = Annotated[
    bool, typer.Option("--stdout", help="Print the unit on stdout instead of writing it")
]
DryRunOpt = Annotated[
    bool,
    typer.Option("--dry-run", help="Show the unit and where it would go; write nothing"),
]
UnitConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Settings file the unit passes as --config (absolute; without it the "
        "command reads /etc/knightwatch/*.toml if present)",
    ),
]
DEFAULT_OUTPUT = Path("/etc/systemd/system")


def install_server_unit(
    executable: ExecutableOpt = None,
    data: Annotated[
        Path, typer.Option("--data", help="The server's data directory (absolute)")
    ] = Path("/var/lib/knightwatch"),
    config: UnitConfigOpt = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--user", help="Run as this (existing) user (default a transient DynamicUser)"
        ),
    ] = None,
    group: Annotated[
        str | None, typer.Option("--group", help="Run as this group (default --user's)")
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on")] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="TCP port (below 1024 adds that capability)")
    ] = None,
    output_dir: OutputDirOpt = DEFAULT_OUTPUT,
    stdout: StdoutOpt = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Write knightwatch-server.service, the control plane's hardened systemd unit.

    It restarts the server on failure, keeps its data in DATA (StateDirectory
    under /var/lib) and lets it write nothing else. Then: systemctl
    daemon-reload; systemctl enable --now knightwatch-server.
    """
    from knightwatch.hosting import units

    unit = units.ServerUnit(
        executable=units.executable(executable or _running_knightwatch()),
        data_dir=data,
        config=config,
        user=user,
        group=group,
        host=host,
        port=port,
    )
    _deliver(
        units.SERVER_UNIT,
        unit.render(),
        output_dir,
        stdout=stdout,
        dry_run=dry_run,
        as_json=json_output,
    )


def install_agent_unit(
    executable: ExecutableOpt = None,
    root: Annotated[
        Path,
        typer.Option("--root", help="The agent's root, its only writable path (absolute)"),
    ] = Path("/var/lib/knightwatch-agent"),
    server: Annotated[
        str | None,
        typer.Option("--server", help="Control plane URL (default from the settings file)"),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="This node's name (default from the settings file)"),
    ] = None,
    config: UnitConfigOpt = None,
    ca: Annotated[
        Path | None, typer.Option("--ca", help="CA certificate of the control plane (absolute)")
    ] = None,
    join_file: Annotated[
        Path | None,
        typer.Option("--join-file", help="File holding the one-time join token (absolute)"),
    ] = None,
    trust: Annotated[
        list[Path] | None,
        typer.Option("--trust", help="Release-signing public key to trust (repeatable)"),
    ] = None,
    trust_fingerprint: Annotated[
        list[str] | None,
        typer.Option("--trust-fingerprint", help="SHA256:<key id> to accept (repeatable)"),
    ] = None,
    cgroup_mount: Annotated[
        Path | None, typer.Option("--cgroup-mount", help="Where cgroups are mounted")
    ] = None,
    capabilities: Annotated[
        str | None,
        typer.Option(
            "--capabilities",
            help="Capabilities the agent's service may use, comma-separated, or none "
            "(default: bind a port below 1024, change user, own files, signal)",
        ),
    ] = None,
    output_dir: OutputDirOpt = DEFAULT_OUTPUT,
    stdout: StdoutOpt = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Write knightwatch-agent.service, the node agent's hardened systemd unit.

    The agent's root is its only writable path; `systemctl stop` lets the
    agent stop its service itself (KillMode=process), and `systemctl reload`
    re-executes an upgraded agent in place, adopting the running service.
    """
    from knightwatch.hosting import units

    _check_agent_identity(server, name, config)
    chosen = _capabilities(capabilities)
    unit = units.AgentUnit(
        executable=units.executable(executable or _running_knightwatch()),
        root=root,
        server=server,
        name=name,
        config=config,
        ca=ca,
        join_file=join_file,
        trust=tuple(trust or ()),
        trust_fingerprints=tuple(trust_fingerprint or ()),
        cgroup_mount=cgroup_mount,
        capabilities=units.SERVICE_CAPABILITIES if chosen is None else chosen,
    )
    _deliver(
        units.AGENT_UNIT,
        unit.render(),
        output_dir,
        stdout=stdout,
        dry_run=dry_run,
        as_json=json_output,
    )


def _check_agent_identity(server: str | None, name: str | None, config: Path | None) -> None:
    """Refuse a bad --name or fingerprint, and a unit that would know no server or name."""
    import os

    from knightwatch.agent.settings import NODE_NAME
    from knightwatch.cli.agentconfig import KINDS
    from knightwatch.hosting.configfiles import agent_config_file, read_config

    if name is not None and not NODE_NAME.fullmatch(name):
        raise InvalidInputError(
            f"--name {name!r} is not a valid node name",
            hint="use 1-63 of a-z 0-9 . _ -, starting with a letter or digit",
        )
    if server is not None and name is not None:
        return
    file = agent_config_file(config, os.environ)
    settings = read_config(_optional(file), KINDS)
    for flag, given in (("--server", server), ("--name", name)):
        key = flag.removeprefix("--")
        if given is None and key not in settings:
            raise InvalidInputError(
                f"no {flag} given and {file.path} does not set {key}",
                hint=f"give {flag}, or write {key} = ... into {file.path} first",
            )


def _capabilities(given: str | None) -> tuple[str, ...] | None:
    """``--capabilities``: None when not given, () for ``none``, else the names (CAP_ added)."""
    if given is None:
        return None
    names = [name.strip().upper() for name in given.split(",") if name.strip()]
    if names in ([], ["NONE"]):
        return ()
    return tuple(name if name.startswith("CAP_") else f"CAP_{name}" for name in names)


def _optional(file: ConfigFile) -> ConfigFile:
    """The same file, read if it exists (the unit may be written before its settings)."""
    from knightwatch.hosting.configfiles import ConfigFile

    return ConfigFile(file.path, None)


def _running_knightwatch() -> Path:
    """The knightwatch console script that runs now (the unit runs the same one)."""
    import os
    import shutil
    import sys

    started = Path(sys.argv[0])
    if started.name == "knightwatch":
        return Path(os.path.abspath(started))
    beside = Path(sys.executable).with_name("knightwatch")
    if beside.is_file():
        return beside
    found = shutil.which("knightwatch")
    if found is None:
        raise InvalidInputError(
            "cannot tell which knightwatch command the unit should run",
            hint="give --executable /path/to/knightwatch",
        )
    return Path(found)


def _deliver(
    filename: str, text: str, output_dir: Path, *, stdout: bool, dry_run: bool, as_json: bool
) -> None:
    """Print or write the unit, and say what was done."""
    from knightwatch.hosting.units import write_unit

    target = output_dir.absolute() / filename
    if stdout and not as_json:
        out.file.write(text)
        return
    written = not (stdout or dry_run)
    if written:
        write_unit(output_dir, filename, text)
    if as_json:
        document = {"unit": filename, "path": str(target), "written": written, "text": text}
        print_json(document)
        return
    service = filename.removesuffix(".service")
    if not written:
        out.file.write(text)
        err.print(f"dry run: would write {shown(target)} (nothing written)")
        return
    out.print(f"[green]✓[/] wrote {shown(target)}")
    out.print(f"  next: systemctl daemon-reload && systemctl enable --now {service}")


def register_server(app: typer.Typer) -> None:
    """Add ``install-unit`` to the ``knightwatch server`` group."""
    app.command(
        "install-unit",
        epilog="Example: knightwatch server install-unit --data /var/lib/knightwatch "
        "--config /etc/knightwatch/server.toml",
    )(install_server_unit)


def register_agent(app: typer.Typer) -> None:
    """Add ``install-unit`` to the ``knightwatch agent`` group."""
    app.command(
        "install-unit",
        epilog="Example: knightwatch agent install-unit --root /var/lib/knightwatch-agent "
        "--server https://cp.example:7400 --name node1 --ca /etc/knightwatch/ca.pem",
    )(install_agent_unit)
