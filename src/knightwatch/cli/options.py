"""Options every command shares, defined once: ``--json``, ``--nodes``, ``--wait``.

Also :func:`connect`, the client of the control plane a command talks to
(KNIGHTWATCH_SERVER / KNIGHTWATCH_TOKEN, a local fleet file, or the default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from knightwatch.client import ApiClient

__all__ = ["EmergencyOpt", "JsonOpt", "NodesOpt", "WaitOpt", "connect", "json_scalar"]

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
