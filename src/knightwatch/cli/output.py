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

from knightwatch.errors import KnightwatchError

__all__ = ["err", "fail", "out", "print_json", "progress_bar"]

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout, for scripts."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def fail(exc: KnightwatchError) -> None:
    """Print one error line and a hint on stderr."""
    err.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True, highlight=False)
    if exc.hint:
        err.print(f"[dim]hint:[/] {escape(exc.hint)}", soft_wrap=True, highlight=False)


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
