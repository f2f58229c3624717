"""The people at the firm, through the control plane's API: one proposes, others approve.

Every change the drill makes with knightwatch is a change request: the
operator proposes it, ticks its checklist, a second person (two for a
high-risk change) approves it, and the operator executes it. Nobody
approves their own change — :meth:`Desk.self_approval` shows the refusal.
"""

from __future__ import annotations

from typing import Any

from knightwatch.client import ApiClient, ServerTarget
from knightwatch.errors import GateRefusedError, KnightwatchError
from knightwatch.localfleet import LocalFleet
from knightwatch.polling import wait_until
from knightwatch.vocabulary import TERMINAL_STATES

__all__ = ["APPROVERS", "OPERATOR", "Desk", "flag_body"]

_ATTEMPTS = 5
OPERATOR = "olivia"
APPROVERS = ("alan", "amira")


def flag_body(value: object, reason: str) -> dict[str, Any]:
    """The body of a fleet-wide flag change (``value`` None: back to the default)."""
    return {"scope": "fleet", "value": value, "reason": reason}


class Desk:
    """An operator and two approvers, each with their own token."""

    def __init__(self, fleet: LocalFleet) -> None:
        self._fleet = fleet
        self.people = {OPERATOR: self._user(OPERATOR, "operator")}
        self.people.update({name: self._user(name, "approver") for name in APPROVERS})
        self.operator = self.people[OPERATOR]

    def _user(self, name: str, role: str) -> ApiClient:
        made = self._fleet.client.post("/users", {"name": name, "role": role})
        ca = str(self._fleet.ca) if self._fleet.ca else None
        return ApiClient(ServerTarget(self._fleet.url, str(made["token"]), ca), timeout=300.0)

    def propose(self, path: str, body: dict[str, Any], by: str = OPERATOR) -> dict[str, Any]:
        """``by`` asks for a change; the answer (pending, or already done)."""
        answer: dict[str, Any] = self.people[by].post(path, body)
        return answer

    def carry_out(self, answer: dict[str, Any]) -> dict[str, Any]:
        """Take a proposal through checklist, approval (by others) and execution; its result.

        When the fleet changed between approval and execution (a node's report
        moved the assessment), the approvals are void and the change is
        re-assessed: the approvers look again and approve what they now see.
        """
        if not answer.get("pending"):
            return answer
        change: dict[str, Any] = answer["change"]
        author = self.people[change["author"]]
        execute = f"/changes/{change['id']}/execute"
        for _ in range(_ATTEMPTS - 1):
            self._approve(change)
            try:
                result: dict[str, Any] = author.post(execute, {})
                return result
            except GateRefusedError as exc:
                if "approv" not in exc.message:
                    raise
                change = author.get(f"/changes/{change['id']}")
        self._approve(change)
        last: dict[str, Any] = author.post(execute, {})
        return last

    def _approve(self, change: dict[str, Any]) -> None:
        author = self.people[change["author"]]
        for item in change["checklist"]:
            if item["ticked_by"] is None:
                author.post(f"/changes/{change['id']}/tick", {"item": item["item"]})
        for name in APPROVERS:
            if name == change["author"]:
                continue
            if (
                self.people[name].post(f"/changes/{change['id']}/approve", {})["state"]
                != "PROPOSED"
            ):
                break

    def change(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Propose, approve and execute in one go."""
        return self.carry_out(self.propose(path, body))

    def flag(self, name: str, value: object, reason: str) -> dict[str, Any]:
        """Set flag ``name`` fleet-wide through change control; the change once acknowledged."""
        return self.acknowledged(self.propose(f"/flags/{name}/values", flag_body(value, reason)))

    def acknowledged(self, proposal: dict[str, Any]) -> dict[str, Any]:
        """Carry out a flag proposal and wait until every node confirmed the value."""
        done = self.carry_out(proposal)
        change: dict[str, Any] = self.operator.get(f"/flags/changes/{done['id']}?wait_s=30")
        return change

    def self_approval(self, answer: dict[str, Any]) -> str:
        """The author (an approver) tries to approve their own proposal: the refusal."""
        change_id = int(answer["change"]["id"])
        try:
            self.people[answer["change"]["author"]].post(f"/changes/{change_id}/approve", {})
        except KnightwatchError as exc:
            return exc.message
        raise KnightwatchError(f"change {change_id} was approved by its own author")

    def deploy(self, release: str, reason: str) -> dict[str, Any]:
        """Deploy ``release`` to the fleet through change control; the ended deployment."""
        started = self.change("/deployments", {"release": release, "reason": reason})
        return self.wait_deployment(int(started["id"]))

    def wait_deployment(self, deployment_id: int) -> dict[str, Any]:
        """Wait until a deployment ended; return it."""

        def ended() -> dict[str, Any] | None:
            data: dict[str, Any] = self.operator.get(f"/deployments/{deployment_id}")
            return data if data["state"] in TERMINAL_STATES else None

        return wait_until(
            ended, timeout=300, what=f"deployment {deployment_id} to end", interval=0.1
        )

    def audit(self) -> dict[str, Any]:
        """A fleet-wide audit, awaited: every node's verdict."""
        started = self.operator.post("/audits", {})

        def complete() -> dict[str, Any] | None:
            report: dict[str, Any] = self.operator.get(f"/audits/{started['audit_id']}")
            return report if report["complete"] else None

        return wait_until(complete, timeout=120, what="the audit to complete", interval=0.1)

    def close(self) -> None:
        """Close every user's connection."""
        for client in self.people.values():
            client.close()
