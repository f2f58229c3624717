"""The dashboard's templates: one Jinja2 environment, autoescaped, with a few display filters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

__all__ = ["render"]


def _utc(value: Any) -> datetime | None:
    """A stored time (a datetime or ISO 8601 text, naive meaning UTC) in UTC; None if absent."""
    if value is None or value == "":
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _moment(value: Any) -> str:
    """A stored time as ``2026-12-05 10:46:38 UTC`` (empty when there is none)."""
    moment = _utc(value)
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(value: Any) -> str:
    """A stored time in ISO 8601 with its zone (for the script to count ages from)."""
    moment = _utc(value)
    return "" if moment is None else moment.isoformat()


def _age(seconds: float | None) -> str:
    """A report's age, coarse enough that a fresh fleet's page does not change every second."""
    if seconds is None:
        return "never"
    if seconds < 5:
        return "fresh (under 5 s)"
    if seconds < 120:
        return f"{int(seconds)} s ago"
    if seconds < 7200:
        return f"{int(seconds // 60)} min ago"
    return f"{int(seconds // 3600)} h ago"


def _short(digest: str | None) -> str:
    """The first 12 hex digits of a digest (after its ``sha256:`` prefix)."""
    if not digest:
        return "—"
    return digest.removeprefix("sha256:")[:12]


_ENV = Environment(
    loader=PackageLoader("knightwatch.api.dashboard", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters.update(moment=_moment, iso=_iso, age=_age, short=_short)


def render(template: str, **context: Any) -> str:
    """``template`` rendered with ``context`` (every value escaped unless marked safe)."""
    return _ENV.get_template(template).render(**context)
