"""``knightwatch init`` and ``knightwatch user add|list|revoke|rotate|whoami``: people (P7)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from knightwatch.cli.options import JsonOpt, connect
from knightwatch.cli.output import out, print_json, shown
from knightwatch.cli.server import ConfigOpt, DatabaseOpt
from knightwatch.errors import InvalidInputError
from knightwatch.vocabulary import Role

__all__ = ["app", "init", "register"]

app = typer.Typer(
    help="People who operate the fleet: one token and one role each (admins only).",
    no_args_is_help=True,
)
NameArg = Annotated[str, typer.Argument(help="The user's name, e.g. alice")]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file", help="Write the token to this new file (mode 600) instead of printing it"
    ),
]


def init(
    data: Annotated[
        Path | None,
        typer.Option("--data", help="The server's data directory (default knightwatch-data)"),
    ] = None,
    db: DatabaseOpt = None,
    config: ConfigOpt = None,
    name: Annotated[str, typer.Option("--name", help="The first admin's name")] = "admin",
    token_file: TokenFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Create the first admin of a new control plane and print its token once.

    Runs next to the server's data (it writes the server's store), with the
    server's settings (options, KNIGHTWATCH_* variables, its settings file,
    DATA/server.toml), so it opens the same database. With no user the server
    refuses every operator call. Later users come from `knightwatch user add`.
    """
    from knightwatch.clock import SystemClock
    from knightwatch.hosting.configfiles import server_config_file
    from knightwatch.server.settings import ServerSettings
    from knightwatch.server.users import initialize

    settings = ServerSettings.load(
        {"data_dir": data, "database_url": db},
        config=server_config_file(config, os.environ),
    )
    issued = initialize(settings, name, SystemClock())
    _hand_over(
        {"name": issued.name, "role": issued.role.value, "token": issued.token},
        token_file,
        json_output,
        created=True,
    )


@app.command("add", epilog="Example: knightwatch user add alice --role approver")
def add(
    name: NameArg,
    role: Annotated[Role, typer.Option("--role", help="viewer, operator, approver or admin")],
    token_file: TokenFileOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Add a user with a role; its token is printed once and never shown again."""
    issued = connect().post("/users", {"name": name, "role": role.value})
    _hand_over(issued, token_file, json_output, created=True)


@app.command("list", epilog="Example: knightwatch user list")
def list_(json_output: JsonOpt = False) -> None:
    """Every user with its role, revoked ones too (never a token)."""
    users = connect().get("/users")
    if json_output:
        print_json(users)
        return
    table = Table("name", "role", "state", "created (UTC)", "by", "token rotated (UTC)")
    for user in users:
        state = "active" if user["active"] else f"revoked {user['revoked_at'][:19]}"
        table.add_row(
            shown(user["name"]),
            user["role"],
            state,
            user["created_at"][:19],
            shown(user["created_by"]),
            (user["rotated_at"] or "")[:19],
        )
    out.print(table)


@app.command("revoke", epilog="Example: knightwatch user revoke mallory")
def revoke(name: NameArg, json_output: JsonOpt = False) -> None:
    """Revoke a user: its token stops working at once; the name is never reused."""
    user = connect().post(f"/users/{quote(name, safe='')}/revoke", {})
    if json_output:
        print_json(user)
        return
    out.print(f"[green]✓[/] user [bold]{shown(user['name'])}[/] revoked; its token no longer works")


@app.command("rotate", epilog="Example: knightwatch user rotate alice")
def rotate(name: NameArg, token_file: TokenFileOpt = None, json_output: JsonOpt = False) -> None:
    """Give a user a new token (printed once); the old one stops working at once."""
    issued = connect().post(f"/users/{quote(name, safe='')}/rotate", {})
    _hand_over(issued, token_file, json_output, created=False)


@app.command("whoami", epilog="Example: knightwatch user whoami")
def whoami(json_output: JsonOpt = False) -> None:
    """The user your token belongs to, and its role (any role may ask)."""
    me = connect().get("/me")
    if json_output:
        print_json(me)
        return
    out.print(f"{shown(me['name'])} ({me['role']})")


def _hand_over(
    issued: dict[str, Any], token_file: Path | None, json_output: bool, *, created: bool
) -> None:
    """Show a new token exactly once: printed, or written to a new private file."""
    if token_file is not None:
        _write_private(token_file, issued["token"])
        issued = {**issued, "token": None, "token_file": str(token_file)}
    if json_output:
        print_json(issued)
        return
    what = "created" if created else "has a new token"
    out.print(f"[green]✓[/] user [bold]{shown(issued['name'])}[/] ({issued['role']}) {what}.")
    if token_file is not None:
        out.print(f"  Its token is in {shown(str(token_file))} (mode 600).")
        return
    out.print("  Its token, shown only this once:")
    out.print(issued["token"], soft_wrap=True, highlight=False)
    out.print(
        '  Use it as KNIGHTWATCH_TOKEN, or as token = "…" in ~/.config/knightwatch/config.toml '
        "(chmod 600)."
    )


def _write_private(path: Path, token: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidInputError(
            f"--token-file {path} exists", hint="name a new file: a token file is never overwritten"
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def register(main: typer.Typer) -> None:
    """Add ``init`` and ``user`` to the CLI."""
    main.command(
        "init", epilog="Example: knightwatch init --data /var/lib/knightwatch --name alice"
    )(init)
    main.add_typer(app, name="user")
