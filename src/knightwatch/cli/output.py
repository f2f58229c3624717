"""How the CLI talks to people (Rich) and to scripts (``--json``)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape

from knightwatch.errors import KnightwatchError, PolicyRefusedError, Refusal, VerificationError
from knightwatch.text import visible

__all__ = [
    "colour",
    "err",
    "fail",
    "fail_json",
    "out",
    "paint",
    "print_json",
    "print_refusals",
    "progress_bar",
    "report_failure",
    "shown",
    "wants_json",
]

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)
MAX_PROBLEMS_SHOWN = 20
_printed_json = [False]
_STATE_COLOURS = {
    "ACTIVE": "green",
    "PREPARED": "cyan",
    "SUCCEEDED": "green",
    "CONVERGED": "green",
    "ROLLED_BACK": "yellow",
    "MIXED": "red",
    "DEGRADED": "yellow",
    "FAILED": "red",
    "PREPARE_FAILED": "red",
    "COMMIT_FAILED": "red",
    "ROLLBACK_FAILED": "red",
    "DEPLOYING": "cyan",
    "DRIFTED": "bold red",
    "drifted": "bold red",
    "clean": "green",
    "unknown": "yellow",
    "running": "green",
    "crash_loop": "red",
    "OFFLINE": "yellow",
    "UNKNOWN": "bold yellow",
    "CONNECTED": "green",
    "PENDING": "yellow",
    # the lifecycle of a configuration item (history, node changes)
    "active": "green",
    "enrolled": "cyan",
    "deployed": "cyan",
    "added": "green",
    "changed": "yellow",
    "drained": "yellow",
    "superseded": "dim",
    "retired": "red",
}
"""The colour of each state word the CLI shows (fleet, node, deployment and phase states)."""


def shown(value: object) -> str:
    """``value`` as text safe inside Rich markup: brackets escaped, control characters visible.

    Every string that came from a person or a node (a reason, a name, a
    detail, a path) goes through this before a Rich print or table, so
    ``[/]`` prints as itself and an escape sequence as ``\\x1b``.
    """
    return escape(visible(str(value)))


def colour(word: str) -> str:
    """The Rich colour the CLI gives the state ``word`` (white when it has none)."""
    return _STATE_COLOURS.get(word, "white")


def paint(word: str) -> str:
    """``word``, shown in the colour the CLI gives that state."""
    return f"[{colour(word)}]{shown(word)}[/]"


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout, for scripts."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    _printed_json[0] = True


def fail(exc: KnightwatchError) -> None:
    """Print one error line and a hint on stderr (and a refused release's problems).

    A refusal of the safety policy is a headline and the table of every reason.
    """
    if isinstance(exc, PolicyRefusedError):
        count = len(exc.refusals)
        headline = f"{exc.action} refused ({count} reason{'s' if count != 1 else ''}):"
        err.print(f"[bold red]error:[/] {shown(headline)}", soft_wrap=True, highlight=False)
        print_refusals(exc.refusals, console=err)
        return
    err.print(f"[bold red]error:[/] {shown(exc.message)}", soft_wrap=True, highlight=False)
    if isinstance(exc, VerificationError):
        for problem in exc.problems[:MAX_PROBLEMS_SHOWN]:
            err.print(f"  [red]✗[/] {shown(problem)}", soft_wrap=True, highlight=False)
        if len(exc.problems) > MAX_PROBLEMS_SHOWN:
            more = len(exc.problems) - MAX_PROBLEMS_SHOWN
            err.print(f"  … and {more} more (all of them: add --json)", soft_wrap=True)
    if exc.hint:
        err.print(f"[dim]hint:[/] {shown(exc.hint)}", soft_wrap=True, highlight=False)


def print_refusals(refusals: list[Refusal], *, console: Console) -> None:
    """Print refusals as a table: check, reason, subjects, hint.

    On a terminal the table wraps to its width; elsewhere (a pipe, a log)
    every refusal stays on one line, so a reason is never cut by another column.
    """
    from rich.table import Table  # only a refusal pays for tables

    wrap = console.is_terminal
    table = Table(show_lines=wrap)
    for column in ("check", "reason", "subjects", "hint"):
        table.add_column(column, no_wrap=not wrap, overflow="fold")
    for refusal in refusals:
        table.add_row(
            shown(refusal.check),
            shown(refusal.reason),
            shown(", ".join(refusal.subjects)),
            shown(refusal.hint or ""),
        )
    if wrap:
        console.print(table)
    else:
        Console(file=console.file, width=100_000, highlight=False).print(table)


def wants_json(argv: list[str]) -> bool:
    """Tell whether a command line asks for ``--json`` (before any ``--``)."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in options


def fail_json(
    message: str,
    *,
    exit_code: int,
    kind: str,
    hint: str | None = None,
    problems: list[str] | None = None,
    refusals: list[Refusal] | None = None,
) -> None:
    """Print the failure as a JSON document on stdout, unless the command printed one already.

    A refusal of the safety policy adds ``refusals``: ``{check, reason, subjects, hint}``
    each, the shape the API answers.
    """
    if _printed_json[0]:
        return
    document: dict[str, Any] = {
        "ok": False,
        "error": message,
        "hint": hint,
        "kind": kind,
        "exit_code": exit_code,
        "problems": problems or [],
    }
    if refusals is not None:
        document["refusals"] = [r.to_json() for r in refusals]
    print_json(document)


def report_failure(exc: KnightwatchError, *, as_json: bool) -> None:
    """Tell a person (one line and a hint on stderr) and, with ``--json``, a script too."""
    fail(exc)
    if as_json:
        problems = exc.problems if isinstance(exc, VerificationError) else None
        fail_json(
            exc.message,
            exit_code=exc.exit_code,
            kind=type(exc).__name__,
            hint=exc.hint,
            problems=problems,
            refusals=exc.refusals if isinstance(exc, PolicyRefusedError) else None,
        )


@contextmanager
def progress_bar(label: str, total: int, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(bytes)`` callback drawing a transient bar on stderr when a TTY."""
    if not enabled or not err.is_terminal:
        yield lambda _amount: None
        return
    from rich.progress import (  # only a command that shows a bar pays for it
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    # No refresh thread: hashing workers are forked, which is only safe single-threaded.
    with Progress(*columns, console=err, transient=True, auto_refresh=False) as progress:
        task = progress.add_task(label, total=total)
        last = [0.0]

        def advance(amount: int) -> None:
            progress.advance(task, amount)
            now = time.monotonic()
            if now - last[0] > 0.1:
                last[0] = now
                progress.refresh()

        yield advance
