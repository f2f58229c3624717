"""Node selectors: ``node1,node2``, globs (``node*``) and ``group=NAME``.

A base module (no store, no HTTP): the domain selects with it, and the CLI
refuses an empty selector with it before anything leaves the operator's machine.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Protocol

from knightwatch.errors import InvalidInputError

__all__ = ["Named", "matches_selector", "parse_selector"]

_TERM = re.compile(r"^(group=[a-z0-9][a-z0-9._-]{0,62}|[a-z0-9*?\[\]][a-z0-9._*?\[\]!-]{0,62})$")


class Named(Protocol):
    """Anything with a node's name and group: an ORM node or a plain row of both."""

    name: str
    group_name: str


def parse_selector(selector: str | None) -> list[str]:
    """Split and validate a selector; None means every node, an empty one is refused."""
    if selector is None:
        return []
    terms = [t.strip() for t in selector.split(",") if t.strip()]
    if not terms:
        raise InvalidInputError(
            f"the node selector is empty ({selector!r}: an unset shell variable?)",
            hint="leave --nodes out for the whole fleet, or name nodes: --nodes node1,node2",
        )
    for term in terms:
        if not _TERM.fullmatch(term):
            raise InvalidInputError(
                f"node selector term {term!r} is not a node name, glob or group=NAME",
                hint="e.g. --nodes node1,node2 or 'node*' or group=east",
            )
    return terms


def matches_selector(node: Named, terms: Sequence[str]) -> bool:
    """Tell whether ``node`` is selected by the parsed ``terms`` (all when empty)."""
    if not terms:
        return True
    for term in terms:
        if term.startswith("group="):
            if node.group_name == term.removeprefix("group="):
                return True
        elif fnmatch.fnmatchcase(node.name, term):
            return True
    return False
