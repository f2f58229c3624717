"""The tree audit's view of the followed release: what it says when a manifest cannot be read."""

from __future__ import annotations

import asyncio

from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.source import LocalReleaseSource
from knightwatch.agent.staging import Stager
from knightwatch.agent.treeaudit import TreeAudit
from knightwatch.clock import VirtualClock
from knightwatch.protocol.audit import FindingKind
from tests.agent.conftest import Releases

MISSING = "f" * 64


def test_a_load_error_is_forgotten_once_a_manifest_loads(
    releases: Releases, layout: NodeLayout, stager: Stager
) -> None:
    """A release whose manifest is not there is an audit error; the next good load clears it.

    A stale load error would report drift on a node whose tree is now clean.
    """
    audit = TreeAudit(layout=layout, stager=stager, clock=VirtualClock())
    asyncio.run(audit.load(MISSING))
    assert audit.digest is None
    assert [f.kind for f in audit.findings()] == [FindingKind.AUDIT_ERROR]

    built = releases.build()
    stager.prepare(LocalReleaseSource(releases.store), built.digest)
    asyncio.run(audit.load(built.digest))
    assert audit.digest == built.digest
    assert audit.load_error is None
    assert audit.findings() == []
