"""The deployment commands against a real node: staging, switching, checks, rollback, GC."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import pytest

from knightwatch.agent.commands import CommandRunner
from knightwatch.agent.journal import Journal, reconcile
from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.reporting import node_state
from knightwatch.agent.service import ServiceController
from knightwatch.agent.servicelog import ServiceLog
from knightwatch.agent.source import LocalReleaseSource
from knightwatch.agent.staging import Stager
from knightwatch.agent.supervisor import RestartPolicy, Supervisor
from knightwatch.bundle import BuildResult, TrustedKey
from knightwatch.protocol.messages import (
    Abort,
    Ack,
    AckPhase,
    Commit,
    NodeState,
    Prepare,
    Rollback,
    ServiceState,
)
from knightwatch.testing import free_port
from tests.agent.conftest import Releases, run


class Node:
    """One node's command runner over a local release store, with a real supervisor."""

    def __init__(self, layout: NodeLayout, releases: Releases, trusted: TrustedKey) -> None:
        self.layout = layout
        self.journal = Journal(layout, "node1")
        self.journal.update(service_port=free_port())
        self.supervisor = Supervisor(
            ServiceLog(layout.service_log),
            policy=RestartPolicy(health_timeout_s=30, settle_s=0.5),
        )
        stager = Stager(layout, [trusted], workers=2)
        service = ServiceController(
            node="node1",
            layout=layout,
            journal=self.journal,
            stager=stager,
            supervisor=self.supervisor,
        )
        self.runner = CommandRunner(
            layout=layout,
            journal=self.journal,
            stager=stager,
            service=service,
            source=LocalReleaseSource(releases.store),
        )
        self._deployment = 1

    def state(self) -> NodeState:
        """What the node would report now."""
        return node_state(self.journal.state, self.supervisor.status())

    async def prepare(self, built: BuildResult, deployment: int | None = None) -> Ack:
        """Send Prepare for a built release."""
        self._deployment = deployment or self._deployment + 1
        ids = {"deployment_id": self._deployment, "digest": built.digest}
        return await self.runner.run(Prepare(**ids, release_id=built.release_id))

    async def commit(self, built: BuildResult) -> Ack:
        """Send Commit for a built release (same deployment as the last prepare)."""
        ids = {"deployment_id": self._deployment, "digest": built.digest}
        ack = await self.runner.run(Commit(**ids, release_id=built.release_id))
        await self.runner.collect_garbage()  # as the agent's command worker does, after the ack
        return ack

    async def deploy(self, built: BuildResult) -> Ack:
        """Prepare then commit."""
        ack = await self.prepare(built)
        assert ack.phase is AckPhase.PREPARED, ack
        return await self.commit(built)

    async def rollback(self, built: BuildResult) -> Ack:
        """Send Rollback to a built release."""
        ids = {"deployment_id": self._deployment, "digest": built.digest}
        return await self.runner.run(Rollback(**ids, release_id=built.release_id))


@pytest.fixture
def node(layout: NodeLayout, releases: Releases, trusted_key: TrustedKey) -> Node:
    """A node with no release yet."""
    return Node(layout, releases, trusted_key)


def scenario(node: Node, body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` and stop the service afterwards, whatever happened."""

    async def main() -> None:
        try:
            await body()
        finally:
            await node.supervisor.stop()

    run(main())


class TestDeploy:
    def test_prepare_commit_is_active_healthy_and_versioned(
        self, node: Node, releases: Releases
    ) -> None:
        """Prepare stages, commit switches current and leaves the service healthy."""
        v1 = releases.smars("2012.8.1")

        async def body() -> None:
            ack = await node.prepare(v1)
            assert (ack.phase, ack.reason) == (AckPhase.PREPARED, None)
            assert node.journal.state.staged == [v1.digest]
            ack = await node.commit(v1)
            assert (ack.phase, ack.reason) == (AckPhase.ACTIVE, None)
            state = node.state()
            assert (state.active_digest, state.previous_digest, state.staged) == (
                v1.digest,
                None,
                [],
            )
            assert state.service.state is ServiceState.RUNNING
            assert state.service.version == v1.release_id
            assert os.readlink(node.layout.current) == f"releases/{v1.digest}"
            assert node.journal.state.service is not None
            assert node.journal.state.service.pid == state.service.pid

        scenario(node, body)

    def test_repeated_commands_do_not_restart(self, node: Node, releases: Releases) -> None:
        """Prepare and commit sent again (server restart) answer the same, same process."""
        v1 = releases.smars("2012.8.1")

        async def body() -> None:
            assert (await node.deploy(v1)).phase is AckPhase.ACTIVE
            pid = node.state().service.pid
            assert (await node.prepare(v1, deployment=1)).phase is AckPhase.PREPARED
            assert (await node.commit(v1)).phase is AckPhase.ACTIVE
            assert node.state().service.pid == pid
            assert node.journal.state.staged == []

        scenario(node, body)

    def test_upgrade_then_rollback(self, node: Node, releases: Releases) -> None:
        """A second release becomes current with the first as previous; rollback swaps back."""
        v1, v2 = releases.smars("2012.8.1"), releases.smars("2012.8.2")

        async def body() -> None:
            assert (await node.deploy(v1)).phase is AckPhase.ACTIVE
            first_pid = node.state().service.pid
            assert (await node.deploy(v2)).phase is AckPhase.ACTIVE
            state = node.state()
            assert (state.active_digest, state.previous_digest) == (v2.digest, v1.digest)
            assert state.service.version == v2.release_id and state.service.pid != first_pid
            ack = await node.rollback(v1)
            assert (ack.phase, ack.reason) == (AckPhase.ROLLED_BACK, None)
            state = node.state()
            assert (state.active_digest, state.previous_digest) == (v1.digest, v2.digest)
            assert state.service.version == v1.release_id
            pid = state.service.pid
            assert (await node.rollback(v1)).phase is AckPhase.ROLLED_BACK
            assert node.state().service.pid == pid

        scenario(node, body)

    def test_release_without_service(self, node: Node, releases: Releases) -> None:
        """A release with no [service] becomes active; the service state is none."""
        spec = (
            '[release]\nname = "{name}"\nversion = "{version}"\n\n'
            '[[component]]\nname = "c"\nversion = "1"\npaths = ["**"]\n'
        )
        built = releases.build(spec=spec, files={"data.txt": b"x\n"})

        async def body() -> None:
            assert (await node.deploy(built)).phase is AckPhase.ACTIVE
            assert node.state().service.state is ServiceState.NONE

        scenario(node, body)


class TestFailures:
    def test_prepare_failure_is_acked_with_the_reason(
        self, layout: NodeLayout, releases: Releases, untrusted_key: TrustedKey
    ) -> None:
        """A release the node cannot trust is PREPARE_FAILED with the signature reason."""
        node = Node(layout, releases, untrusted_key)
        built = releases.smars()
        ack = run(node.prepare(built))
        assert ack.phase is AckPhase.PREPARE_FAILED
        assert ack.reason is not None and ack.reason.startswith("signature: no valid signature")
        assert node.journal.state.staged == []

    def test_commit_of_an_unstaged_release(self, node: Node, releases: Releases) -> None:
        """Commit of a release never prepared fails and changes nothing."""
        built = releases.smars()
        ack = run(node.commit(built))
        assert ack.phase is AckPhase.COMMIT_FAILED
        assert ack.reason is not None and "not staged" in ack.reason
        assert node.layout.active_digest() is None

    def test_failing_smoke_check_is_commit_failed_then_rollback(
        self, node: Node, releases: Releases
    ) -> None:
        """A release failing its smoke check is COMMIT_FAILED; rollback restores the old one."""
        good = releases.smars("2012.8.1")
        bad = releases.smars(
            "2012.8.2",
            edit=(
                'smoke = [{ name = "orders", ',
                'smoke = [{ name = "orders", expect_body = "RLP", ',
            ),
        )

        async def body() -> None:
            assert (await node.deploy(good)).phase is AckPhase.ACTIVE
            ack = await node.deploy(bad)
            assert ack.phase is AckPhase.COMMIT_FAILED
            assert ack.reason is not None
            assert ack.reason.startswith("smoke check 'orders' failed: GET http://127.0.0.1:")
            assert node.layout.active_digest() == bad.digest
            ack = await node.rollback(good)
            assert (ack.phase, ack.reason) == (AckPhase.ROLLED_BACK, None)
            assert node.state().service.version == good.release_id

        scenario(node, body)

    def test_service_that_never_turns_healthy(self, node: Node, releases: Releases) -> None:
        """A service crashing at start is COMMIT_FAILED with its exit and last output."""
        bad = releases.smars(
            edit=(
                'command = ["python3", "bin/smars-router"]',
                'command = ["python3", "-c", "raise SystemExit(\'no config\')"]',
            )
        )

        async def body() -> None:
            ack = await node.deploy(bad)
            assert ack.phase is AckPhase.COMMIT_FAILED
            assert ack.reason is not None
            assert "exited (exit status 1) before it was healthy" in ack.reason
            assert "no config" in ack.reason

        scenario(node, body)


class TestAbortAndGarbage:
    def test_abort_removes_only_what_is_not_in_use(self, node: Node, releases: Releases) -> None:
        """Abort deletes a staged tree, but never the current release."""
        v1, v2 = releases.smars("2012.8.1"), releases.smars("2012.8.2")

        async def body() -> None:
            assert (await node.deploy(v1)).phase is AckPhase.ACTIVE
            assert (await node.prepare(v2)).phase is AckPhase.PREPARED
            for built in (v2, v1):
                ack = await node.runner.run(Abort(deployment_id=9, digest=built.digest))
                assert (ack.phase, ack.reason) == (AckPhase.ABORTED, None)
            assert node.layout.release_digests() == [v1.digest]
            assert node.journal.state.staged == []

        scenario(node, body)

    def test_a_late_abort_spares_the_release_staged_again_since(
        self, node: Node, releases: Releases
    ) -> None:
        """An abort of an old deployment leaves the same release staged by a newer one."""
        v1 = releases.smars("2012.8.1")

        async def body() -> None:
            assert (await node.prepare(v1, deployment=7)).phase is AckPhase.PREPARED
            ack = await node.runner.run(Abort(deployment_id=5, digest=v1.digest))
            assert ack.phase is AckPhase.ABORTED
            assert node.layout.release_digests() == [v1.digest]
            ack = await node.runner.run(Abort(deployment_id=7, digest=v1.digest))
            assert node.layout.release_digests() == []

        scenario(node, body)

    def test_commit_keeps_two_releases_and_later_deployments(
        self, node: Node, releases: Releases
    ) -> None:
        """After a commit only current, previous and later deployments' staged trees remain."""
        v1, v2, v3, other = (releases.smars(f"2012.8.{n}") for n in (1, 2, 3, 9))

        async def body() -> None:
            for built in (v1, v2):
                assert (await node.deploy(built)).phase is AckPhase.ACTIVE
            assert (await node.prepare(other, deployment=50)).phase is AckPhase.PREPARED
            assert (await node.deploy(v3)).phase is AckPhase.ACTIVE  # deployment 51
            assert set(node.layout.release_digests()) == {v2.digest, v3.digest}
            assert (await node.prepare(other, deployment=99)).phase is AckPhase.PREPARED
            node._deployment = 52
            assert (await node.deploy(v1)).phase is AckPhase.ACTIVE  # deployment 53
            assert set(node.layout.release_digests()) == {v3.digest, v1.digest, other.digest}
            assert node.journal.state.staged == [other.digest]
            used = set()
            for digest in node.layout.release_digests():
                manifest = node.runner.stager.load_manifest(digest)
                used |= {f.digest for f in manifest.files if f.digest}
            cached = {p.parent.name + p.name for p in node.layout.blobs.blobs_dir.glob("*/*")}
            assert cached == used

        scenario(node, body)


def restarted(node: Node, layout: NodeLayout, releases: Releases, trusted: TrustedKey) -> Node:
    """The same node after its agent was SIGKILLed: journal reloaded, a fresh supervisor."""
    journal = node.journal.state
    again = Node(layout, releases, trusted)  # (its constructor writes a journal of its own)
    again.journal.save(reconcile(journal, layout))
    again._deployment = node._deployment
    return again


def started(layout: NodeLayout, built: BuildResult) -> int:
    """How often the service log shows ``built``'s service being started."""
    return layout.service_log.read_text().count(f"starting {built.release_id}")


def scenario_of(nodes: list[Node], body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body``, then stop the service of every node in ``nodes`` (filled as it goes)."""

    async def main() -> None:
        try:
            await body()
        finally:
            for each in nodes:
                await each.supervisor.stop()

    run(main())


class TestRestartMidDeployment:
    def test_restart_before_the_outcome_starts_nothing_until_told(
        self, node: Node, layout: NodeLayout, releases: Releases, trusted_key: TrustedKey
    ) -> None:
        """Restarted after switching, an agent runs no service (nor on a re-arm) until told."""
        v1, v2 = releases.smars("2012.8.1"), releases.smars("2012.8.2")
        nodes = [node]

        async def body() -> None:
            assert (await node.deploy(v1)).phase is AckPhase.ACTIVE
            assert (await node.commit(v1)).phase is AckPhase.ACTIVE  # the outcome: keep v1
            assert node.journal.state.awaiting is None
            assert (await node.deploy(v2)).phase is AckPhase.ACTIVE
            assert node.journal.state.awaiting == node._deployment
            await node.supervisor.stop()  # its service dies with the node
            runs_of_v2 = started(layout, v2)
            again = restarted(node, layout, releases, trusted_key)
            nodes.append(again)
            await again.runner.resume()
            assert again.runner.held == node._deployment
            assert again.state().service.state is not ServiceState.RUNNING
            why = await again.runner.start_current()  # what a re-arm calls: held as well
            assert why is not None and why.startswith("held:")
            assert again.state().service.state is not ServiceState.RUNNING
            ack = await again.rollback(v1)  # the deployment was abandoned
            assert (ack.phase, ack.reason) == (AckPhase.ROLLED_BACK, None)
            assert again.runner.held is None and again.journal.state.awaiting is None
            assert again.state().service.version == v1.release_id
            assert started(layout, v2) == runs_of_v2  # v2 never ran again

        scenario_of(nodes, body)

    def test_restart_after_the_outcome_starts_at_once(
        self, node: Node, layout: NodeLayout, releases: Releases, trusted_key: TrustedKey
    ) -> None:
        """Once told to run its release (a Commit of it), a restarted agent starts it at once."""
        v1 = releases.smars("2012.8.1")
        nodes = [node]

        async def body() -> None:
            assert (await node.deploy(v1)).phase is AckPhase.ACTIVE
            await node.supervisor.stop()
            again = restarted(node, layout, releases, trusted_key)
            nodes.append(again)
            await again.runner.resume()
            assert again.runner.held == node._deployment  # not told yet
            assert (await again.commit(v1)).phase is AckPhase.ACTIVE
            assert again.state().service.state is ServiceState.RUNNING
            await again.supervisor.stop()
            third = restarted(again, layout, releases, trusted_key)
            nodes.append(third)
            await third.runner.resume()
            assert third.runner.held is None
            assert third.state().service.version == v1.release_id

        scenario_of(nodes, body)
