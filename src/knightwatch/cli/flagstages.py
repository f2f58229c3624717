"""A staged flag change: a few nodes first, each step confirmed by acknowledgements.

``flags set NAME VALUE --stage 10% --stage group:east`` sets the value on
each stage's nodes (``node:NAME`` scopes, or a ``group:NAME`` scope), waits
until every one acknowledged, then goes on; the last step sets the whole
``--scope`` and removes the stages' own values (the scope now holds the same
value). A step that is refused or not acknowledged stops the change there,
recorded and visible in ``flags show``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from knightwatch.errors import InvalidInputError, KnightwatchError

__all__ = ["FlagAcksMissingError", "plan_stages", "run_stages"]


class FlagAcksMissingError(KnightwatchError):
    """Some nodes in scope did not confirm they hold the new flag value."""


def _in_scope(node: dict[str, Any], scope: str) -> bool:
    if node.get("status") not in ("enrolled", "drained"):
        return False
    if scope == "fleet":
        return True
    kind, _, name = scope.partition(":")
    return (kind == "group" and node.get("group") == name) or (
        kind == "node" and node.get("name") == name
    )


def plan_stages(stages: list[str], scope: str, nodes: list[dict[str, Any]]) -> list[list[str]]:
    """The scopes each stage sets, in order (the final ``scope`` is not included).

    A stage is ``N%`` (that share of the scope's nodes, by name, rounded up,
    counting the earlier stages), ``group:NAME``, or node names separated by
    ``+`` or ``,``. A stage that adds no node is refused: it would confirm nothing.
    """
    members = sorted(n["name"] for n in nodes if _in_scope(n, scope))
    groups = {n["name"]: n.get("group") for n in nodes}
    done: set[str] = set()
    plan: list[list[str]] = []
    for stage in stages:
        step = _stage_nodes(stage, members, groups, done)
        if not step:
            raise InvalidInputError(
                f"stage {stage!r} adds no node of scope {scope} beyond the earlier stages",
                hint="e.g. --stage 10% --stage 50%, --stage group:east, --stage node1+node2",
            )
        if stage.startswith("group:"):
            plan.append([stage])
        else:
            plan.append([f"node:{name}" for name in step])
        done.update(step)
    return plan


def _stage_nodes(
    stage: str, members: list[str], groups: dict[str, Any], done: set[str]
) -> list[str]:
    if stage.endswith("%"):
        share = _percent(stage)
        count = math.ceil(len(members) * share / 100)
        return [name for name in members[:count] if name not in done]
    if stage.startswith("group:"):
        group = stage.removeprefix("group:")
        return [m for m in members if groups.get(m) == group and m not in done]
    names = [n for n in stage.replace("+", ",").split(",") if n]
    strangers = [n for n in names if n not in members]
    if strangers:
        raise InvalidInputError(
            f"stage {stage!r} names node(s) not in the scope: {', '.join(strangers)}",
            hint="knightwatch status lists nodes and their groups",
        )
    return [n for n in names if n not in done]


def _percent(stage: str) -> float:
    try:
        share = float(stage[:-1])
    except ValueError:
        share = -1.0
    if not 0 < share <= 100:
        raise InvalidInputError(
            f"stage {stage!r} is not a percentage between 0 and 100", hint="e.g. --stage 25%"
        )
    return share


def run_stages(
    plan: list[list[str]], apply: Callable[[str], dict[str, Any]], report: Callable[[str], None]
) -> list[str]:
    """Apply each stage's scopes in turn (``apply`` sets one and returns its change).

    Return the scopes set, to remove once the whole scope holds the value;
    stop (raise) at the first change with a node missing.
    """
    applied: list[str] = []
    for number, scopes in enumerate(plan, start=1):
        acked = 0
        for scope in scopes:
            change = apply(scope)
            applied.append(scope)
            if change["missing"]:
                raise FlagAcksMissingError(
                    f"stage {number} stopped: {', '.join(change['missing'])} did not confirm "
                    f"{scope}",
                    hint="the stages so far stay set (knightwatch flags show NAME); "
                    "chase these nodes, then run the change again",
                )
            acked += len(change["acknowledged"])
        report(f"stage {number}/{len(plan)}: {', '.join(scopes)} — {acked} acknowledgement(s)")
    return applied
