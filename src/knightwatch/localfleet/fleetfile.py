"""``DIR/fleet.json``: every option a local fleet was started with, so each piece can start again.

Written by ``fleet up`` (write-temp, fsync, rename; mode 0600: it holds the
operator token) and read by ``fleet stop|start|restart``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from knightwatch.errors import InvalidInputError

__all__ = ["FLEET_FILE", "read_fleet_file", "write_fleet_file"]

FLEET_FILE = "fleet.json"


def read_fleet_file(directory: Path) -> dict[str, Any]:
    """The fleet file of the fleet in ``directory``; refused naming why it cannot be read."""
    path = directory / FLEET_FILE
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data["options"], dict):
            raise TypeError("not a fleet file")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(
            f"no fleet is up in {directory} (cannot read {path.name}: {exc})",
            hint="start one: knightwatch fleet up --nodes 3 --trust keys/release.pub",
        ) from None
    return data


def write_fleet_file(directory: Path, data: dict[str, Any]) -> None:
    """Replace the fleet file atomically and durably, readable by its owner only."""
    path = directory / FLEET_FILE
    temp = path.with_name(f".{FLEET_FILE}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(data, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    temp.replace(path)
