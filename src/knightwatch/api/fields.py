"""Field types every API body and path shares: bounded ids, safe text, node selectors.

Validation refuses what the store or a terminal cannot take before any
route runs: an id past the 64-bit range the database stores, a reason or a
name holding control or bidi characters (422, naming the field), a node
selector that selects nothing by accident (an empty ``--nodes ""`` is not
"the whole fleet").
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic_core import PydanticCustomError

from knightwatch.protocol.bounds import MAX_INT
from knightwatch.text import unsafe_characters

__all__ = [
    "EMPTY_SELECTOR",
    "MAX_ID",
    "MAX_WAIT_S",
    "UNSAFE_TEXT",
    "IdPath",
    "NamePath",
    "NodeSelector",
    "SafeLine",
    "SafeText",
    "WaitSeconds",
]

MAX_ID = MAX_INT
"""The largest id the store holds (a signed 64-bit integer)."""
UNSAFE_TEXT = "unsafe_text"
"""The pydantic error type of refused characters (answered 422, not 400)."""
EMPTY_SELECTOR = "empty_selector"
"""The pydantic error type of a node selector without a term."""


def _refuse_unsafe(text: str, *, newlines: bool) -> str:
    found = unsafe_characters(text, newlines=newlines)
    if found:
        raise PydanticCustomError(
            UNSAFE_TEXT,
            "contains control or bidi characters ({found}); they are not allowed",
            {"found": ", ".join(found)},
        )
    return text


def _safe_line(text: str) -> str:
    return _refuse_unsafe(text, newlines=False)


def _safe_text(text: str) -> str:
    return _refuse_unsafe(text, newlines=True)


def _selector(text: str) -> str:
    _safe_line(text)
    if not any(term.strip() for term in text.split(",")):
        raise PydanticCustomError(
            EMPTY_SELECTOR,
            "the node selector is empty (an unset shell variable?); "
            "leave it out to select every node",
        )
    return text


SafeLine = AfterValidator(_safe_line)
"""Refuses control and bidi characters, line breaks and tabs included (names, refs)."""
SafeText = AfterValidator(_safe_text)
"""Refuses control and bidi characters but allows line breaks and tabs (reasons)."""
NodeSelector = Annotated[str, AfterValidator(_selector)]
"""A node selector with at least one term; absent (None) is the whole fleet, empty is refused."""
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
MAX_WAIT_S = 60.0
"""The longest a long poll (``?wait_s=``) holds a request."""
WaitSeconds = Annotated[float, Query(ge=0, le=MAX_WAIT_S)]
"""``?wait_s=N``: answer when what the caller waits for happened, or after N seconds."""
"""A row id in a URL: 1 to 2**63-1."""
NamePath = Annotated[str, Path(min_length=1, max_length=300), SafeLine]
"""A node name or release reference in a URL."""

FlagValue = Annotated[
    StrictBool | StrictInt | StrictFloat | Annotated[StrictStr, Field(max_length=4096)],
    Field(union_mode="left_to_right"),
]
"""A flag's value: a boolean, a number or a string (never coerced from one to another)."""
