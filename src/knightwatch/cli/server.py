"""``knightwatch server``, ``node enroll`` and ``release push``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from knightwatch.cli.output import out, print_json, progress_bar, shown

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
node_app = typer.Typer(help="Enroll and manage nodes.", no_args_is_help=True)
release_app = typer.Typer(help="Push releases to the control plane.", no_args_is_help=True)
GRACEFUL_SHUTDOWN_S = 5
"""How long a stopping server waits for open connections before it closes them."""


def server(
    data: Annotated[
        Path, typer.Option("--data", help="Data directory (SQLite, blobs, keys)")
    ] = Path("knightwatch-data"),
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Database URL, e.g. "
            "postgresql+psycopg://user@host/db (default SQLite "
            "in DATA; env KNIGHTWATCH_DATABASE_URL)",
        ),
    ] = None,
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
) -> None:
    """Run the control plane (operator API, agent API, orchestrator).

    Off loopback it serves HTTPS (--tls-cert/--tls-key); plain HTTP on another
    address needs --insecure-plaintext.
    """
    import uvicorn

    from knightwatch.api import ControlPlane, create_app
    from knightwatch.logs import configure_logging
    from knightwatch.protocol import MAX_MESSAGE_BYTES
    from knightwatch.settings import ServerSettings

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
        }
    )
    settings.check_transport()
    plane = ControlPlane.open(settings)
    app = create_app(plane)
    uvicorn.run(
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


@node_app.command("enroll", epilog="Example: knightwatch node enroll node1 --ttl 900")
def node_enroll(
    name: Annotated[str, typer.Argument(help="Node name (a-z 0-9 . _ -)")],
    ttl: Annotated[float | None, typer.Option("--ttl", help="Token lifetime in seconds")] = None,
    group: Annotated[str, typer.Option("--group", help="Node group")] = "default",
    json_output: JsonOpt = False,
) -> None:
    """Print a one-time join token for NAME (give it to: knightwatch agent --join-file)."""

    from knightwatch.client import ApiClient, resolve_target

    client = ApiClient(resolve_target())
    grant = client.post(f"/nodes/{name}/enroll", {"ttl_s": ttl, "group": group})
    if json_output:
        print_json(grant)
        return
    out.print(
        f"join token for [bold]{shown(grant['node'])}[/] "
        f"(one use, expires {shown(grant['expires_at'])}):"
    )
    out.print(shown(grant["token"]), soft_wrap=True)


@release_app.command(
    "push", epilog="Example: knightwatch release push smars@2012.8.1 --store store/"
)
def release_push(
    release: Annotated[str, typer.Argument(help="Release ID, name@version or digest")],
    store: Annotated[Path, typer.Option("--store", help="Release store directory")],
    json_output: JsonOpt = False,
) -> None:
    """Upload a built release; the server verifies it before it becomes visible."""
    from knightwatch.bundle import ReleaseStore
    from knightwatch.client import ApiClient, resolve_target
    from knightwatch.push import push_release

    client = ApiClient(resolve_target(), timeout=300.0)
    size = sum(f.size for f in ReleaseStore(store).find(release).manifest.files)
    with progress_bar("uploading", size, enabled=not json_output) as advance:
        pushed = push_release(client, store, release, on_progress=advance)
    result = pushed.to_json()
    if json_output:
        print_json(result)
    elif pushed.already_present:
        out.print(f"[green]✓[/] {shown(pushed.release_id)} is already on the control plane")
    else:
        out.print(
            f"[green]✓[/] pushed [bold]{shown(pushed.release_id)}[/]: {pushed.blobs_sent} blob(s), "
            f"{pushed.bytes_sent:,} bytes; verified by the server"
        )
