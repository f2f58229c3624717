"""One version source: ``knightwatch.__version__``; the package metadata and the CLI follow it."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib

import knightwatch
from tests.helpers import REPO


def test_pyproject_takes_the_version_from_the_package() -> None:
    """pyproject.toml reads the version from ``__init__``: nothing to keep in step."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["hatch"]["version"]["path"] == "src/knightwatch/__init__.py"


def test_the_installed_distribution_has_the_package_version() -> None:
    """The installed metadata's version is ``__version__`` (tests/install checks a real wheel).

    An editable install keeps the version it was installed with: after a
    version bump, ``make venv`` (or ``pip install -e '.[dev]'``) installs again.
    """
    installed = importlib.metadata.version("knightwatch")
    assert installed == knightwatch.__version__, (
        f"the installed knightwatch metadata says {installed}, the code {knightwatch.__version__}: "
        "reinstall (make venv, or pip install -e '.[dev]')"
    )


def test_version_flag_and_command_print_it() -> None:
    """``knightwatch --version`` and ``-V`` print name and version; ``version`` the version."""
    for args, expected in (
        (["--version"], f"knightwatch {knightwatch.__version__}"),
        (["-V"], f"knightwatch {knightwatch.__version__}"),
        (["version"], knightwatch.__version__),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "knightwatch", *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert done.stdout.strip() == expected, args
