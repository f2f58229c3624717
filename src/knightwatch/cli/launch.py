"""The ``knightwatch`` command's entry point: the kill switch first, then everything else.

A plain ``knightwatch kill --reason TEXT …`` is carried out without loading
Typer or any other command (:mod:`knightwatch.cli.halting`); every other
invocation — and any ``kill`` that is not plain, ``--help`` included — runs
the Typer app of :mod:`knightwatch.cli.main`, which imports each command's
dependencies only when that command runs.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import types
from typing import Any

__all__ = ["run"]

DEFERRED = {"rich.markdown": "Markdown", "rich.traceback": "Traceback"}
"""Rich modules Typer's help renderer imports up front but uses only for Markdown help
text and pretty tracebacks (knightwatch's help is Rich markup; pretty tracebacks are off):
together they load markdown_it and Pygments, a third of ``knightwatch --help``'s time."""


def run() -> None:
    """Run the CLI (the ``knightwatch`` console script and ``python -m knightwatch``)."""
    if sys.argv[1:] in (["--version"], ["-V"]):  # answered before any command is loaded
        from knightwatch import __version__

        print(f"knightwatch {__version__}")
        return
    _without_httpx_cli()
    _defer_rich_extras()
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


class _Deferred(types.ModuleType):
    """Stands in for a module of :data:`DEFERRED` until something really uses it.

    ``from rich.markdown import Markdown`` gets a :class:`_DeferredName` class;
    any other attribute loads the real module at once, which then replaces
    this stand-in in ``sys.modules`` (and on its package).
    """

    def __getattr__(self, name: str) -> Any:
        """The deferred name's stand-in, or the real module's attribute."""
        if name.startswith("__"):
            raise AttributeError(name)
        if DEFERRED.get(self.__name__) == name:
            return _DeferredName(name, (), {"deferred_from": self.__name__})
        return getattr(_load_real(self.__name__), name)


class _DeferredName(type):
    """A class standing in for ``module.Name``: using it (a call, an attribute) loads ``module``.

    A class, so that annotations such as ``Markdown | Text`` still evaluate.
    """

    deferred_from: str

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        """Call the real ``module.Name``."""
        return getattr(_load_real(cls.deferred_from), cls.__name__)(*args, **kwargs)

    def __getattr__(cls, attribute: str) -> Any:
        """An attribute of the real ``module.Name`` (``Traceback.from_exception``, …)."""
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(getattr(_load_real(cls.deferred_from), cls.__name__), attribute)


def _load_real(module: str) -> types.ModuleType:
    """Import the real ``module`` in place of its stand-in."""
    stand_in = sys.modules.get(module)
    if isinstance(stand_in, _Deferred):
        del sys.modules[module]
    real = importlib.import_module(module)  # sets it on its package, too
    return real


def _defer_rich_extras() -> None:
    """Put :class:`_Deferred` stand-ins for :data:`DEFERRED` (unless loaded already)."""
    for module in DEFERRED:
        if module not in sys.modules:
            sys.modules[module] = _Deferred(module)
