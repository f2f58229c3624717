"""``knightwatch example NAME DIR`` and the copy of shipped source trees behind it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from knightwatch.errors import StoreError
from knightwatch.shipped import copy_source_tree, write_example
from tests.helpers import EXAMPLE


def kw(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``knightwatch ARGS`` as a user does, in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "knightwatch", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def tree(root: Path) -> dict[str, tuple[bytes, bool]]:
    """Every file under ``root`` (bytecode left out): its bytes and whether it is executable."""
    return {
        path.relative_to(root).as_posix(): (path.read_bytes(), bool(path.stat().st_mode & 0o111))
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_it_writes_the_example_release_as_the_checkout_has_it(tmp_path: Path) -> None:
    """The sources, byte for byte with their executable bits, and what to do next."""
    done = kw("example", "smars", "mine", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "mine") == tree(EXAMPLE)
    assert "smars@2012.8.1" in done.stdout
    assert "knightwatch bundle build mine --store store/ --key keys/release.key" in done.stdout


def test_json_and_an_empty_directory(tmp_path: Path) -> None:
    """An existing empty directory is filled; ``--json`` says what was written."""
    (tmp_path / "empty").mkdir()
    done = kw("example", "smars", "empty", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "example": "smars",
        "directory": "empty",
        "files": len(tree(EXAMPLE)),
        "release": "smars@2012.8.1",
    }
    assert tree(tmp_path / "empty") == tree(EXAMPLE)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["smars", "full"], "full is not empty"),
        (["smars", "a-file"], "a-file exists and is not a directory"),
        (["nope", "new"], "no example release 'nope'"),
    ],
)
def test_it_refuses_and_changes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    """A non-empty directory, a file or an unknown example: exit 2, one line and a hint."""
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    (tmp_path / "a-file").write_text("keep me")
    before = tree(tmp_path)
    done = kw("example", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and "hint:" in done.stderr and "Traceback" not in done.stderr
    assert tree(tmp_path) == before and not (tmp_path / "new").exists()


def test_the_copy_leaves_out_bytecode_and_sets_the_checkout_modes(tmp_path: Path) -> None:
    """What an installer adds (``__pycache__``) is left out; modes do not follow the install."""
    installed = tmp_path / "installed"
    shutil.copytree(EXAMPLE, installed)
    (installed / "smars" / "__pycache__").mkdir()
    (installed / "smars" / "__pycache__" / "orders.cpython-311.pyc").write_bytes(b"\x00")
    (installed / "stray.pyc").write_bytes(b"\x00")
    (installed / "bin" / "smars-router").chmod(0o644)  # an installer that lost the bit
    (installed / "smars" / "orders.py").chmod(0o600)  # a umask of 077
    copied = copy_source_tree(installed, tmp_path / "copy")
    assert tree(tmp_path / "copy") == tree(EXAMPLE)
    assert (
        copied
        == len(tree(EXAMPLE))
        == sum(1 for p in (tmp_path / "copy").rglob("*") if p.is_file())
    )
    assert not list((tmp_path / "copy").rglob("__pycache__"))
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "copy").rglob("*.py")}
    assert set(modes.values()) == {0o644}


def test_a_copy_that_fails_half_way_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk failing mid-copy: the new directory is gone, an empty one is empty again."""
    real = shutil.copyfile
    calls = iter(range(100))

    def failing(source: Path, target: Path) -> object:
        if next(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(source, target)

    monkeypatch.setattr(shutil, "copyfile", failing)
    with pytest.raises(StoreError, match="No space left on device"):
        write_example("smars", tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    calls = iter(range(100))
    with pytest.raises(StoreError):
        write_example("smars", tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []
