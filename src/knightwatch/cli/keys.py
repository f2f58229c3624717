"""``knightwatch keys``: Ed25519 key pairs for signing releases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from knightwatch.cli.options import JsonOpt
from knightwatch.cli.output import out, print_json, shown

app = typer.Typer(help="Manage the Ed25519 keys that sign releases.", no_args_is_help=True)


@app.command("generate", epilog="Example: knightwatch keys generate --out keys/")
def generate(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory to write NAME.key and NAME.pub")
    ],
    name: Annotated[str, typer.Option(help="Base name of the key files")] = "release",
    json_output: JsonOpt = False,
) -> None:
    """Generate an Ed25519 key pair for signing releases (never overwrites a key)."""
    from knightwatch.bundle import generate_keypair

    private, public, keyid = generate_keypair(out_dir, name)
    if json_output:
        print_json({"private_key": str(private), "public_key": str(public), "keyid": keyid})
        return
    out.print(
        f"[green]✓[/] wrote private key [bold]{shown(private)}[/] (mode 0600: keep it secret)"
    )
    out.print(
        f"[green]✓[/] wrote public key  [bold]{shown(public)}[/] (give it to verifiers: --trust)"
    )
    out.print(f"  key id {shown(keyid)}")
