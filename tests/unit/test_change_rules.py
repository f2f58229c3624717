"""The configured rules of change control, and the risk rules, without a server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from knightwatch.control.changes import (
    SOLO,
    STANDARD,
    ApprovalPolicy,
    Risk,
    active_freeze,
    parse_freezes,
    risk_of,
)
from knightwatch.control.changes.model import ChangeState, check_change_transition
from knightwatch.control.states import IllegalTransitionError
from knightwatch.errors import InvalidInputError
from knightwatch.server.settings import ServerSettings

MARKET = {"name": "market hours", "days": ["mon", "tue", "wed", "thu", "fri"],
          "start": "09:30", "end": "16:00", "tz": "America/New_York"}  # fmt: skip


def test_the_standard_policy_is_low_1_medium_1_high_2_with_checklists() -> None:
    """The default asks one approval, two for high risk, and every checklist."""
    assert (STANDARD.needed(Risk.LOW), STANDARD.needed(Risk.MEDIUM)) == (1, 1)
    assert STANDARD.needed(Risk.HIGH) == 2 and STANDARD.checklists and not STANDARD.solo
    assert SOLO.solo and SOLO.needed(Risk.HIGH) == 0


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("solo", SOLO),
        ("standard", STANDARD),
        ('{"high": 3}', ApprovalPolicy(1, 1, 3, True)),
        ({"low": 0, "checklists": False}, ApprovalPolicy(0, 1, 2, False)),
    ],
)
def test_policies_parse_from_words_tables_and_json(given: object, expected: ApprovalPolicy) -> None:
    """``solo``, ``standard``, a server.toml table or its JSON."""
    assert ApprovalPolicy.parse(given) == expected


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ('{"hihg": 2}', "hihg"),
        ('{"high": -1}', "high"),
        ('{"high": true}', "high"),
        ("lenient", "lenient"),
    ],
)
def test_bad_policies_are_refused_by_the_settings_naming_the_key(given: str, named: str) -> None:
    """A misspelt key, a negative count, a boolean count or an unknown word: refused."""
    with pytest.raises(InvalidInputError, match="approvals") as refused:
        ServerSettings.load({"approvals": given})
    assert named in refused.value.message


def test_a_market_hours_freeze_is_in_new_york_time() -> None:
    """09:30-16:00 New York on weekdays: 14:00 UTC on a Wednesday in August is inside."""
    (window,) = parse_freezes([MARKET])
    assert active_freeze([window], datetime(2012, 8, 1, 14, 0, tzinfo=UTC)) == window
    assert active_freeze([window], datetime(2012, 8, 1, 13, 29, tzinfo=UTC)) is None
    assert active_freeze([window], datetime(2012, 8, 4, 15, 0, tzinfo=UTC)) is None  # Saturday


def test_an_overnight_freeze_covers_the_next_morning() -> None:
    """22:00-06:00 UTC on Fridays covers Saturday 03:00 but not Saturday 07:00."""
    (window,) = parse_freezes(
        '[{"name": "batch", "days": ["fri"], "start": "22:00", "end": "06:00"}]'
    )
    assert window.covers(datetime(2012, 8, 4, 3, 0, tzinfo=UTC))
    assert not window.covers(datetime(2012, 8, 4, 7, 0, tzinfo=UTC))
    assert window.covers(datetime(2012, 8, 3, 23, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    ("item", "named"),
    [
        ({**MARKET, "tz": "Mars/Olympus"}, "time zone"),
        ({**MARKET, "days": ["someday"]}, "days"),
        ({**MARKET, "start": "9h30"}, "start"),
        ({**MARKET, "name": ""}, "name"),
        ({**MARKET, "until": "16:00"}, "until"),
    ],
)
def test_bad_freezes_are_refused_naming_what_is_wrong(item: dict[str, Any], named: str) -> None:
    """Every bad freeze window is refused with the field at fault."""
    with pytest.raises(InvalidInputError, match="freeze") as refused:
        ServerSettings.load({"freeze": [item]})
    assert named in refused.value.message


def facts(**changes: Any) -> dict[str, Any]:
    """The facts of a quiet, converged one-node change, with ``changes``."""
    quiet: dict[str, Any] = {
        "nodes": ["node1"],
        "fleet_state": "CONVERGED",
        "converged": True,
        "open_alerts": [],
        "refusals": [],
    }
    return {**quiet, **changes}


@pytest.mark.parametrize(
    ("changes", "risk", "reason"),
    [
        ({}, Risk.LOW, "one node"),
        ({"nodes": ["node1", "node2"]}, Risk.MEDIUM, "2 nodes"),
        ({"diff": {"components_changed": ["router"]}}, Risk.MEDIUM, "components change"),
        ({"open_alerts": [{"severity": "warning"}]}, Risk.MEDIUM, "alert(s) open"),
        ({"open_alerts": [{"severity": "critical"}]}, Risk.HIGH, "critical alert"),
        ({"converged": False, "fleet_state": "MIXED"}, Risk.HIGH, "MIXED"),
        ({"refusals": [{"check": "no-drift"}]}, Risk.HIGH, "safety policy"),
        ({"rollback_target_missing": ["node1"]}, Risk.HIGH, "rollback target on node1"),
        ({"flags_newly_read": ["rlp"]}, Risk.HIGH, "reading a flag"),
        ({"rollback_target_of": ["node2"]}, Risk.HIGH, "rollback target of node2"),
    ],
)
def test_the_risk_rules(changes: dict[str, Any], risk: Risk, reason: str) -> None:
    """Each rule, on its own, gives its level and says why."""
    got, reasons = risk_of(facts(**changes))
    assert got is risk
    assert any(reason in r for r in reasons), reasons


def test_only_declared_moves_are_allowed() -> None:
    """An executed change cannot be approved again; a rejected one cannot execute."""
    assert check_change_transition(ChangeState.PROPOSED, ChangeState.APPROVED)
    for source, target in (
        (ChangeState.EXECUTED, ChangeState.APPROVED),
        (ChangeState.REJECTED, ChangeState.EXECUTED),
        (ChangeState.CANCELLED, ChangeState.PROPOSED),
    ):
        with pytest.raises(IllegalTransitionError):
            check_change_transition(source, target)
