"""``knightwatch server``, ``node enroll`` and ``release push``."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated

import typer

from knightwatch.bundle import ReleaseStore
from knightwatch.bundle.release_store import ENVELOPE_FILE, MANIFEST_FILE, SBOM_FILE
from knightwatch.client import ApiClient, resolve_target
from knightwatch.cli.output import out, print_json, progress_bar
from knightwatch.protocol import MAX_MESSAGE_BYTES

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
node_app = typer.Typer(help="Enroll and manage nodes.", no_args_is_help=True)
release_app = typer.Typer(help="Push releases to the control plane.", no_args_is_help=True)


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
) -> None:
    """Run the control plane (operator API, agent API, orchestrator)."""
    import uvicorn  # noqa: PLC0415  (only the server needs the ASGI stack)

    from knightwatch.api import ControlPlane, create_app  # noqa: PLC0415
    from knightwatch.logs import configure_logging  # noqa: PLC0415
    from knightwatch.settings import ServerSettings  # noqa: PLC0415

    configure_logging("server")
    settings = ServerSettings.load(
        {
            "data_dir": data,
            "database_url": db,
            "host": host,
            "port": port,
            "trusted_keys": tuple(trust) if trust else None,
        }
    )
    plane = ControlPlane.open(settings)
    app = create_app(plane)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        ws_max_size=MAX_MESSAGE_BYTES,
        ws_ping_interval=None,
        access_log=False,
    )


@node_app.command("enroll", epilog="Example: knightwatch node enroll node1 --ttl 900")
def node_enroll(
    name: Annotated[str, typer.Argument(help="Node name (a-z 0-9 . _ -)")],
    ttl: Annotated[float | None, typer.Option("--ttl", help="Token lifetime in seconds")] = None,
    group: Annotated[str, typer.Option("--group", help="Node group")] = "default",
    json_output: JsonOpt = False,
) -> None:
    """Print a one-time join token for NAME (give it to: knightwatch agent --join)."""
    client = ApiClient(resolve_target())
    grant = client.post(f"/nodes/{name}/enroll", {"ttl_s": ttl, "group": group})
    if json_output:
        print_json(grant)
        return
    out.print(f"join token for [bold]{grant['node']}[/] (one use, expires {grant['expires_at']}):")
    out.print(grant["token"], soft_wrap=True)


@release_app.command(
    "push", epilog="Example: knightwatch release push smars@2012.8.1 --store store/"
)
def release_push(
    release: Annotated[str, typer.Argument(help="Release ID, name@version or digest")],
    store: Annotated[Path, typer.Option("--store", help="Release store directory")],
    json_output: JsonOpt = False,
) -> None:
    """Upload a built release; the server verifies it before it becomes visible."""
    found = ReleaseStore(store).find(release)
    client = ApiClient(resolve_target(), timeout=300.0)
    docs = {
        key: base64.b64encode(found.read(name)).decode("ascii")
        for key, name in (
            ("manifest", MANIFEST_FILE),
            ("sbom", SBOM_FILE),
            ("envelope", ENVELOPE_FILE),
        )
    }
    ticket = client.post("/uploads", docs)
    sent = 0
    if not ticket["already_present"]:
        sizes = {f.digest: f.size for f in found.manifest.files if f.digest}
        total = sum(sizes[d] for d in ticket["missing"])
        blobs = ReleaseStore(store).blobs
        with progress_bar("uploading", total, enabled=not json_output) as advance:
            for digest in ticket["missing"]:
                client.put_bytes(
                    f"/uploads/{ticket['upload_id']}/blobs/{digest}", blobs.read(digest)
                )
                sent += sizes[digest]
                advance(sizes[digest])
        client.post(f"/uploads/{ticket['upload_id']}/commit")
    result = {
        "release_id": ticket["release_id"],
        "digest": ticket["digest"],
        "blobs_sent": len(ticket["missing"]),
        "bytes_sent": sent,
        "already_present": ticket["already_present"],
    }
    if json_output:
        print_json(result)
    elif ticket["already_present"]:
        out.print(f"[green]✓[/] {ticket['release_id']} is already on the control plane")
    else:
        out.print(
            f"[green]✓[/] pushed [bold]{ticket['release_id']}[/]: "
            f"{len(ticket['missing'])} blob(s), {sent:,} bytes; verified by the server"
        )
