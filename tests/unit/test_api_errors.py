"""Domain errors map to HTTP statuses in one place."""

from __future__ import annotations

import pytest

from knightwatch.api.errors import error_body, status_for
from knightwatch.control.alerts import AlertNotFoundError
from knightwatch.errors import (
    BlobNotFoundError,
    GateRefusedError,
    InvalidInputError,
    KnightwatchError,
    NotFoundError,
    PolicyRefusedError,
    Refusal,
    ReleaseNotFoundError,
)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (AlertNotFoundError(7), 404),
        (NotFoundError("no halt 7"), 404),
        (ReleaseNotFoundError("r"), 404),
        (BlobNotFoundError("0" * 64), 404),
        (InvalidInputError("bad"), 400),
        (GateRefusedError("drift"), 409),
        (PolicyRefusedError("deploy", [Refusal("no-drift", "drift on node1")]), 409),
        (KnightwatchError("boom"), 500),
    ],
)
def test_status_for(error: KnightwatchError, status: int) -> None:
    """Whatever is named but absent is 404; bad input 400; a gate 409; the rest 500."""
    assert status_for(error) == status


def test_a_policy_refusal_lists_every_refusal_in_the_usual_envelope() -> None:
    """A refusal of the safety policy keeps the error envelope and adds every refusal."""
    refusals = [
        Refusal("no-drift", "the fleet has drift on node1 (x)", ("node1",), "reconcile it"),
        Refusal("no-unacknowledged-critical", "alert #4", ("alert #4", "node2"), None),
    ]
    body = error_body(PolicyRefusedError("deploy", refusals))
    assert body["kind"] == "PolicyRefusedError" and body["exit_code"] == 2
    assert body["error"] == (
        "deploy refused for 2 reasons: the fleet has drift on node1 (x); alert #4"
    )
    assert body["action"] == "deploy"
    assert body["refusals"] == [
        {
            "check": "no-drift",
            "reason": "the fleet has drift on node1 (x)",
            "subjects": ["node1"],
            "hint": "reconcile it",
        },
        {
            "check": "no-unacknowledged-critical",
            "reason": "alert #4",
            "subjects": ["alert #4", "node2"],
            "hint": None,
        },
    ]
    assert [Refusal.from_json(r) for r in body["refusals"]] == refusals
