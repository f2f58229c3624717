"""The node agent: stage, verify, switch and supervise releases for the control plane.

One agent runs per node. It holds one WebSocket to the control plane,
reports what runs (signed, by content hash), and carries out deployment
commands — prepare, commit, rollback, abort — against its node layout
(see :mod:`knightwatch.agent.layout`). It never touches the control plane's
store.
"""

from knightwatch.agent.commands import CommandRunner
from knightwatch.agent.connection import Backoff, Connection, websocket_url
from knightwatch.agent.errors import (
    AgentError,
    AgentSetupError,
    AgentTransportError,
    CgroupUnavailableError,
    ServiceError,
    StagingError,
    SwitchError,
)
from knightwatch.agent.httpsource import HttpReleaseSource
from knightwatch.agent.journal import AgentState, Journal, reconcile
from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.main import Agent, run_agent
from knightwatch.agent.service import ServiceController
from knightwatch.agent.settings import AgentSettings
from knightwatch.agent.source import LocalReleaseSource, ReleaseSource
from knightwatch.agent.staging import StagedRelease, Stager
from knightwatch.agent.supervisor import RestartPolicy, Supervisor

__all__ = [
    "Agent",
    "AgentError",
    "AgentSettings",
    "AgentSetupError",
    "AgentState",
    "AgentTransportError",
    "Backoff",
    "CgroupUnavailableError",
    "CommandRunner",
    "Connection",
    "HttpReleaseSource",
    "Journal",
    "LocalReleaseSource",
    "NodeLayout",
    "ReleaseSource",
    "RestartPolicy",
    "ServiceController",
    "ServiceError",
    "StagedRelease",
    "Stager",
    "StagingError",
    "Supervisor",
    "SwitchError",
    "reconcile",
    "run_agent",
    "websocket_url",
]
