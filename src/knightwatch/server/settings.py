"""One typed, frozen settings object for the control plane.

Values come from (highest first) explicit arguments (the command's options),
``KNIGHTWATCH_*`` environment variables, the host's configuration file
(``/etc/knightwatch/server.toml`` or ``--config FILE``, see
:mod:`knightwatch.hosting.configfiles`), the data directory's own
``DATA/server.toml``, and defaults. What is given for one run beats what is
written down for every run, and the file an operator names (or keeps in
/etc, where configuration management puts it) beats the one found inside the
data directory, which that file may itself move (``data_dir``). Both files
are read strictly: an unknown key is an error naming the file and the key.

Secrets are wrapped in :class:`Secret` so they never appear in a ``repr``
or a log line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from knightwatch.bundle.spec import GuardSpec
from knightwatch.control.changes.rules import STANDARD, ApprovalPolicy, FreezeWindow, parse_freezes
from knightwatch.control.flags.model import DEFAULT_LIFETIMES, parse_lifetimes
from knightwatch.control.guards import parse_fleet_guards
from knightwatch.control.routing import AlertRouting
from knightwatch.errors import InvalidInputError
from knightwatch.hosting.configfiles import ConfigFile, read_config
from knightwatch.tlsca import is_loopback
from knightwatch.vocabulary import FlagKind

__all__ = ["DEFAULT_SOURCE", "OPTION_SOURCE", "Secret", "ServerSettings", "mask_url"]

DEFAULT_SOURCE = "default"
"""Where a setting nobody set comes from."""
OPTION_SOURCE = "option"
"""Where a setting given as an argument (a command-line option) comes from."""


class Secret:
    """A string that hides itself in ``repr`` and ``str``."""

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``knightwatch server`` needs to run."""

    data_dir: Path = Path("knightwatch-data")
    database_url: Secret | None = None
    host: str = "127.0.0.1"
    port: int = 7400
    tls_cert: Path | None = None
    """PEM certificate chain the server presents (with ``tls_key``); None serves plain HTTP."""
    tls_key: Path | None = None
    insecure_plaintext: bool = False
    """Allow plain HTTP on a non-loopback ``host`` (tokens then travel in clear)."""
    trusted_keys: tuple[Path, ...] = ()
    """Release-signing public keys; DATA/trusted/*.pub are trusted too."""
    prepare_timeout_s: float = 300.0
    commit_timeout_s: float = 120.0
    rollback_timeout_s: float = 120.0
    canary_soak_s: float = 10.0
    heartbeat_s: float = 1.0
    join_token_ttl_s: float = 900.0
    armed_groups: tuple[str, ...] = ()
    """Node groups whose agents halt by themselves after ``dead_man_s`` without us."""
    dead_man_s: float = 5.0
    operator_token: Secret | None = field(default=None)
    """An earlier version's shared operator token: adopted as admin user ``admin`` (once)."""
    approvals: ApprovalPolicy = STANDARD
    """Approvals per risk and checklists: ``[approvals]`` in server.toml, "solo" or JSON."""
    freeze: tuple[FreezeWindow, ...] = ()
    """Change freezes: ``[[freeze]]`` tables in server.toml (name, days, start, end, tz)."""
    alerts: AlertRouting = field(default_factory=AlertRouting)
    """Alert receivers and the escalation route: ``[alerts]`` in server.toml, or JSON."""
    guard: tuple[GuardSpec, ...] = ()
    """Fleet rules: ``[[guard]]`` tables in server.toml (CEL over the sum of the nodes)."""
    max_request_bytes: int = 1024 * 1024
    """The largest request body of an API route, but the ones below (bytes)."""
    max_upload_documents_bytes: int = 768 * 1024 * 1024
    """The largest ``POST /api/v1/uploads`` body: a release's three documents, base64."""
    max_upload_stream_bytes: int = 64 * 1024**3
    """The largest body of one blob upload request (``PUT /api/v1/uploads/ID/blobs``)."""
    upload_expiry_s: float = 3600.0
    """An upload that received nothing for this long is abandoned and deleted."""
    audit_checkpoints: Path | None = None
    """Where signed audit-log checkpoints go (default DATA/audit/checkpoints.jsonl): keep it
    off the database's disk, or copy it away, so a rewritten database cannot rewrite it."""
    audit_checkpoint_key: Path | None = None
    """The Ed25519 key that signs checkpoints (default DATA/audit/checkpoint.key, created)."""
    audit_checkpoint_s: float = 60.0
    """How often a checkpoint is written while the log grows (and always on shutdown)."""
    flag_lifetimes: dict[FlagKind, timedelta | None] = field(
        default_factory=lambda: dict(DEFAULT_LIFETIMES)
    )
    """Expected flag lifetimes per kind: ``release=40,experiment=40,ops=7,kill=never`` (days)."""

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        config: ConfigFile | None = None,
    ) -> ServerSettings:
        """Merge defaults, DATA/server.toml, ``config``, KNIGHTWATCH_* env and ``overrides``."""
        return cls.resolve(overrides, environ, config)[0]

    @classmethod
    def resolve(
        cls,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        config: ConfigFile | None = None,
    ) -> tuple[ServerSettings, dict[str, str]]:
        """The settings, and where each came from (see the module's docstring).

        A source is :data:`OPTION_SOURCE`, an environment variable's name, a
        file's path or :data:`DEFAULT_SOURCE`. Without ``config`` no host
        configuration file is read (only DATA/server.toml).
        """
        env = os.environ if environ is None else environ
        names = [f.name for f in fields(cls)]
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}

        def layer(found: Mapping[str, Any], source: Callable[[str], str]) -> None:
            for name, value in found.items():
                if name not in values:
                    values[name] = value
                    sources[name] = source(name)

        layer(
            {k: v for k, v in (overrides or {}).items() if v is not None and v != ""},
            lambda _name: OPTION_SOURCE,
        )
        layer(
            {
                n: env[f"KNIGHTWATCH_{n.upper()}"]
                for n in names
                if env.get(f"KNIGHTWATCH_{n.upper()}")
            },
            lambda name: f"KNIGHTWATCH_{name.upper()}",
        )
        if config is not None:
            layer(read_config(config, names), lambda _name: str(config.path))
        data_dir = _coerce("data_dir", values.get("data_dir", cls.data_dir), sources)
        values["data_dir"] = data_dir
        local = data_dir / "server.toml"
        layer(
            read_config(ConfigFile(local, None), set(names) - {"data_dir"}), lambda _n: str(local)
        )
        settings = cls(**{name: _coerce(name, value, sources) for name, value in values.items()})
        return settings, {name: sources.get(name, DEFAULT_SOURCE) for name in names}

    def check_transport(self) -> None:
        """Refuse a half-given TLS pair, and plain HTTP on a non-loopback address."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInputError(
                "--tls-cert and --tls-key go together: give both or neither",
                hint="e.g. --tls-cert server.pem --tls-key server.key",
            )
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise InvalidInputError(f"TLS file {path} does not exist")
        if self.tls_cert is None and not self.insecure_plaintext and not is_loopback(self.host):
            raise InvalidInputError(
                f"--host {self.host} is not loopback and the server has no TLS: "
                "tokens and credentials would travel in clear",
                hint="give --tls-cert CERT --tls-key KEY, or --insecure-plaintext "
                "on a network you trust",
            )

    @property
    def base_url(self) -> str:
        """The server's own URL: https when it serves TLS."""
        return f"{'https' if self.tls_cert else 'http'}://{self.host}:{self.port}"

    @property
    def database_display(self) -> str:
        """The database URL with its password masked, or the SQLite path."""
        if self.database_url is None:
            return f"sqlite:///{self.data_dir / 'knightwatch.db'}"
        return mask_url(self.database_url.reveal())


_FLOATS = {
    "prepare_timeout_s",
    "commit_timeout_s",
    "rollback_timeout_s",
    "canary_soak_s",
    "heartbeat_s",
    "join_token_ttl_s",
    "dead_man_s",
    "upload_expiry_s",
    "audit_checkpoint_s",
}
_SIZES = {"max_request_bytes", "max_upload_documents_bytes", "max_upload_stream_bytes"}
_GROUP = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def _groups(value: Any) -> tuple[str, ...]:
    """Group names from a list (server.toml) or a comma-separated string (environment)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise TypeError("expected a list of group names")
    groups = tuple(str(item).strip() for item in items if str(item).strip())
    for group in groups:
        if not _GROUP.fullmatch(group):
            raise ValueError(f"{group!r} is not a group name (a-z 0-9 . _ -)")
    return groups


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _coerce(name: str, value: Any, sources: Mapping[str, str]) -> Any:
    """``value`` of the setting ``name`` as its type; invalid ones refused, naming the source."""
    try:
        return _typed(name, value)
    except (TypeError, ValueError) as exc:
        source = sources.get(name, DEFAULT_SOURCE)
        where = "the option" if source == OPTION_SOURCE else source
        raise InvalidInputError(
            f"setting {name}={value!r} is invalid: {exc}", hint=f"check {name} in {where}"
        ) from exc


def _typed(name: str, value: Any) -> Any:  # noqa: PLR0911, PLR0912 - one branch per kind
    """``value`` as the type of the setting ``name`` (TypeError or ValueError if it is not)."""
    if name in ("database_url", "operator_token"):
        return value if isinstance(value, Secret) else Secret(str(value))
    if name in ("data_dir", "tls_cert", "tls_key", "audit_checkpoints", "audit_checkpoint_key"):
        return Path(value)
    if name == "insecure_plaintext":
        return _boolean(value)
    if name == "alerts":
        return AlertRouting.parse(value)
    if name == "guard":
        return parse_fleet_guards(value)
    if name == "approvals":
        return ApprovalPolicy.parse(value)
    if name == "freeze":
        return parse_freezes(value)
    if name == "port":
        port = int(value)
        if not 0 <= port <= 65535:
            raise ValueError("not a TCP port")
        return port
    if name == "armed_groups":
        return _groups(value)
    if name == "flag_lifetimes":
        if isinstance(value, Mapping) and all(
            v is None or isinstance(v, timedelta) for v in value.values()
        ):
            return dict(value)  # already parsed
        if isinstance(value, Mapping):  # [flag_lifetimes] in server.toml
            value = ",".join(f"{kind}={days}" for kind, days in value.items())
        return parse_lifetimes(str(value))
    if name == "trusted_keys":
        items = value.split(":") if isinstance(value, str) else value
        return tuple(Path(v) for v in items if str(v))
    if name in _SIZES:
        size = int(value)
        if size < 1024:
            raise ValueError("must be at least 1024 bytes")
        return size
    if name in _FLOATS:
        number = float(value)
        if not 0 < number <= 86_400:
            raise ValueError("must be between 0 and 86400 seconds")
        return number
    return str(value)
