"""Options every command shares, defined once: ``--json``, ``--nodes``, ``--wait``.

Also :func:`connect`, the client of the control plane a command talks to
(KNIGHTWATCH_SERVER / KNIGHTWATCH_TOKEN, a local fleet file, or the default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

if TYPE_CHECKING:
    from knightwatch.client import ApiClient

__all__ = [
    "EmergencyOpt",
    "JsonOpt",
    "NodesOpt",
    "WaitOpt",
    "connect",
    "json_scalar",
    "refuse_group_options",
    "require_options",
]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
"""``--json``: print the command's document as JSON on stdout, for scripts."""
NodesOpt = Annotated[
    str | None,
    typer.Option(
        "--nodes", help="Selector: names, globs or group=NAME, comma-separated (default: all)"
    ),
]
"""``--nodes SELECTOR``: which nodes (the whole fleet when left out)."""
WaitOpt = Annotated[bool, typer.Option("--wait", help="Follow it live until it ends")]
EmergencyOpt = Annotated[
    bool,
    typer.Option(
        "--emergency",
        help="Run it now on your word alone (rollback, reconcile, rearm); opens a review item "
        "someone else must close",
    ),
]
"""``--emergency``: one person moves the fleet back to a known state, reviewed afterwards."""
"""``--wait``: follow a deployment live until it ends."""


def connect(timeout: float = 60.0) -> ApiClient:
    """A client of the control plane this command line is pointed at."""
    from knightwatch.client import ApiClient, resolve_target  # not for --help

    return ApiClient(resolve_target(), timeout=timeout)


def json_scalar(text: str) -> object:
    """A value typed on the command line: JSON ``true``, ``42``, ``0.5``, ``"x"``, else the text."""
    import json

    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, bool | int | float | str) else text


def refuse_group_options(ctx: typer.Context) -> None:
    """Refuse options of a command group that runs (``server``, ``agent``) before a subcommand.

    ``knightwatch server --port 1 install-unit`` would silently ignore ``--port``:
    a subcommand takes its own options after its name.
    """
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name or "")
        if source is not None and source.name == "COMMANDLINE":
            raise typer.BadParameter(
                f"it is an option of `{ctx.command_path}` itself, not of "
                f"`{ctx.invoked_subcommand}`: give that command its own options after its name",
                ctx=ctx,
                param=cast(Any, param),  # Typer's own click parameter
            )


def require_options(ctx: typer.Context, values: Mapping[str, object], names: list[str]) -> None:
    """Fail as a required option does ("Missing option '--x'.") for the first of ``names`` unset.

    For a command group whose options are required only when it runs itself
    (and may come from elsewhere too: ``values`` holds what was found).
    """
    from typer._click.exceptions import MissingParameter  # Typer's own click

    for name in names:
        if values.get(name) is None:
            param = next(p for p in ctx.command.params if p.name == name)
            raise MissingParameter(ctx=ctx, param=cast(Any, param))
