"""The two-phase protocol's decisions, as pure functions: no database, no clock, no agents."""

from __future__ import annotations

import pytest

from knightwatch.control.decisions import (
    Decision,
    Move,
    NodeFacts,
    advance,
    after_soak,
    disconnected,
    expire,
)
from knightwatch.control.states import IllegalTransitionError
from knightwatch.vocabulary import DeploymentState, NodePhase

S, P = DeploymentState, NodePhase


def nodes(*phases: NodePhase, canary: bool = False) -> list[NodeFacts]:
    """Targets n1, n2, … in ``phases``; with ``canary`` the first is the canary."""
    return [
        NodeFacts(f"n{i}", phase, "canary" if canary and i == 1 else "fleet")
        for i, phase in enumerate(phases, start=1)
    ]


class TestAdvance:
    def test_waits_until_every_target_prepared(self) -> None:
        """One node still preparing: nothing moves (no node switches before all verified)."""
        assert advance(S.PREPARING, nodes(P.PREPARED, P.PREPARING)).move == Move.STAY

    def test_switches_when_every_target_prepared(self) -> None:
        """All PREPARED: the switch, to COMMITTING."""
        decision = advance(S.PREPARING, nodes(P.PREPARED, P.PREPARED, P.PREPARED))
        assert decision == Decision(Move.SWITCH, S.COMMITTING)

    def test_a_canary_switches_alone(self) -> None:
        """Canary strategy on two or more nodes: the switch goes to CANARY."""
        decision = advance(S.PREPARING, nodes(P.PREPARED, P.PREPARED), canary=True)
        assert decision.target == S.CANARY

    def test_a_canary_of_one_node_is_a_plain_commit(self) -> None:
        """A canary of a one-node fleet has nobody to wait: COMMITTING directly."""
        assert advance(S.PREPARING, nodes(P.PREPARED), canary=True).target == S.COMMITTING

    def test_one_failed_prepare_fails_everything(self) -> None:
        """Any PREPARE_FAILED: FAILED, with the node and its reason."""
        targets = [NodeFacts("n1", P.PREPARED), NodeFacts("n2", P.PREPARE_FAILED, reason="disk")]
        decision = advance(S.PREPARING, targets)
        assert decision.move == Move.FAIL
        assert decision.target == S.FAILED
        assert decision.reason == "n2: disk"

    def test_a_failed_commit_rolls_back(self) -> None:
        """COMMIT_FAILED after the switch: the whole fleet rolls back (no split fleet)."""
        decision = advance(S.COMMITTING, nodes(P.ACTIVE, P.COMMIT_FAILED))
        assert (decision.move, decision.target) == (Move.ROLL_BACK, S.ROLLING_BACK)

    def test_success_needs_every_node_active(self) -> None:
        """SUCCEEDED only once every node is ACTIVE."""
        assert advance(S.COMMITTING, nodes(P.ACTIVE, P.COMMITTING)).move == Move.STAY
        assert advance(S.COMMITTING, nodes(P.ACTIVE, P.ACTIVE)).move == Move.SUCCEED

    def test_an_active_canary_starts_its_soak(self) -> None:
        """The canary ACTIVE, the rest WAITING: SOAKING."""
        decision = advance(S.CANARY, nodes(P.ACTIVE, P.WAITING, canary=True))
        assert decision == Decision(Move.SOAK, S.SOAKING)

    def test_rollback_ends_when_every_switched_node_answered(self) -> None:
        """Nodes that never switched do not hold up the end of a rollback."""
        pending = nodes(P.ROLLING_BACK, P.ROLLED_BACK, P.PREPARED)
        assert advance(S.ROLLING_BACK, pending).move == Move.STAY
        done = nodes(P.ROLLED_BACK, P.ROLLED_BACK, P.PREPARED)
        assert advance(S.ROLLING_BACK, done) == Decision(Move.END_ROLLBACK, S.ROLLED_BACK)

    def test_a_failed_rollback_is_named(self) -> None:
        """A node that could not roll back: ROLLBACK_FAILED naming it."""
        targets = [NodeFacts("n1", P.ROLLED_BACK), NodeFacts("n2", P.ROLLBACK_FAILED, reason="io")]
        decision = advance(S.ROLLING_BACK, targets)
        assert decision.target == S.ROLLBACK_FAILED
        assert decision.reason == "rollback failed on n2: io"

    @pytest.mark.parametrize("state", [S.SUCCEEDED, S.FAILED, S.ROLLED_BACK, S.ROLLBACK_FAILED])
    def test_an_ended_deployment_never_moves(self, state: DeploymentState) -> None:
        """A terminal deployment stays where it is, whatever its nodes say."""
        assert advance(state, nodes(P.ACTIVE, P.COMMIT_FAILED)).move == Move.STAY


class TestExpire:
    def test_a_prepare_timeout_fails_and_names_who_was_late(self) -> None:
        """PREPARING past its deadline: the late nodes fail, the deployment FAILS."""
        decision = expire(S.PREPARING, nodes(P.PREPARED, P.PREPARING))
        assert decision.move == Move.FAIL
        assert decision.node_phases == (("n2", P.PREPARE_FAILED, "timed out"),)
        assert decision.reason == "PREPARING timed out waiting for: n2"

    def test_a_commit_timeout_rolls_back(self) -> None:
        """COMMITTING past its deadline: the late node fails and the fleet rolls back."""
        decision = expire(S.COMMITTING, nodes(P.ACTIVE, P.COMMITTING))
        assert decision.move == Move.ROLL_BACK
        assert decision.node_phases == (("n2", P.COMMIT_FAILED, "timed out"),)

    def test_a_rollback_timeout_ends_it_as_failed(self) -> None:
        """ROLLING_BACK past its deadline: the silent node is ROLLBACK_FAILED, and so is it."""
        decision = expire(S.ROLLING_BACK, nodes(P.ROLLED_BACK, P.ROLLING_BACK))
        assert decision.target == S.ROLLBACK_FAILED
        assert decision.node_phases == (("n2", P.ROLLBACK_FAILED, "timed out"),)


class TestSoak:
    def test_a_healthy_canary_takes_the_fleet_along(self) -> None:
        """After the soak: COMMITTING for the waiting nodes."""
        targets = [
            NodeFacts("n1", P.ACTIVE, "canary", running_release=True),
            NodeFacts("n2", P.WAITING),
        ]
        assert expire(S.SOAKING, targets) == Decision(Move.COMMIT_FLEET, S.COMMITTING)

    def test_an_unhealthy_canary_is_rolled_back(self) -> None:
        """The canary's service is not running its release: roll back."""
        targets = [NodeFacts("n1", P.ACTIVE, "canary"), NodeFacts("n2", P.WAITING)]
        decision = after_soak(S.SOAKING, targets)
        assert decision.move == Move.ROLL_BACK
        assert decision.reason == "canary n1 unhealthy after its soak"

    def test_the_fleet_never_follows_without_a_waiting_node(self) -> None:
        """A waiting node gone at the end of the soak: roll back, naming it (P1)."""
        targets = [
            NodeFacts("n1", P.ACTIVE, "canary", running_release=True),
            NodeFacts("n2", P.WAITING, connected=False),
        ]
        assert after_soak(S.SOAKING, targets).reason == "not connected after the soak: n2"


class TestDisconnected:
    def test_lost_while_preparing_fails_at_once(self) -> None:
        """A node lost during PREPARE fails the deployment now, not at the deadline."""
        targets = nodes(P.PREPARED, P.PREPARING)
        decision = disconnected(S.PREPARING, targets[1], targets)
        assert decision.move == Move.FAIL
        assert decision.node_phases == (
            ("n2", P.PREPARE_FAILED, "agent disconnected during PREPARE"),
        )

    def test_lost_after_prepared_before_commit_fails(self) -> None:
        """PREPARED, then lost before COMMIT: FAILED; its phase is kept, the loss noted."""
        targets = nodes(P.PREPARED, P.PREPARING)
        decision = disconnected(S.PREPARING, targets[0], targets)
        assert decision.move == Move.FAIL
        assert decision.lost == (("n1", "agent disconnected after PREPARED, before COMMIT"),)

    def test_lost_after_the_switch_rolls_back(self) -> None:
        """An ACTIVE node lost while committing: the whole fleet rolls back."""
        targets = nodes(P.ACTIVE, P.COMMITTING)
        decision = disconnected(S.COMMITTING, targets[0], targets)
        assert decision.move == Move.ROLL_BACK
        assert decision.reason == "n1: agent disconnected during COMMITTING"

    def test_lost_while_committing_rolls_back(self) -> None:
        """Lost during its own COMMIT: COMMIT_FAILED, and the fleet rolls back."""
        targets = nodes(P.ACTIVE, P.COMMITTING)
        decision = disconnected(S.COMMITTING, targets[1], targets)
        assert decision.move == Move.ROLL_BACK
        assert decision.node_phases[0][:2] == ("n2", P.COMMIT_FAILED)

    def test_a_node_already_settled_changes_nothing(self) -> None:
        """Lost after its rollback was answered: nothing to decide."""
        targets = nodes(P.ROLLED_BACK, P.ROLLING_BACK)
        assert disconnected(S.ROLLING_BACK, targets[0], targets).move == Move.STAY


def test_every_move_is_a_declared_transition() -> None:
    """A decision never leads where the state machine has no transition (checked, not hoped)."""
    with pytest.raises(IllegalTransitionError):
        expire(S.SUCCEEDED, nodes(P.ACTIVE))  # a terminal deployment has no deadline to expire
