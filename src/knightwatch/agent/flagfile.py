"""The node's flags: the control plane's values kept on disk, and the service's flags.json.

The agent keeps the last :class:`~knightwatch.protocol.FlagValues` it received
in ``ROOT/agent/flag-values.json`` and writes ``ROOT/flags.json`` (format 1,
docs/flags-file.md) for the release whose service runs: every flag that
release declares, with the control plane's value or the declared safe
default. Both are replaced atomically, and flags.json is written before a
service starts, so a service never starts with another release's flags.

Why a restarted agent's values are current: the control plane refuses a flag
change unless every node in scope is connected (``nodes-connected``), so no
value changes for a node while its agent is down; and on every connection the
control plane sends the values in force first.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from datetime import UTC
from pathlib import Path

from pydantic import ValidationError

from knightwatch.agent.events import event
from knightwatch.agent.layout import NodeLayout, atomic_write
from knightwatch.bundle.manifest import Manifest
from knightwatch.bundle.spec import FlagSpec
from knightwatch.clock import Clock, SystemClock
from knightwatch.protocol import FlagValues

__all__ = ["FLAGS_FORMAT", "NodeFlags", "declared_defaults"]

FLAGS_FORMAT = 1
_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string"}


def _type_name(value: object) -> str:
    return _TYPES[type(value)]


def declared_defaults(specs: list[FlagSpec]) -> dict[str, dict[str, object]]:
    """``KNIGHTWATCH_FLAG_DEFAULTS``: what a release declares, kind, type and safe default."""
    return {
        spec.name: {"kind": spec.kind, "type": _type_name(spec.default), "default": spec.default}
        for spec in specs
    }


class NodeFlags:
    """The control plane's flag values on this node, and the service's flags.json."""

    def __init__(self, layout: NodeLayout, node: str, clock: Clock | None = None) -> None:
        self._layout = layout
        self._clock = clock or SystemClock()
        self._node = node
        self._values_file = layout.agent_dir / "flag-values.json"
        self.evaluations_dir = layout.evaluations_dir
        self.values = self._load()

    @property
    def version(self) -> int | None:
        """The flag-state version last received (None: never)."""
        return None if self.values is None else self.values.version

    def _load(self) -> FlagValues | None:
        try:
            return FlagValues.model_validate_json(self._values_file.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            event("flag-values-unreadable", path=str(self._values_file), detail=str(exc)[:200])
            return None

    def receive(self, values: FlagValues, manifest: Manifest | None) -> None:
        """Keep the control plane's values, then rewrite flags.json for the running release."""
        atomic_write(self._values_file, values.model_dump_json().encode(), mode=0o600)
        self.values = values
        self.write_for(manifest)

    def write_for(self, manifest: Manifest | None) -> None:
        """Write flags.json for ``manifest``'s declared flags (None: no release runs)."""
        atomic_write(self._layout.flags_file, self.render(manifest))

    def render(self, manifest: Manifest | None) -> bytes:
        """The bytes of flags.json for ``manifest`` with the values held now."""
        settings = self.values.values if self.values is not None else {}
        flags: dict[str, dict[str, object]] = {}
        for spec in manifest.spec.flag if manifest is not None else []:
            setting = settings.get(spec.name)
            value: object = spec.default
            source = "default"
            if setting is not None and _fits(setting.value, spec.default):
                value, source = _as_type(setting.value, spec.default), setting.source
            flags[spec.name] = {
                "kind": spec.kind,
                "type": _type_name(spec.default),
                "default": spec.default,
                "value": value,
                "source": source,
            }
        document = {
            "format": FLAGS_FORMAT,
            "node": self._node,
            "release": manifest.digest if manifest is not None else None,
            "version": self.version or 0,
            "written_at": self._clock.now().astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "flags": flags,
        }
        return json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"

    def evaluations(self, digest: str | None) -> dict[str, int]:
        """Evaluation counts the running release's service processes reported, summed.

        A process's file stays after it exits, so the counts stay cumulative
        across service restarts (a reused pid overwrites its predecessor's).
        """
        if digest is None:
            return {}
        totals: dict[str, int] = {}
        for path in self._count_files():
            counts = _read_counts(path, digest)
            for name, count in counts.items():
                totals[name] = totals.get(name, 0) + count
        return totals

    def _count_files(self) -> list[Path]:
        try:
            return sorted(p for p in self.evaluations_dir.iterdir() if p.suffix == ".json")
        except OSError:
            return []


def _read_counts(path: Path, digest: str) -> Mapping[str, int]:
    with contextlib.suppress(OSError, ValueError):
        if path.stat().st_size > 4 * 1024 * 1024:
            return {}
        data = json.loads(path.read_bytes())
        if isinstance(data, dict) and data.get("release") == digest:
            counts = data.get("counts")
            if isinstance(counts, dict):
                return {
                    str(k): v
                    for k, v in counts.items()
                    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62
                }
    return {}


def _fits(value: object, default: object) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return type(value) is type(default)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return type(value) is type(default)


def _as_type(value: object, default: object) -> object:
    return float(value) if isinstance(default, float) and isinstance(value, int) else value
