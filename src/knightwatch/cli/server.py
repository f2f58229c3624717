"""``knightwatch server``: run the control plane (and its ``install-unit`` and ``config show``).

``knightwatch server [OPTIONS]`` runs the server, as it always has; the group
also holds subcommands, which take their own options.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from knightwatch.cli import hostconfig, hostunits
from knightwatch.cli.options import refuse_group_options

if TYPE_CHECKING:
    from knightwatch.hosting.configfiles import ConfigFile

__all__ = [
    "DEFAULT_DATA",
    "EPILOG",
    "GRACEFUL_SHUTDOWN_S",
    "ConfigOpt",
    "DataOpt",
    "DatabaseOpt",
    "app",
    "register",
    "server",
]

GRACEFUL_SHUTDOWN_S = 5
"""How long a stopping server waits for open connections before it closes them."""
DEFAULT_DATA = Path("knightwatch-data")
DataOpt = Annotated[Path, typer.Option("--data", help="Data directory (SQLite, blobs, keys)")]
"""``--data DIR``: the control plane's data directory."""
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL, e.g. postgresql+psycopg://user@host/db "
        "(default SQLite in DATA; env KNIGHTWATCH_DATABASE_URL)",
    ),
]
"""``--db URL``: the control plane's database (default: SQLite in the data directory)."""
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Settings file (TOML; default /etc/knightwatch/server.toml if it exists; "
        "env KNIGHTWATCH_SERVER_CONFIG)",
    ),
]
"""``--config FILE``: the server's settings file (it must exist when named)."""
EPILOG = (
    "Example: knightwatch server --data /var/lib/knightwatch --trust keys/release.pub"
    "\n\nExample: knightwatch server --data /var/lib/knightwatch --check-upgrade"
)

app = typer.Typer()
"""The ``knightwatch server`` group: its callback runs it, its subcommands set it up."""


@app.callback(invoke_without_command=True, epilog=EPILOG)
def server(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="Data directory (SQLite, blobs, keys) (default knightwatch-data)"
        ),
    ] = None,
    db: DatabaseOpt = None,
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on")] = None,
    port: Annotated[int | None, typer.Option("--port", help="TCP port (default 7400)")] = None,
    trust: Annotated[
        list[Path] | None,
        typer.Option(
            "--trust",
            help="Trusted release-signing "
            "public key (repeatable; DATA/trusted/*.pub "
            "are trusted too)",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", help="PEM certificate (chain) to serve HTTPS with"),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="PEM private key of --tls-cert")
    ] = None,
    insecure_plaintext: Annotated[
        bool,
        typer.Option(
            "--insecure-plaintext",
            help="Serve plain HTTP on a non-loopback --host (tokens travel in clear)",
        ),
    ] = False,
    check_upgrade: Annotated[
        bool,
        typer.Option(
            "--check-upgrade",
            help="Say which schema migrations a start would apply, change nothing, and exit",
        ),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="With --check-upgrade: print the plan as JSON")
    ] = False,
) -> None:
    """Run the control plane (operator API, agent API, orchestrator).

    Off loopback it serves HTTPS (--tls-cert/--tls-key); plain HTTP on another
    address needs --insecure-plaintext. Settings come from the options, then
    KNIGHTWATCH_* variables, then --config (or /etc/knightwatch/server.toml),
    then DATA/server.toml.
    """
    if ctx.invoked_subcommand is not None:
        refuse_group_options(ctx)
        return
    import os

    import uvicorn

    from knightwatch.api import create_app
    from knightwatch.hosting.configfiles import server_config_file
    from knightwatch.logs import configure_logging
    from knightwatch.protocol import MAX_MESSAGE_BYTES
    from knightwatch.server.plane import ControlPlane
    from knightwatch.server.serving import STARTUP_FAILED, serve
    from knightwatch.server.settings import ServerSettings

    settings_file = server_config_file(config, os.environ)
    if check_upgrade:
        _check_upgrade(data, db, settings_file, as_json=json_output)
        return
    configure_logging("server")
    settings = ServerSettings.load(
        {
            "data_dir": data,
            "database_url": db,
            "host": host,
            "port": port,
            "trusted_keys": tuple(trust) if trust else None,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
            "insecure_plaintext": insecure_plaintext or None,
        },
        config=settings_file,
    )
    settings.check_transport()
    plane = ControlPlane.open(settings)
    app = create_app(plane)
    served = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        ws_max_size=MAX_MESSAGE_BYTES,
        ws_ping_interval=None,
        ws_per_message_deflate=False,  # agents send small JSON; a kill must not wait for zlib
        access_log=False,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        # An idle TLS keep-alive client never answers the close of its connection, and uvicorn
        # would wait for it forever: a SIGTERM'd control plane must still stop.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    if not serve(app, plane, served):
        raise typer.Exit(STARTUP_FAILED)


def _check_upgrade(
    data: Path | None, db: str | None, settings_file: ConfigFile, *, as_json: bool
) -> None:
    """``--check-upgrade``: the migrations a start would apply (exit 1 if it would refuse)."""
    from knightwatch.cli.output import report_failure
    from knightwatch.cli.schema import check_upgrade_command
    from knightwatch.errors import KnightwatchError
    from knightwatch.server.settings import ServerSettings

    try:
        settings = ServerSettings.load({"data_dir": data, "database_url": db}, config=settings_file)
        check_upgrade_command(settings, as_json=as_json)
    except KnightwatchError as exc:
        report_failure(exc, as_json=as_json)
        raise typer.Exit(exc.exit_code) from None


def register(main: typer.Typer) -> None:
    """Add ``server`` and its subcommands to ``main`` as ``knightwatch server``."""
    main.add_typer(app, name="server")


hostunits.register_server(app)
hostconfig.register_server(app)
