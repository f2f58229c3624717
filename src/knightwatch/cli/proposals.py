"""What a change-making command does with its answer: the result, or a pending proposal.

Every deploy, rollback, reconcile, retirement, re-arm and flag change is a
change request. It runs at once when the approval policy needs nobody else;
otherwise the command prints the request and exits 3 ("proposed, awaiting
approval"), or with ``--wait`` follows it through approval and execution.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import typer

from knightwatch.cli.output import err, out, paint, print_json, shown
from knightwatch.errors import GateRefusedError

if TYPE_CHECKING:
    from knightwatch.client import ApiClient

__all__ = ["PENDING_EXIT", "settle"]

PENDING_EXIT = 3
"""Exit status of a command whose change was proposed and awaits approval (nothing ran)."""
_POLL_S = 1.0


def settle(
    client: ApiClient, answer: dict[str, Any], *, wait: bool, json_output: bool
) -> dict[str, Any]:
    """What a change-making command got: the result, or the proposal it must wait for.

    Without ``wait`` a pending proposal is printed and the command exits 3;
    with it, the proposal is followed until it runs (then its result is
    returned) or ends without running (exit 1).
    """
    if not answer.get("pending"):
        return answer
    change = answer["change"]
    if not wait:
        if json_output:
            print_json(answer)
        else:
            _print_proposal(change)
        raise typer.Exit(PENDING_EXIT)
    report = err.print if json_output else out.print
    _print_proposal(change, report)
    return _follow(client, change["id"], report)


def _follow(client: ApiClient, change_id: int, report: Any) -> dict[str, Any]:
    said = ""
    while True:
        change = client.get(f"/changes/{change_id}")
        if change["state"] in ("REJECTED", "CANCELLED", "FAILED", "EXECUTED"):
            raise GateRefusedError(
                f"change {change_id} ended {change['state']} without running"
                + (f" ({change['decided_by']}: {change['note']})" if change.get("note") else ""),
                hint=f"knightwatch change show {change_id}",
            )
        if change["state"] == "APPROVED":
            try:
                result: dict[str, Any] = client.post(f"/changes/{change_id}/execute", {})
                return result
            except GateRefusedError as exc:  # a checklist, a freeze, or a fleet that changed
                message = exc.message
        else:
            got = sum(1 for a in change["approvals"] if not a["void"])
            message = f"waiting: {got} of {change['approvals_needed']} approval(s)"
        if message != said:
            report(f"  change {change_id}: {shown(message)}")
            said = message
        time.sleep(_POLL_S)


def _print_proposal(change: dict[str, Any], report: Any = out.print) -> None:
    assessment = change["assessment"]
    report(
        f"[yellow]●[/] change [bold]{change['id']}[/] proposed: {shown(change['kind'])} · "
        f"risk {paint(change['risk'])} ({shown('; '.join(assessment['reasons']))}) · needs "
        f"{change['approvals_needed']} approval(s) from someone other than "
        f"{shown(change['author'])}"
    )
    unticked = [c["item"] for c in change["checklist"] if c["ticked_by"] is None]
    if unticked:
        report(f"  checklist: {shown('; '.join(unticked))}")
    report(
        f"  next: knightwatch change approve {change['id']} (another approver), then "
        f"knightwatch change execute {change['id']}",
        soft_wrap=True,
    )
