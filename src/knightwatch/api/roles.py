"""Which role each operator route needs: the one table, checked by the request gate.

Reading needs ``viewer``; changing anything needs ``operator``; the rows
below name the routes that need more (or, for a dry run, less). A route
added without a row gets the default of its method, never an open door.
"""

from __future__ import annotations

import re

from knightwatch.control.users import Role

__all__ = ["required_role"]

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_RULES: tuple[tuple[frozenset[str] | None, re.Pattern[str], Role], ...] = (
    (None, re.compile(r"^/api/v1/users(/.*)?$"), Role.ADMIN),
    (frozenset({"POST"}), re.compile(r"^/api/v1/check/[^/]+$"), Role.VIEWER),
    (frozenset({"POST"}), re.compile(r"^/api/v1/changes/[^/]+/(approve|reject)$"), Role.APPROVER),
)
"""(methods or None for all, path, role), first match wins."""


def required_role(method: str, path: str) -> Role:
    """The least role that may call ``method path`` on the operator API."""
    for methods, pattern, role in _RULES:
        if (methods is None or method in methods) and pattern.match(path):
            return role
    return Role.VIEWER if method in _READS else Role.OPERATOR
