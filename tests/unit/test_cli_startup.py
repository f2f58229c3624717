"""How much the ``knightwatch`` command loads before it acts (the kill switch's latency).

Measured by what is imported (``python -X importtime``), never by time: a
command imports only what it uses, and a plain ``kill`` loads neither Typer
nor anything of the server, the agent or the bundle builder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from knightwatch.cli.halting import KillArguments, kill_arguments
from knightwatch.cli.main import app
from tests.unit.test_cli import all_commands

KNIGHTWATCH = str(Path(sys.executable).with_name("knightwatch"))
# Nothing listens on port 1: the command fails to connect, after importing what it needs.
UNREACHABLE = {
    **os.environ,
    "KNIGHTWATCH_SERVER": "http://127.0.0.1:1",
    "KNIGHTWATCH_TOKEN": "t",
    "COLUMNS": "200",
}
HEAVY = (
    "knightwatch.bundle",
    "knightwatch.agent",
    "knightwatch.localfleet",
    "knightwatch.server",
    "knightwatch.api",
    "knightwatch.store",
    "knightwatch.control",
    "uvicorn",
    "fastapi",
    "sqlalchemy",
    "cryptography",
)
"""Never loaded by a command that does not use them (not even by ``--help``)."""
HELP_NEVER = ("markdown_it", "pygments", "rich.markdown", "rich.traceback", "rich.syntax")
"""Never loaded by ``--help``: Typer's help renderer imports them up front, but uses them only
for Markdown help text and pretty tracebacks (:data:`knightwatch.cli.launch.DEFERRED`)."""
FAST_KILL_NEVER = (
    *HEAVY,
    *("typer", "click", "pydantic", "pygments", "markdown_it", "rich.progress", "rich.syntax"),
)
"""Never loaded by a plain ``knightwatch kill``: it needs the HTTP client and a console."""


def imported(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Run ``knightwatch ARGS`` under ``-X importtime``; the modules it imported, and the run."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", KNIGHTWATCH, *args],
        capture_output=True,
        text=True,
        env=UNREACHABLE,
        timeout=120,
        check=False,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    return modules, done


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """The modules of ``packages`` (or their submodules) among ``modules``."""
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def test_plain_kill_loads_only_the_client_and_the_console() -> None:
    """``knightwatch kill --reason R`` imports no Typer, Pydantic, server, agent or bundle code."""
    modules, done = imported("kill", "--reason", "runaway")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "cannot reach the control plane" in done.stderr
    assert "knightwatch.cli.halting" in modules and "httpx" in modules
    assert loaded(modules, FAST_KILL_NEVER) == []


def test_help_lists_every_command_without_loading_heavy_code() -> None:
    """``knightwatch --help`` names every command and loads no server, agent or bundle code."""
    modules, done = imported("--help")
    assert done.returncode == 0, done.stderr[-2000:]
    listed = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("│ ")}
    assert {path[0] for path in all_commands()} <= listed
    assert loaded(modules, (*HEAVY, "httpx")) == []


def test_help_loads_neither_markdown_nor_pygments() -> None:
    """``knightwatch --help`` and a command's ``--help`` defer Rich's Markdown and tracebacks."""
    for argv in (["--help"], ["deploy", "--help"], ["node", "--help"]):
        modules, done = imported(*argv)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "typer.rich_utils" in modules and "Usage: knightwatch" in done.stdout
        assert loaded(modules, HELP_NEVER) == []


def test_deferred_rich_modules_still_work_when_used() -> None:
    """Code that does use the deferred Markdown or Traceback gets the real ones, loaded then."""
    code = (
        "import io, sys; from knightwatch.cli import launch; launch._defer_rich_extras()\n"
        "from rich.markdown import Markdown; from rich.traceback import Traceback\n"
        "from rich.console import Console\n"
        "assert 'markdown_it' not in sys.modules\n"
        "console = Console(file=io.StringIO(), width=40)\n"
        "console.print(Markdown('# Title'))\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError as exc:\n"
        "    tb = Traceback.from_exception(type(exc), exc, exc.__traceback__)\n"
        "import rich, rich.markdown as md, rich.traceback as rt\n"
        "assert type(tb) is rt.Traceback and rich.markdown is md and 'markdown_it' in sys.modules\n"
        "assert 'Title' in console.file.getvalue()\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr[-2000:]


def test_commands_that_talk_to_the_server_load_no_server_code() -> None:
    """``knightwatch status`` loads the client, but not the bundle builder, agent or server."""
    modules, done = imported("status")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "httpx" in modules
    assert loaded(modules, HEAVY) == []


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["kill", "--reason", "r"], KillArguments("r")),
        (["kill", "--reason=r", "--json"], KillArguments("r", json_output=True)),
        (
            ["kill", "--nodes", "group=ops,node3", "--reason", "a b", "--timeout", "2.5"],
            KillArguments("a b", "group=ops,node3", 2.5),
        ),
        (["kill", "--reason", "first", "--reason", "last"], KillArguments("last")),
    ],
)
def test_plain_kill_arguments_are_read_as_typer_reads_them(
    argv: list[str], expected: KillArguments
) -> None:
    """A plain kill's options, ``--opt=value`` and repeated options included."""
    assert kill_arguments(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["status"],
        ["kill"],
        ["kill", "--help"],
        ["kill", "--reason"],
        ["kill", "--reason", ""],
        ["kill", "--reason", "--json"],
        ["kill", "--reason", "r", "--timeout", "1e3"],
        ["kill", "--reason", "r", "--timeout", "-1"],
        ["kill", "--reason", "r", "--no-json"],
        ["kill", "--reason", "r", "extra"],
        ["kill", "--json=yes", "--reason", "r"],
        ["rearm", "--reason", "r"],
    ],
)
def test_anything_but_a_plain_kill_is_left_to_typer(argv: list[str]) -> None:
    """Help, errors and unusual forms go through Typer, so they read exactly as before."""
    assert kill_arguments(argv) is None


def test_fast_kill_ends_exactly_as_the_typer_command() -> None:
    """Same output and exit code with and without the fast path (here: no control plane)."""
    fast = subprocess.run(
        [KNIGHTWATCH, "kill", "--reason", "r", "--timeout", "1"],
        capture_output=True,
        text=True,
        env=UNREACHABLE,
        timeout=120,
        check=False,
    )
    code = "import sys; from knightwatch.cli.main import run; sys.argv[0] = 'knightwatch'; run()"
    typer_run = subprocess.run(
        [sys.executable, "-c", code, "kill", "--reason", "r", "--timeout", "1"],
        capture_output=True,
        text=True,
        env=UNREACHABLE,
        timeout=120,
        check=False,
    )
    assert (fast.returncode, fast.stdout, fast.stderr) == (
        typer_run.returncode,
        typer_run.stdout,
        typer_run.stderr,
    )
    assert fast.returncode == 1 and "error:" in fast.stderr


def test_main_app_still_has_the_kill_command() -> None:
    """The Typer app keeps ``kill`` (its help, its errors, unusual forms of it)."""
    assert ["kill"] in all_commands()
    assert app.info.name == "knightwatch"
