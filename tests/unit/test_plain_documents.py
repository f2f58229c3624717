"""Views become plain data without deep copies, and the fast JSON response matches FastAPI's."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from enum import Enum, StrEnum
from typing import Any

import pytest
from fastapi.encoders import jsonable_encoder

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
    data = plain_data(_sample())
    response = json_document(data)
    assert response.media_type == "application/json"
    assert json.loads(response.body) == jsonable_encoder(data)


def test_json_document_refuses_what_is_not_json_data() -> None:
    with pytest.raises(TypeError, match="object is not JSON data"):
        json_document({"x": object()})
    with pytest.raises(ValueError):
        json_document({"x": float("nan")})


@dataclass(frozen=True, slots=True)
class Slotted:
    at: datetime
    inner: Inner


def test_plain_data_of_a_slotted_dataclass() -> None:
    at = datetime(2026, 12, 5, tzinfo=UTC)
    view = Slotted(at, Inner(at, ["x"]))
    assert plain_data(view) == asdict(view)
