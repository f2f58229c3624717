"""``knightwatch fleet up | down | stop | start | restart``: a local fleet for development.

``up`` serves HTTPS with a CA it creates in DIR/tls/ and records its options
in DIR/fleet.json; ``stop``, ``start`` and ``restart`` act on one piece
(``server`` or a node) with exactly those options.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from knightwatch.cli.options import JsonOpt
from knightwatch.cli.output import err, out, print_json, shown
from knightwatch.errors import InvalidInputError

if TYPE_CHECKING:
    from knightwatch.localfleet import LocalFleet

PieceArg = Annotated[str, typer.Argument(help="A node name, or server")]

app = typer.Typer(
    help="Run a local fleet: one control plane and N agents on this machine.", no_args_is_help=True
)
DEFAULT_DIR = Path(".knightwatch-fleet")
DirOpt = Annotated[Path, typer.Option("--dir", help="Directory for roots, pid files and logs")]


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")


def _warn_inotify(nodes: int) -> None:
    """Say so when one machine cannot give every agent and service an inotify instance.

    Each agent watches its tree and each Python service's flag SDK watches
    flags.json; past the per-user limit they fall back to slower polling.
    """
    try:
        limit = int(INOTIFY_INSTANCES.read_text())
    except (OSError, ValueError):
        return
    needed = 2 * nodes + 16
    if needed > limit:
        err.print(
            f"[yellow]warning:[/] {nodes} agents and their services need about {needed} inotify "
            f"instances; this machine allows {limit} per user, so some will poll instead "
            f"(slower to see changes). Raise it: sysctl fs.inotify.max_user_instances={needed * 2}"
        )


@app.command(
    "up",
    epilog="Example: knightwatch fleet up --nodes 8 --release smars@2012.8.1 "
    "--store store/ --trust keys/release.pub",
)
def up(
    nodes: Annotated[int, typer.Option("--nodes", help="How many agents", min=1, max=512)],
    release: Annotated[
        str | None,
        typer.Option("--release", help="Push and deploy this release once the fleet is up"),
    ] = None,
    store: Annotated[
        Path | None, typer.Option("--store", help="Bundle store holding --release")
    ] = None,
    trust: Annotated[
        list[Path] | None,
        typer.Option("--trust", help="Trusted release-signing public key (repeatable)"),
    ] = None,
    directory: DirOpt = DEFAULT_DIR,
    port: Annotated[int | None, typer.Option("--port", help="Server port (default: free)")] = None,
    db: Annotated[str | None, typer.Option("--db", help="Database URL (default SQLite)")] = None,
    approvals: Annotated[
        str,
        typer.Option(
            "--approvals",
            help="Approval policy: solo (changes run on their author's word; a local fleet's "
            "default) or standard (a second person approves every change)",
        ),
    ] = "solo",
    json_output: JsonOpt = False,
) -> None:
    """Start a control plane and N agents (separate processes and roots) in DIR."""
    from knightwatch.localfleet import LocalFleet

    if release and store is None:
        raise InvalidInputError("--release needs --store (the bundle store that holds it)")
    if not trust:
        raise InvalidInputError(
            "fleet up needs --trust: agents enroll only with a trust anchor given out of band",
            hint="e.g. --trust keys/release.pub (from: knightwatch keys generate --out keys/)",
        )
    if (directory / "pids" / "server.pid").exists():
        raise InvalidInputError(
            f"a fleet is already up in {directory}", hint="stop it first: knightwatch fleet down"
        )
    _warn_inotify(nodes)
    if approvals not in ("solo", "standard"):
        raise InvalidInputError(
            f"--approvals {approvals!r} is not a policy", hint="solo or standard"
        )
    fleet = LocalFleet(
        directory,
        nodes,
        trust=trust or [],
        database_url=db,
        port=port,
        server_env={"KNIGHTWATCH_APPROVALS": approvals},
    ).up()
    deployment = None
    if release and store is not None:
        fleet.push(store, release)
        deployment = fleet.deploy(release)
    summary = {
        "server": fleet.url,
        "ca": str(fleet.ca) if fleet.ca else None,
        "token_file": str(fleet.token_file),
        "approvals": approvals,
        "directory": str(fleet.directory),
        "nodes": fleet.names,
        "deployment": deployment,
    }
    if json_output:
        print_json(summary)
        return
    table = Table("node", "root", "service port", "log")
    for name in fleet.names:
        table.add_row(
            shown(name),
            shown(fleet.root(name)),
            shown(fleet.service_port(name)),
            shown(fleet.directory / "logs" / f"{name}.log"),
        )
    out.print(
        f"[green]✓[/] control plane at [bold]{shown(fleet.url)}[/] with {len(fleet.names)} "
        "connected agent(s)"
    )
    out.print(table)
    if deployment is not None:
        out.print(
            f"deployment {shown(deployment['id'])} of {shown(deployment['release_id'])}: "
            f"[bold]{shown(deployment['state'])}[/]"
        )
    if approvals == "solo":
        out.print(
            "approval policy: [bold]solo[/] — every change runs on its author's word, as fits "
            "one person's local fleet (--approvals standard for two-person change control)"
        )
    out.print(
        f"the admin's token (user admin) is in {shown(summary['token_file'])}; "
        "add a user per person with `knightwatch user add NAME --role ROLE`",
        soft_wrap=True,
    )
    ca_hint = f"; import {shown(fleet.ca)} into the browser to trust it" if fleet.ca else ""
    out.print(
        f"dashboard: [bold]{shown(fleet.url)}/ui/[/] (sign in with that token{ca_hint})",
        soft_wrap=True,
    )
    if directory == DEFAULT_DIR:
        out.print(f"commands run from this directory find it through {shown(directory)}/fleet.json")
    else:
        out.print("point other commands at it with:")
        out.print(f"  export KNIGHTWATCH_SERVER={shown(fleet.url)}", soft_wrap=True)
        out.print(f"  export KNIGHTWATCH_CA={shown(fleet.ca)}", soft_wrap=True)
        out.print(
            f"  export KNIGHTWATCH_TOKEN=$(cat {shown(summary['token_file'])})", soft_wrap=True
        )
    out.print(f"stop it with: knightwatch fleet down --dir {shown(directory)}", soft_wrap=True)


@app.command("down", epilog="Example: knightwatch fleet down")
def down(directory: DirOpt = DEFAULT_DIR, json_output: JsonOpt = False) -> None:
    """Stop the local fleet's agents (and their services), then its control plane."""
    from knightwatch.localfleet import stop_fleet

    stopped = stop_fleet(directory)
    if json_output:
        print_json({"stopped": stopped})
    elif stopped:
        out.print(f"[green]✓[/] stopped {shown(', '.join(stopped))}")
    else:
        out.print(f"no fleet is running in {shown(directory)}")


def _attach(directory: Path, piece: str) -> LocalFleet:
    from knightwatch.localfleet import LocalFleet

    fleet = LocalFleet.attach(directory)
    fleet.running_pid(piece)  # refuses an unknown piece
    return fleet


def _need_server(fleet: LocalFleet, piece: str) -> None:
    if piece != "server" and fleet.running_pid("server") is None:
        raise InvalidInputError(
            f"the fleet's server is not running, so {piece} could not connect",
            hint=f"start it first: knightwatch fleet start server --dir {fleet.directory}",
        )


def _report(action: str, piece: str, pid: int | None, json_output: bool) -> None:
    if json_output:
        print_json({"action": action, "piece": piece, "pid": pid})
    elif action == "stopped" and pid is None:
        out.print(f"{shown(piece)} was not running")
    else:
        detail = f" (pid {pid})" if pid else ""
        out.print(f"[green]✓[/] {action} [bold]{shown(piece)}[/]{detail}")


@app.command(
    "stop",
    epilog="Example: knightwatch fleet stop node2   (or: knightwatch fleet stop server)",
)
def stop(piece: PieceArg, directory: DirOpt = DEFAULT_DIR, json_output: JsonOpt = False) -> None:
    """Stop one piece of the local fleet: a node's agent (and its service) or the server."""
    fleet = _attach(directory, piece)
    pid = fleet.running_pid(piece)
    fleet.stop_piece(piece)
    _report("stopped", piece, pid, json_output)


@app.command(
    "start",
    epilog="Example: knightwatch fleet start node2   (same trust keys, CA and server as fleet up)",
)
def start(piece: PieceArg, directory: DirOpt = DEFAULT_DIR, json_output: JsonOpt = False) -> None:
    """Start one stopped piece again with the options fleet up used; wait until it serves."""
    fleet = _attach(directory, piece)
    _need_server(fleet, piece)
    pid = fleet.start_piece(piece)
    _report("started", piece, pid, json_output)


@app.command("restart", epilog="Example: knightwatch fleet restart server")
def restart(piece: PieceArg, directory: DirOpt = DEFAULT_DIR, json_output: JsonOpt = False) -> None:
    """Stop one piece (if it runs) and start it again with the options fleet up used."""
    fleet = _attach(directory, piece)
    _need_server(fleet, piece)
    fleet.stop_piece(piece)
    pid = fleet.start_piece(piece)
    _report("restarted", piece, pid, json_output)
