"""The agent's settings: one frozen, validated object built by the CLI (or a test)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from knightwatch.agent.errors import AgentSetupError

__all__ = ["NODE_NAME", "AgentSettings"]

NODE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class AgentSettings:
    """How one agent runs; the join token is masked in ``repr``."""

    server: str
    root: Path
    name: str
    join: str | None = field(default=None, repr=False)
    trust: tuple[Path, ...] = ()
    service_port: int | None = None
    heartbeat_s: float | None = None
    health_timeout_s: float = 30.0

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
        if self.service_port is not None and not 1 <= self.service_port <= 65535:
            raise AgentSetupError(f"--service-port {self.service_port} is not a TCP port")
        if self.heartbeat_s is not None and not 0 < self.heartbeat_s <= 3600:
            raise AgentSetupError(f"--heartbeat {self.heartbeat_s} must be in (0, 3600] seconds")
        if not 0 < self.health_timeout_s <= 86_400:
            raise AgentSetupError(f"--health-timeout {self.health_timeout_s} must be positive")
