"""The agent's settings from its options, ``KNIGHTWATCH_AGENT_*`` variables and ``agent.toml``.

Every option ``--foo-bar`` of ``knightwatch agent`` (but the one-time
``--join`` token) is also the key ``foo_bar`` of the agent's configuration
file (``/etc/knightwatch/agent.toml``, or ``--config FILE``, or
``KNIGHTWATCH_AGENT_CONFIG``) and the environment variable
``KNIGHTWATCH_AGENT_FOO_BAR``. The first found wins, in that order: option,
variable, file, default. A repeatable option (``--trust``) given at all
replaces the whole list; in a variable its items are separated by ``:``
(paths) or ``,`` (fingerprints).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from knightwatch.errors import InvalidInputError
from knightwatch.hosting.configfiles import (
    AGENT_ENV_PREFIX,
    ConfigFile,
    agent_config_file,
    read_config,
)

__all__ = ["DEFAULTS", "ENV_PREFIX", "KINDS", "AgentValues", "agent_values", "resolve"]

ENV_PREFIX = AGENT_ENV_PREFIX
Kind = Literal["text", "path", "paths", "texts", "int", "float"]
KINDS: dict[str, Kind] = {
    "server": "text",
    "root": "path",
    "name": "text",
    "join_file": "path",
    "trust": "paths",
    "trust_fingerprint": "texts",
    "ca": "path",
    "service_port": "int",
    "heartbeat": "float",
    "health_timeout": "float",
    "cgroup_mount": "path",
    "audit_interval": "float",
    "stat_interval": "float",
    "process_check_interval": "float",
    "functional_check_interval": "float",
}
"""Every setting of the agent (the option's name with ``_``) and its kind of value."""
DEFAULTS: dict[str, Any] = {
    "trust": [],
    "trust_fingerprint": [],
    "health_timeout": 30.0,
    "cgroup_mount": Path("/sys/fs/cgroup"),
    "audit_interval": 600.0,
    "stat_interval": 5.0,
    "process_check_interval": 1.0,
    "functional_check_interval": 60.0,
}
"""The settings that have a default (the others are None, or required)."""
OPTION = "option"
DEFAULT = "default"


@dataclass(frozen=True)
class AgentValues:
    """Each setting's value (None when unset) and where it came from."""

    values: dict[str, Any]
    sources: dict[str, str]


def resolve(
    options: Mapping[str, Any], environ: Mapping[str, str], config: ConfigFile
) -> AgentValues:
    """Merge ``options`` (None or [] when not given), the environment, the file and defaults."""
    from_file = read_config(config, KINDS)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, kind in KINDS.items():
        given = options.get(key)
        variable = ENV_PREFIX + key.upper()
        if given is not None and given != []:
            values[key], sources[key] = _typed(key, kind, given, OPTION), OPTION
        elif environ.get(variable):
            values[key] = _typed(key, kind, _split(kind, environ[variable]), variable)
            sources[key] = variable
        elif key in from_file:
            values[key] = _typed(key, kind, from_file[key], str(config.path))
            sources[key] = str(config.path)
        else:
            values[key], sources[key] = DEFAULTS.get(key), DEFAULT
    return AgentValues(values, sources)


def agent_values(options: Mapping[str, Any], config: Path | None) -> AgentValues:
    """The agent's settings from ``options``, this process's environment and its settings file."""
    import os

    return resolve(options, os.environ, agent_config_file(config, os.environ))


def _split(kind: Kind, text: str) -> Any:
    """A variable's text as the kind's raw value: lists split on ``:`` or ``,``."""
    if kind == "paths":
        return [item for item in text.split(":") if item]
    if kind == "texts":
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def _typed(key: str, kind: Kind, value: Any, source: str) -> Any:
    """``value`` as ``kind``; a wrong one refused, naming the setting and its source."""
    try:
        return _convert(kind, value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"{source}: {key} = {value!r} is invalid: {exc}", hint=f"check {key} in {source}"
        ) from None


def _convert(kind: Kind, value: Any) -> Any:
    if kind in ("paths", "texts"):
        items = [value] if isinstance(value, str | Path) else value
        if not isinstance(items, list | tuple):
            raise TypeError("expected a list")
        return [_convert("path" if kind == "paths" else "text", item) for item in items]
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError("expected a whole number")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError("expected a number")
        return float(value)
    if not isinstance(value, str | Path):
        raise TypeError("expected a string")
    if kind == "path":
        return Path(value)
    return str(value)
