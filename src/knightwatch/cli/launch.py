"""The ``knightwatch`` command's entry point: the kill switch first, then everything else.

A plain ``knightwatch kill --reason TEXT …`` is carried out without loading
Typer or any other command (:mod:`knightwatch.cli.halting`); every other
invocation — and any ``kill`` that is not plain, ``--help`` included — runs
the Typer app of :mod:`knightwatch.cli.main`, which imports each command's
dependencies only when that command runs.
"""

from __future__ import annotations

import errno
import os
import sys
import types

__all__ = ["run"]


def run() -> None:
    """Run the CLI (the ``knightwatch`` console script and ``python -m knightwatch``)."""
    _without_httpx_cli()
    if sys.argv[1:2] == ["kill"] and "_KNIGHTWATCH_COMPLETE" not in os.environ:  # completion: Typer
        from knightwatch.cli.halting import kill_arguments

        arguments = kill_arguments(sys.argv[1:])
        if arguments is not None:
            _kill(arguments.reason, arguments.nodes, arguments.timeout, arguments.json_output)
            return
    from knightwatch.cli.main import run as run_app

    run_app()


def _kill(reason: str, nodes: str | None, timeout: float, json_output: bool) -> None:
    """``knightwatch kill`` without Typer, ending the way the Typer app ends (exit codes too)."""
    from knightwatch.cli.halting import halt_fleet
    from knightwatch.cli.output import report_failure
    from knightwatch.errors import KnightwatchError

    try:
        halt_fleet(reason, nodes, timeout, json_output)
    except KnightwatchError as exc:  # as knightwatch.cli.main.run does
        report_failure(exc, as_json=json_output)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # as Typer does
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            sys.exit(1)
        raise


def _without_httpx_cli() -> None:
    """Keep ``import httpx`` from loading httpx's own command line (click, Rich, Pygments).

    httpx imports its optional CLI module on import; knightwatch never runs
    it, and it costs as much as the rest of httpx. A stand-in that says so is
    put in its place, unless httpx is loaded already.
    """
    if "httpx" in sys.modules or "httpx._main" in sys.modules:
        return
    stand_in = types.ModuleType("httpx._main")

    def main() -> None:
        """httpx's command line is not loaded inside knightwatch."""
        raise SystemExit("httpx's command line is not available inside knightwatch")

    stand_in.main = main  # type: ignore[attr-defined]
    sys.modules["httpx._main"] = stand_in
