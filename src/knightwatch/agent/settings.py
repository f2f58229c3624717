"""The agent's settings: one frozen, validated object built by the CLI (or a test)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from knightwatch.agent.errors import AgentSetupError

__all__ = ["FINGERPRINT", "NODE_NAME", "AgentSettings", "AuditSettings"]

NODE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
FINGERPRINT = re.compile(r"^SHA256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class AuditSettings:
    """How often each part of the audit runs."""

    sweep_interval_s: float = 600.0
    """Full re-hash of the active tree."""
    stat_interval_s: float = 5.0
    """Stat sweep (no hashing) that catches changes the watcher missed."""
    process_interval_s: float = 1.0
    functional_interval_s: float = 60.0
    watch_debounce_ms: int = 400
    watch_step_ms: int = 50
    flood_paths: int = 4096
    stale_tolerance_s: float = 0.5


@dataclass(frozen=True)
class AgentSettings:
    """How one agent runs; the join token is masked in ``repr``."""

    server: str
    root: Path
    name: str
    join: str | None = field(default=None, repr=False)
    trust: tuple[Path, ...] = ()
    trust_fingerprints: tuple[str, ...] = ()
    """``SHA256:<hex>`` key ids: at enrollment, keep only the server's keys that match."""
    ca: Path | None = None
    """The CA certificate the control plane's TLS certificate must chain to (pinned)."""
    service_port: int | None = None
    heartbeat_s: float | None = None
    health_timeout_s: float = 30.0
    cgroup_mount: Path = Path("/sys/fs/cgroup")
    """Where the cgroup hierarchies are mounted; a service gets a group of its own there."""
    audit: AuditSettings = field(default_factory=AuditSettings)

    def __post_init__(self) -> None:
        """Refuse settings the agent cannot run with (exit 2)."""
        if not NODE_NAME.fullmatch(self.name):
            raise AgentSetupError(
                f"--name {self.name!r} is not a valid node name",
                hint="use 1-63 of a-z 0-9 . _ -, starting with a letter or digit",
            )
        if not self.server.startswith(("http://", "https://")):
            raise AgentSetupError(
                f"--server {self.server!r} is not an http:// or https:// URL",
                hint="e.g. --server http://127.0.0.1:7400",
            )
        for fingerprint in self.trust_fingerprints:
            if not FINGERPRINT.fullmatch(fingerprint):
                raise AgentSetupError(
                    f"--trust-fingerprint {fingerprint!r} is not SHA256:<64 hex digits>",
                    hint="SHA256: then the key id that knightwatch keys generate printed",
                )
        if self.ca is not None:
            if not self.server.startswith("https://"):
                raise AgentSetupError(
                    f"--ca is given but --server {self.server} is not https://",
                    hint="point --server at the control plane's https:// URL",
                )
            if not self.ca.is_file():
                raise AgentSetupError(f"--ca {self.ca} does not exist")
        if self.service_port is not None and not 1 <= self.service_port <= 65535:
            raise AgentSetupError(f"--service-port {self.service_port} is not a TCP port")
        if self.heartbeat_s is not None and not 0 < self.heartbeat_s <= 3600:
            raise AgentSetupError(f"--heartbeat {self.heartbeat_s} must be in (0, 3600] seconds")
        if not 0 < self.health_timeout_s <= 86_400:
            raise AgentSetupError(f"--health-timeout {self.health_timeout_s} must be positive")
        audit = self.audit
        for flag, value in (
            ("--audit-interval", audit.sweep_interval_s),
            ("--stat-interval", audit.stat_interval_s),
            ("--process-check-interval", audit.process_interval_s),
            ("--functional-check-interval", audit.functional_interval_s),
        ):
            if not 0.05 <= value <= 86_400:
                raise AgentSetupError(f"{flag} {value:g} must be between 0.05 and 86400 seconds")
