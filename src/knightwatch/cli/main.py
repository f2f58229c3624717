"""Entry point of the ``knightwatch`` command."""

from __future__ import annotations

import sys

import typer

from knightwatch import __version__
from knightwatch.cli import bundle, keys
from knightwatch.cli.output import fail, out
from knightwatch.errors import KnightwatchError

app = typer.Typer(
    name="knightwatch",
    help="Release-safety control plane: verifiable releases, all-or-nothing deploys, "
    "proof of what runs, flags, kill switch, audit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    epilog="Example: knightwatch bundle build examples/smars --store store/ --key keys/release.key",
)
app.add_typer(keys.app, name="keys")
app.add_typer(bundle.app, name="bundle")


@app.command("version", epilog="Example: knightwatch version")
def version() -> None:
    """Print knightwatch's version."""
    out.print(__version__)


def run() -> None:
    """Run the CLI, turning every KnightwatchError into one line, a hint and an exit code."""
    try:
        app()
    except KnightwatchError as exc:
        fail(exc)
        sys.exit(exc.exit_code)
