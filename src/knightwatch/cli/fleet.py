"""``knightwatch fleet up | down``: a local control plane and N agents for development."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from knightwatch.cli.output import out, print_json, shown
from knightwatch.errors import InvalidInputError

app = typer.Typer(
    help="Run a local fleet: one control plane and N agents on this machine.", no_args_is_help=True
)
DEFAULT_DIR = Path(".knightwatch-fleet")
DirOpt = Annotated[Path, typer.Option("--dir", help="Directory for roots, pid files and logs")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]


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
    json_output: JsonOpt = False,
) -> None:
    """Start a control plane and N agents (separate processes and roots) in DIR."""
    from knightwatch.testing import LocalFleet

    if release and store is None:
        raise InvalidInputError("--release needs --store (the bundle store that holds it)")
    if (directory / "pids" / "server.pid").exists():
        raise InvalidInputError(
            f"a fleet is already up in {directory}", hint="stop it first: knightwatch fleet down"
        )
    fleet = LocalFleet(directory, nodes, trust=trust or [], database_url=db, port=port).up()
    deployment = None
    if release and store is not None:
        fleet.push(store, release)
        deployment = fleet.deploy(release)
    summary = {
        "server": fleet.url,
        "token_file": str(fleet.directory / "server" / "operator.token"),
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
    if directory == DEFAULT_DIR:
        out.print(f"commands run from this directory find it through {shown(directory)}/fleet.json")
    else:
        out.print("point other commands at it with:")
        out.print(f"  export KNIGHTWATCH_SERVER={shown(fleet.url)}", soft_wrap=True)
        out.print(
            f"  export KNIGHTWATCH_TOKEN=$(cat {shown(summary['token_file'])})", soft_wrap=True
        )
    out.print(f"stop it with: knightwatch fleet down --dir {shown(directory)}", soft_wrap=True)


@app.command("down", epilog="Example: knightwatch fleet down")
def down(directory: DirOpt = DEFAULT_DIR, json_output: JsonOpt = False) -> None:
    """Stop the local fleet's agents (and their services), then its control plane."""
    from knightwatch.testing import stop_fleet

    stopped = stop_fleet(directory)
    if json_output:
        print_json({"stopped": stopped})
    elif stopped:
        out.print(f"[green]✓[/] stopped {shown(', '.join(stopped))}")
    else:
        out.print(f"no fleet is running in {shown(directory)}")
