"""A swarm of hollow agents: enrolled like real nodes, run as tasks of one event loop.

:func:`enroll_hollow` enrolls each node the way an operator and an agent do —
the operator API grants a one-time join token (``POST /api/v1/nodes/NAME/enroll``),
the node posts it with a fresh Ed25519 public key to the agent API and
receives its credential — a bounded number at a time. :class:`Swarm` then
runs one :class:`~knightwatch.swarm.hollow.HollowAgent` per credential, each
with its own WebSocket and session, starting them over a ramp so that the
first connects are spread the way a fleet's boots are.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from knightwatch.agent.enroll import Credential, EnrollResponse
from knightwatch.client import ServerTarget
from knightwatch.clock import Clock, SystemClock
from knightwatch.errors import KnightwatchError
from knightwatch.protocol.reports import NodeKey
from knightwatch.swarm.hollow import HollowAgent, SwarmCounters
from knightwatch.tlsca import client_context

__all__ = ["HollowNode", "Swarm", "SwarmError", "enroll_hollow", "hollow_names"]

ENROLL_CONCURRENCY = 16


class SwarmError(KnightwatchError):
    """The swarm could not be enrolled or started (the server said why)."""


@dataclass(frozen=True)
class HollowNode:
    """An enrolled hollow node: its credential and its signing key."""

    credential: Credential
    key: NodeKey


def hollow_names(prefix: str, count: int) -> list[str]:
    """``prefix-00001`` … : node names that sort in creation order."""
    width = max(5, len(str(count)))
    return [f"{prefix}-{i:0{width}d}" for i in range(1, count + 1)]


def tls_for(target: ServerTarget) -> ssl.SSLContext | None:
    """The TLS context the swarm's connections pin (None for plain http://)."""
    if not target.url.startswith("https://"):
        return None
    context = client_context(target.ca)
    return context if isinstance(context, ssl.SSLContext) else ssl.create_default_context()


async def enroll_hollow(
    target: ServerTarget,
    names: Sequence[str],
    *,
    group: str,
    on_enrolled: Callable[[int], None] | None = None,
) -> list[HollowNode]:
    """Enroll ``names`` into ``group`` as real nodes; SwarmError naming the first refusal."""
    try:
        return await _enroll(target, names, group=group, on_enrolled=on_enrolled)
    except httpx.HTTPError as exc:
        raise SwarmError(
            f"cannot reach the control plane at {target.url}: {exc or type(exc).__name__}",
            hint="check KNIGHTWATCH_SERVER (or --server) and that the server runs",
        ) from None


async def _enroll(
    target: ServerTarget,
    names: Sequence[str],
    *,
    group: str,
    on_enrolled: Callable[[int], None] | None,
) -> list[HollowNode]:
    verify: ssl.SSLContext | bool = tls_for(target) or False
    operator_headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
    limit = asyncio.Semaphore(ENROLL_CONCURRENCY)
    done = 0
    async with (
        httpx.AsyncClient(base_url=target.url, verify=verify, timeout=60.0) as agent_side,
        httpx.AsyncClient(
            base_url=target.url, verify=verify, timeout=60.0, headers=operator_headers
        ) as operator,
    ):
        await _refuse_existing(operator, names)

        async def one(name: str) -> HollowNode:
            nonlocal done
            key = NodeKey(Ed25519PrivateKey.generate())
            async with limit:
                grant = await operator.post(f"/api/v1/nodes/{name}/enroll", json={"group": group})
                _refused(grant, f"the join token for {name}")
                body = {"name": name, "token": grant.json()["token"], "public_key": key.public_text}
                joined = await agent_side.post("/api/agent/v1/enroll", json=body)
                _refused(joined, f"the enrollment of {name}")
            answer = EnrollResponse.model_validate_json(joined.content)
            done += 1
            if on_enrolled is not None:
                on_enrolled(done)
            return HollowNode(Credential(node=name, credential=answer.credential), key)

        return list(await asyncio.gather(*(one(name) for name in names)))


async def _refuse_existing(operator: httpx.AsyncClient, names: Sequence[str]) -> None:
    """Never re-enroll a node that exists: a new join token would take it over."""
    status = await operator.get("/api/v1/status")
    _refused(status, "reading the fleet's nodes")
    taken = sorted({node["name"] for node in status.json()["nodes"]} & set(names))
    if taken:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise SwarmError(
            f"node {taken[0]}{more} is already enrolled: a hollow agent would take it over",
            hint="choose another --prefix",
        )


def _refused(response: httpx.Response, what: str) -> None:
    if not response.is_success:
        detail = response.text[:300]
        raise SwarmError(
            f"{what} was refused: HTTP {response.status_code}: {detail}",
            hint="give an operator token (KNIGHTWATCH_TOKEN) and node names not enrolled yet "
            "(--prefix)",
        )


class Swarm:
    """Hollow agents for enrolled nodes, run in this process's event loop."""

    def __init__(
        self,
        target: ServerTarget,
        nodes: Sequence[HollowNode],
        *,
        clock: Clock | None = None,
        ramp_s: float | None = None,
    ) -> None:
        self.counters = SwarmCounters()
        self.nodes = list(nodes)
        self._ramp_s = len(self.nodes) / 1000 if ramp_s is None else ramp_s
        tls = tls_for(target)
        clock = clock or SystemClock()
        self.agents = [
            HollowAgent(
                node.credential,
                node.key,
                server=target.url,
                clock=clock,
                counters=self.counters,
                tls=tls,
            )
            for node in self.nodes
        ]

    async def run(self) -> None:
        """Run every hollow agent until cancelled; each connects first somewhere in the ramp."""
        async with asyncio.TaskGroup() as group:
            for agent in self.agents:
                group.create_task(self._start(agent))

    async def _start(self, agent: HollowAgent) -> None:
        await asyncio.sleep(random.uniform(0, self._ramp_s))  # noqa: S311 - spread, not a secret
        await agent.run()
