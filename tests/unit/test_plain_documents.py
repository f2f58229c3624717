"""Views become plain data without deep copies, and the fast JSON response matches FastAPI's."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from enum import Enum, StrEnum
from typing import Any

from fastapi.encoders import jsonable_encoder
from pydantic import TypeAdapter

from knightwatch.api.responses import json_document
from knightwatch.plain import plain_data


class Colour(StrEnum):
    RED = "red"


class Level(Enum):
    HIGH = 3


@dataclass(frozen=True)
class Inner:
    at: datetime
    tags: list[str]


@dataclass(frozen=True)
class Outer:
    name: str
    colour: Colour
    level: Level
    inner: Inner | None
    items: list[Inner]
    facts: dict[str, Any] = field(default_factory=dict)
    day: date = date(2026, 12, 5)


def _sample() -> Outer:
    at = datetime(2026, 12, 5, 22, 7, 46, 123456, tzinfo=UTC)
    return Outer(
        name="nöde-1",
        colour=Colour.RED,
        level=Level.HIGH,
        inner=Inner(at, ["a"]),
        items=[Inner(at, []), Inner(at, ["b", "c"])],
        facts={"nested": {"list": [1, 2.5, None, True]}, "when": at},
    )


def test_plain_data_equals_asdict_without_copying() -> None:
    view = _sample()
    plain = plain_data(view)
    assert plain == asdict(view)
    assert plain["facts"] is view.facts  # shared, not deep-copied


def test_json_document_encodes_as_fastapi_does() -> None:
    """The bytes a route annotated ``-> dict[str, Any]`` sent: UTC times end in Z."""
    data = plain_data(_sample())
    response = json_document(data)
    assert response.media_type == "application/json"
    assert response.body == TypeAdapter(dict[str, Any]).dump_json(data)
    assert json.loads(response.body)["inner"]["at"] == "2026-12-05T22:07:46.123456Z"
    assert json.loads(response.body) == jsonable_encoder(data) | {
        "inner": {"at": "2026-12-05T22:07:46.123456Z", "tags": ["a"]},
        "items": [
            {"at": "2026-12-05T22:07:46.123456Z", "tags": []},
            {"at": "2026-12-05T22:07:46.123456Z", "tags": ["b", "c"]},
        ],
        "facts": {"nested": {"list": [1, 2.5, None, True]}, "when": "2026-12-05T22:07:46.123456Z"},
    }


@dataclass(frozen=True, slots=True)
class Slotted:
    at: datetime
    inner: Inner


def test_plain_data_of_a_slotted_dataclass() -> None:
    at = datetime(2026, 12, 5, tzinfo=UTC)
    view = Slotted(at, Inner(at, ["x"]))
    assert plain_data(view) == asdict(view)
