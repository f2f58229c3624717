"""knightwatch 0.1.0, the released wheel, runnable beside today's code.

The wheel in ``tests/fixtures`` is unpacked once per session into a
directory of its own; a process started with :func:`old_env` imports
knightwatch from there (PYTHONPATH comes before the checkout's editable
install), and takes its dependencies from this virtual environment, which
0.1.0 shares.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

__all__ = ["OLD_VERSION", "OLD_WHEEL", "old_command", "old_env", "unpack_old_release"]

OLD_VERSION = "0.1.0"
OLD_WHEEL = Path(__file__).resolve().parents[1] / "fixtures" / "knightwatch-0.1.0-py3-none-any.whl"


def unpack_old_release(target: Path) -> Path:
    """Unpack the 0.1.0 wheel into ``target`` (once) and check it imports as 0.1.0."""
    marker = target / ".unpacked"
    if not marker.exists():
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(OLD_WHEEL) as wheel:
            wheel.extractall(target)
        marker.touch()
    version = subprocess.run(
        [sys.executable, "-c", "import knightwatch; print(knightwatch.__version__)"],
        env=old_env(target),
        capture_output=True,
        text=True,
        check=True,
        cwd=target,
    ).stdout.strip()
    if version != OLD_VERSION:
        raise RuntimeError(f"{OLD_WHEEL.name} imports as knightwatch {version}")
    return target


def old_env(unpacked: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose ``python -m knightwatch`` is 0.1.0 from ``unpacked``."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = str(unpacked)
    return env


def old_command(*args: str) -> list[str]:
    """The argv of ``knightwatch ARGS`` run by this interpreter (use with :func:`old_env`)."""
    return [sys.executable, "-m", "knightwatch", *args]
