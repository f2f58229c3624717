"""The journal (state.json) and its reconciliation with ``current`` after a crash."""

from __future__ import annotations

import json

from knightwatch.agent.journal import AgentState, Journal, PendingSwitch, reconcile
from knightwatch.agent.layout import NodeLayout

A, B, C = "a" * 64, "b" * 64, "c" * 64


def tree(layout: NodeLayout, *digests: str) -> None:
    """Create empty release trees."""
    for digest in digests:
        layout.release_dir(digest).mkdir()


class TestJournal:
    def test_round_trip_with_the_documented_keys(self, layout: NodeLayout) -> None:
        """state.json holds schema, node, current, previous, staged, service_port, halted."""
        journal = Journal(layout, "node1")
        journal.update(current=A, previous=B, staged=[C], service_port=18080)
        data = json.loads(layout.state_file.read_text())
        assert data["schema"] == "knightwatch.agent-state/v1"
        assert {k: data[k] for k in ("node", "current", "previous", "staged")} == {
            "node": "node1",
            "current": A,
            "previous": B,
            "staged": [C],
        }
        assert data["service_port"] == 18080 and data["halted"] is False
        again = Journal(layout, "node1")
        assert again.load() == journal.state

    def test_every_update_is_a_new_file(self, layout: NodeLayout) -> None:
        """Each update replaces state.json by rename (a new inode), never in place."""
        journal = Journal(layout, "node1")
        journal.update(current=A)
        first = layout.state_file.stat().st_ino
        journal.update(previous=B)
        assert layout.state_file.stat().st_ino != first

    def test_unreadable_journal_starts_empty(self, layout: NodeLayout) -> None:
        """A corrupt state.json is not fatal: reconcile rebuilds it from the disk."""
        layout.state_file.write_text("{not json")
        assert Journal(layout, "node1").load() == AgentState(node="node1")


class TestReconcile:
    def test_fresh_node(self, layout: NodeLayout) -> None:
        """No current, no trees: nothing is active."""
        state = reconcile(AgentState(node="n"), layout)
        assert (state.current, state.previous, state.staged) == (None, None, [])

    def test_current_is_the_truth(self, layout: NodeLayout) -> None:
        """A journal that lost the last switch learns it from current; previous follows."""
        tree(layout, A, B)
        layout.switch_current(B)
        state = reconcile(AgentState(node="n", current=A), layout)
        assert (state.current, state.previous, state.staged) == (B, A, [])

    def test_crash_after_journal_before_switch(self, layout: NodeLayout) -> None:
        """A pending switch that never reached current is dropped; nothing changes."""
        tree(layout, A, B)
        layout.switch_current(A)
        pending = PendingSwitch(op="commit", digest=B, from_digest=A, deployment_id=7)
        state = reconcile(AgentState(node="n", current=A, staged=[B], pending=pending), layout)
        assert (state.current, state.previous, state.staged, state.pending) == (A, None, [B], None)

    def test_crash_after_switch_before_journal(self, layout: NodeLayout) -> None:
        """A pending switch that reached current is completed: previous is where it came from."""
        tree(layout, A, B, C)
        layout.switch_current(B)
        pending = PendingSwitch(op="commit", digest=B, from_digest=A, deployment_id=7)
        state = AgentState(node="n", current=A, previous=C, staged=[B], pending=pending)
        state = reconcile(state, layout)
        assert (state.current, state.previous, state.staged) == (B, A, [C])

    def test_a_commit_that_reached_current_awaits_its_outcome(self, layout: NodeLayout) -> None:
        """A commit's switch completed after a crash still awaits its deployment's outcome."""
        tree(layout, A, B)
        layout.switch_current(B)
        for op, awaiting in (("commit", 7), ("rollback", None)):
            pending = PendingSwitch(op=op, digest=B, from_digest=A, deployment_id=7)
            state = reconcile(AgentState(node="n", current=A, pending=pending, awaiting=3), layout)
            assert (state.current, state.awaiting) == (B, awaiting)

    def test_unknown_trees_are_staged_and_missing_ones_dropped(self, layout: NodeLayout) -> None:
        """Trees on disk the journal does not know are staged; vanished ones are forgotten."""
        tree(layout, A, C)
        layout.switch_current(A)
        state = reconcile(
            AgentState(node="n", current=A, previous=B, staged=[B], staged_for={B: 1}), layout
        )
        assert (state.current, state.previous, state.staged, state.staged_for) == (A, None, [C], {})
