"""``knightwatch drill knightmare`` and ``knightwatch demo``: what they refuse before running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

KNIGHTWATCH = str(Path(sys.executable).with_name("knightwatch"))


def kw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KNIGHTWATCH, *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("command", [["drill", "knightmare"], ["demo"]])
def test_help_has_an_example(command: list[str]) -> None:
    done = kw(*command, "--help")
    assert done.returncode == 0
    assert "Example:" in done.stdout and "--seed" in done.stdout and "--speed" in done.stdout


@pytest.mark.parametrize(
    "args", [["--speed", "-1"], ["--seed", "-5"], ["--speed", "nan"], ["--seed", "x"]]
)
def test_bad_numbers_are_refused_before_anything_starts(args: list[str], tmp_path: Path) -> None:
    done = kw("drill", "knightmare", *args, "--report", str(tmp_path / "r"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()


def test_a_report_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("mine\n")
    done = kw("drill", "knightmare", "--report", str(target))
    assert done.returncode == 2
    assert "is a file, not a directory" in done.stderr
    assert target.read_text() == "mine\n"


def test_a_work_directory_the_drill_did_not_make_is_never_deleted(tmp_path: Path) -> None:
    precious = tmp_path / "work" / "precious.txt"
    precious.parent.mkdir()
    precious.write_text("keep me\n")
    done = kw("drill", "knightmare", "--report", str(tmp_path))
    assert done.returncode == 2
    assert "not a drill's work directory" in done.stderr
    assert precious.read_text() == "keep me\n"
