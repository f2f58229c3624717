"""Entry point of the ``knightwatch`` command."""

from __future__ import annotations

import sys

import typer

from knightwatch import __version__
from knightwatch.cli import (
    agent,
    alerts,
    audit,
    auditlog,
    bundle,
    changes,
    deploy,
    drill,
    example,
    flags,
    fleet,
    history,
    keys,
    killswitch,
    node,
    policy,
    release,
    server,
    status,
    swarm,
    users,
)
from knightwatch.cli.output import err, fail_json, out, report_failure, shown, wants_json
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
release.register(app)
node.register(app)
app.add_typer(fleet.app, name="fleet")
app.add_typer(alerts.app, name="alerts")
app.add_typer(flags.app, name="flags")
app.add_typer(auditlog.app, name="audit-log")
app.add_typer(changes.app, name="change")
server.register(app)
agent.register(app)
deploy.register(app)
status.register(app)
audit.register(app)
killswitch.register(app)
history.register(app)
policy.register(app)
users.register(app)
drill.register(app)
example.register(app)
swarm.register(app)


def _print_version(asked: bool) -> None:
    if asked:
        out.print(f"knightwatch {__version__}", highlight=False)
        raise typer.Exit


@app.callback()
def _options(
    _version: bool = typer.Option(
        False,
        "--version",
        "-V",
        help="Print knightwatch's version and exit.",
        is_eager=True,
        callback=_print_version,
    ),
) -> None:
    """Release-safety control plane: verifiable releases, all-or-nothing deploys, proof of what
    runs, flags, kill switch, audit."""


@app.command("version", epilog="Example: knightwatch version")
def version() -> None:
    """Print knightwatch's version."""
    out.print(__version__)


def run() -> None:
    """Run the CLI, turning every KnightwatchError into one line, a hint and an exit code.

    With ``--json`` a failure is a JSON document on stdout as well
    (``{"ok": false, "error": …, "problems": […]}``), usage errors included,
    unless the command printed its own document before failing.
    """
    as_json = wants_json(sys.argv[1:])
    try:
        if not as_json:
            app()
            return
        code = app(standalone_mode=False)
    except KnightwatchError as exc:
        report_failure(exc, as_json=as_json)
        sys.exit(exc.exit_code)
    except Exception as exc:  # under --json: typer's own (click) usage errors and aborts
        if not type(exc).__module__.startswith(("typer", "click")):
            raise
        _usage_failure(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_failure(exc: Exception) -> None:
    """Report a usage error (or an abort) of a ``--json`` command line, and exit."""
    format_message = getattr(exc, "format_message", None)
    message = format_message() if callable(format_message) else "aborted"
    code = int(getattr(exc, "exit_code", 1))
    err.print(f"[bold red]error:[/] {shown(message)}", soft_wrap=True, highlight=False)
    err.print("[dim]hint:[/] see the command's --help", soft_wrap=True, highlight=False)
    fail_json(str(message), exit_code=code, kind="UsageError", hint="see the command's --help")
    sys.exit(code)
