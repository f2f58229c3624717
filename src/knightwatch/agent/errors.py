"""The agent's errors, a branch of knightwatch's one exception tree::

    KnightwatchError
    ├── InvalidInputError
    │   └── AgentSetupError             exit 2  bad settings, refused enrollment
    └── AgentError                      exit 1  something failed on the node
        ├── AgentTransportError                 the control plane could not be reached
        ├── StagingError                        a release could not be fetched or staged
        ├── SwitchError                         ``current`` could not be switched
        ├── ServiceError                        the service could not be started or checked
        └── CgroupUnavailableError              (agent.cgroup) no cgroup can be created here

Each message is one line naming the cause; it travels as the ``reason`` of
an acknowledgement, so the operator reads it on the dashboard.
"""

from __future__ import annotations

from knightwatch.errors import InvalidInputError, KnightwatchError

__all__ = [
    "AgentError",
    "AgentSetupError",
    "AgentTransportError",
    "CgroupUnavailableError",
    "ServiceError",
    "StagingError",
    "SwitchError",
]


class AgentSetupError(InvalidInputError):
    """The agent cannot start: bad settings, missing credential, refused enrollment."""


class AgentError(KnightwatchError):
    """Something the agent tried on the node failed."""


class AgentTransportError(AgentError):
    """The control plane could not be reached or answered with an error."""


class StagingError(AgentError):
    """A release could not be fetched, verified or staged; ``digest`` names it."""

    def __init__(self, message: str, *, digest: str | None = None) -> None:
        super().__init__(message)
        self.digest = digest


class SwitchError(AgentError):
    """``current`` could not be switched to another release."""


class ServiceError(AgentError):
    """The service could not be started, or failed its health or smoke checks."""


class CgroupUnavailableError(AgentError):
    """No cgroup can be created for the service here (not mounted, no permission)."""
