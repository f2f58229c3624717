"""``knightwatch server config show`` and ``knightwatch agent config show``.

Each prints every effective setting, its value and where it came from: an
option, an environment variable (by name), a file (by path) or the default.
Secrets are masked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from knightwatch.cli.options import JsonOpt
from knightwatch.cli.output import out, print_json, shown

__all__ = ["register_agent", "register_server", "show_agent_config", "show_server_config"]

MASK = "**********"
ShowConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="Settings file (default /etc/knightwatch/NAME.toml if it exists)"
    ),
]


def show_server_config(
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Data directory (default knightwatch-data)"),
    ] = None,
    db: Annotated[str | None, typer.Option("--db", help="Database URL (shown masked)")] = None,
    config: ShowConfigOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Print every effective setting of the server, its value and where it came from.

    The order is: option, KNIGHTWATCH_* variable, --config file (or
    /etc/knightwatch/server.toml), DATA/server.toml, default. Secrets are masked.
    """
    import os

    from knightwatch.hosting.configfiles import server_config_file
    from knightwatch.server.settings import OPTION_SOURCE, ServerSettings
    from knightwatch.server.settingsview import shown_values

    file = server_config_file(config, os.environ)
    settings, sources = ServerSettings.resolve({"data_dir": data, "database_url": db}, config=file)
    flags = {"data_dir": "--data", "database_url": "--db"}
    rows = [
        {
            "name": name,
            "value": value,
            "source": flags.get(name, name) if sources[name] == OPTION_SOURCE else sources[name],
        }
        for name, value in shown_values(settings).items()
    ]
    files = [
        _file(file.path, "settings file"),
        _file(settings.data_dir / "server.toml", "data directory's file"),
    ]
    _report(rows, files, as_json=json_output)


def show_agent_config(config: ShowConfigOpt = None, json_output: JsonOpt = False) -> None:
    """Print every effective setting of the agent, its value and where it came from.

    The order is: KNIGHTWATCH_AGENT_* variable, --config file (or
    /etc/knightwatch/agent.toml), default; the agent's own options come
    first of all when it runs. The join token is masked.
    """
    import os

    from knightwatch.cli.agentconfig import agent_values
    from knightwatch.hosting.configfiles import agent_config_file

    found = agent_values({}, config)
    rows = [
        {"name": key, "value": _plain(value), "source": found.sources[key]}
        for key, value in found.values.items()
    ]
    for row in rows:
        if row["value"] is None and row["name"] in ("server", "root", "name"):
            row["source"] = "missing (required)"
    token = os.environ.get("KNIGHTWATCH_JOIN_TOKEN")
    rows.append(
        {
            "name": "join",
            "value": MASK if token else None,
            "source": "KNIGHTWATCH_JOIN_TOKEN" if token else "default",
        }
    )
    file = agent_config_file(config, os.environ)
    _report(rows, [_file(file.path, "settings file")], as_json=json_output)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _file(path: Path, role: str) -> dict[str, Any]:
    return {"path": str(path), "role": role, "exists": path.is_file()}


def _report(rows: list[dict[str, Any]], files: list[dict[str, Any]], *, as_json: bool) -> None:
    """Print the settings (a table, or JSON) and which files were looked at."""
    if as_json:
        print_json({"settings": rows, "files": files})
        return
    import json

    table = Table()
    for column in ("setting", "value", "from"):
        table.add_column(column, overflow="fold")
    for row in rows:
        value = row["value"]
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        source = row["source"]
        table.add_row(
            shown(row["name"]),
            shown(text),
            f"[dim]{shown(source)}[/]" if source == "default" else shown(source),
        )
    out.print(table)
    for file in files:
        state = "read" if file["exists"] else "absent"
        out.print(f"{file['role']}: {shown(file['path'])} ({state})")


def register_server(app: typer.Typer) -> None:
    """Add ``config show`` to the ``knightwatch server`` group."""
    group = typer.Typer(help="The server's effective settings.", no_args_is_help=True)
    group.command(
        "show",
        epilog="Example: knightwatch server config show --data /var/lib/knightwatch --json",
    )(show_server_config)
    app.add_typer(group, name="config")


def register_agent(app: typer.Typer) -> None:
    """Add ``config show`` to the ``knightwatch agent`` group."""
    group = typer.Typer(help="The agent's effective settings.", no_args_is_help=True)
    group.command(
        "show", epilog="Example: knightwatch agent config show --config /etc/knightwatch/agent.toml"
    )(show_agent_config)
    app.add_typer(group, name="config")
