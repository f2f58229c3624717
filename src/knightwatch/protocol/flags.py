"""Feature flags on the wire (P3, P4).

Down: :class:`FlagValues`, the values in force for one node at a flag-state
version (sent on every change in its scope and whenever the node connects).
Up: every report's node state carries the version the agent last wrote to
``flags.json`` (its acknowledgement) and the evaluations its service counted.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from knightwatch.protocol.bounds import Count

__all__ = ["MAX_FLAGS", "FlagName", "FlagSetting", "FlagValues", "WireFlagValue"]

MAX_FLAGS = 10_000
FlagName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,126}$")]
WireFlagValue = Annotated[
    StrictBool | StrictInt | StrictFloat | Annotated[StrictStr, Field(max_length=4096)],
    Field(union_mode="left_to_right"),
]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FlagSetting(_Message):
    """One flag's value for a node, and the scope it comes from."""

    value: WireFlagValue
    source: Annotated[str, Field(pattern=r"^(fleet|(group|node):[a-z0-9][a-z0-9._-]{0,62})$")]


class FlagValues(_Message):
    """Every flag value in force for the node (a flag not listed takes its safe default)."""

    type: Literal["flags"] = "flags"
    version: Count
    """The fleet's flag-state version; the agent acknowledges it once flags.json holds it."""
    values: Annotated[dict[FlagName, FlagSetting], Field(max_length=MAX_FLAGS)] = {}
