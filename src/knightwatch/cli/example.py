"""``knightwatch example NAME DIR``: write an example release's sources, shipped in the package."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

import typer

from knightwatch.cli.options import JsonOpt
from knightwatch.cli.output import out, print_json, shown

__all__ = ["example", "register"]


def example(
    name: Annotated[str, typer.Argument(help="Which example release: smars")],
    directory: Annotated[
        Path, typer.Argument(help="Where to write its sources: a new or an empty directory")
    ],
    json_output: JsonOpt = False,
) -> None:
    """Write an example release's sources (knightwatch.toml and code) into a new directory."""
    from knightwatch.shipped import write_example

    files = write_example(name, directory)
    release = tomllib.loads((directory / "knightwatch.toml").read_text())["release"]
    release_name = f"{release['name']}@{release['version']}"
    build = f"knightwatch bundle build {directory} --store store/ --key keys/release.key"
    if json_output:
        print_json(
            {"example": name, "directory": str(directory), "files": files, "release": release_name}
        )
        return
    out.print(
        f"[green]✓[/] wrote the example release [bold]{shown(release_name)}[/] "
        f"({files} files) to [bold]{shown(directory)}[/]",
        soft_wrap=True,
    )
    out.print("build it (keys from: knightwatch keys generate --out keys/):", soft_wrap=True)
    out.print(f"  {shown(build)}", soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``example`` to the CLI."""
    app.command("example", epilog="Example: knightwatch example smars my-release/")(example)
