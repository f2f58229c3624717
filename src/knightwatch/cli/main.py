"""Entry point of the ``knightwatch`` command."""

from __future__ import annotations

import sys

import typer

from knightwatch import __version__
from knightwatch.cli import alerts, audit, bundle, fleet, history, keys, killswitch, operate, server
from knightwatch.cli.agent import agent
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
app.add_typer(server.release_app, name="release")
app.add_typer(server.node_app, name="node")
app.add_typer(fleet.app, name="fleet")
app.add_typer(operate.deployment_app, name="deployment")
app.add_typer(alerts.app, name="alerts")
app.command(
    "server",
    epilog="Example: knightwatch server --data /var/lib/knightwatch --trust keys/release.pub",
)(server.server)
app.command(
    "agent",
    epilog="Example: knightwatch agent --server http://127.0.0.1:7400 "
    "--root /var/lib/knightwatch --name node1 --join TOKEN",
)(agent)
app.command("deploy", epilog="Example: knightwatch deploy smars@2012.8.1 --strategy canary --wait")(
    operate.deploy
)
app.command("rollback", epilog="Example: knightwatch rollback --wait")(operate.rollback)
app.command("status", epilog="Example: knightwatch status --json")(operate.status)
app.command("deployments", epilog="Example: knightwatch deployments --limit 5")(operate.deployments)
audit.register(app, server.release_app)
killswitch.register(app)
app.command("history", epilog="Example: knightwatch history smars@2012.8.1")(history.history)
server.node_app.command(
    "drain", epilog='Example: knightwatch node drain node3 --reason "disk replacement"'
)(history.node_drain)
server.node_app.command(
    "resume", epilog='Example: knightwatch node resume node3 --reason "disk replaced"'
)(history.node_resume)
server.node_app.command(
    "retire", epilog='Example: knightwatch node retire node3 --reason "decommissioned"'
)(history.node_retire)


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
