"""Host configuration files: where they are and how one is read.

The server reads ``server.toml`` and the agent ``agent.toml`` from the
configuration directory, ``/etc/knightwatch`` (or ``KNIGHTWATCH_CONFIG_DIR``
when set: a test, or a second installation on one host, points it elsewhere).
That default file is optional. A file named explicitly (``--config FILE``, or
the command's environment variable) must exist.

A file is read strictly: TOML, and every key must be one the command knows,
so a misspelt setting is an error naming the file and the key, never a
setting silently left at its default.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knightwatch.errors import InvalidInputError

__all__ = [
    "AGENT_CONFIG_ENV",
    "AGENT_ENV_PREFIX",
    "CONFIG_DIR",
    "CONFIG_DIR_ENV",
    "SERVER_CONFIG_ENV",
    "ConfigFile",
    "agent_config_file",
    "locate",
    "read_config",
    "server_config_file",
]

CONFIG_DIR = Path("/etc/knightwatch")
"""Where the host's configuration files live."""
CONFIG_DIR_ENV = "KNIGHTWATCH_CONFIG_DIR"
"""Environment variable that moves :data:`CONFIG_DIR` (tests point it at an empty place)."""
SERVER_CONFIG_ENV = "KNIGHTWATCH_SERVER_CONFIG"
"""Names the server's settings file, like ``--config``."""
AGENT_CONFIG_ENV = "KNIGHTWATCH_AGENT_CONFIG"
"""Names the agent's settings file, like ``--config``."""
AGENT_ENV_PREFIX = "KNIGHTWATCH_AGENT_"
"""``KNIGHTWATCH_AGENT_<OPTION>`` sets an agent option (see :mod:`knightwatch.cli.agentconfig`)."""


@dataclass(frozen=True)
class ConfigFile:
    """One configuration file a command reads, and whether it must exist."""

    path: Path
    named_by: str | None
    """``--config`` or the environment variable that named it; None for the default file."""

    @property
    def required(self) -> bool:
        """An explicitly named file must exist; the default one is optional."""
        return self.named_by is not None


def locate(
    filename: str, given: Path | None, env_name: str, environ: Mapping[str, str]
) -> ConfigFile:
    """The file to read: ``given`` (``--config``), else ``$env_name``, else the default one."""
    if given is not None:
        return ConfigFile(given, "--config")
    named = environ.get(env_name)
    if named:
        return ConfigFile(Path(named), env_name)
    return ConfigFile(Path(environ.get(CONFIG_DIR_ENV) or CONFIG_DIR) / filename, None)


def server_config_file(given: Path | None, environ: Mapping[str, str]) -> ConfigFile:
    """The server's settings file: ``--config``, ``$KNIGHTWATCH_SERVER_CONFIG`` or the default."""
    return locate("server.toml", given, SERVER_CONFIG_ENV, environ)


def agent_config_file(given: Path | None, environ: Mapping[str, str]) -> ConfigFile:
    """The agent's settings file: ``--config``, ``$KNIGHTWATCH_AGENT_CONFIG`` or the default."""
    return locate("agent.toml", given, AGENT_CONFIG_ENV, environ)


def read_config(file: ConfigFile, known: Collection[str]) -> dict[str, Any]:
    """The settings in ``file`` ({} when an optional file is absent); unknown keys refused."""
    path = file.path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if file.required:
            raise InvalidInputError(
                f"configuration file {path} (from {file.named_by}) does not exist",
                hint="give the path of an existing TOML file, or leave it out",
            ) from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: cannot read the configuration file: {exc}") from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid TOML: {exc}") from None
    for key in values:
        if key not in known:
            raise InvalidInputError(
                f"{path}: unknown setting {key!r}", hint=_known_hint(key, known)
            )
    return values


def _known_hint(key: str, known: Collection[str]) -> str:
    """Suggest the closest known key, and list them all."""
    close = difflib.get_close_matches(key, list(known), n=1)
    also = f"did you mean {close[0]!r}? " if close else ""
    return f"{also}the settings are: {', '.join(sorted(known))}"
