"""Views as plain data for JSON: dataclasses turned into dicts without copying what they hold.

``dataclasses.asdict`` deep-copies every list and dict inside, which for a
10,000-node status (each node with its findings and audit) cost half a
second per request. Views are built fresh for each request and never shared,
so nothing needs copying: nested dataclasses become dicts, lists are rebuilt
only to convert the dataclasses in them, everything else is passed as is.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

__all__ = ["plain_data"]


def plain_data(view: Any) -> dict[str, Any]:
    """The dataclass instance ``view`` as a dict of its fields, nested dataclasses included."""
    try:
        values = dict(vars(view))  # the fields, in their order (what __init__ set)
    except TypeError:  # a slotted dataclass has no __dict__
        values = {f.name: getattr(view, f.name) for f in fields(view)}
    for name, value in values.items():
        values[name] = _plain(value)
    return values


def _plain(value: Any) -> Any:
    """Nested dataclasses (alone or as a list's items) as dicts; anything else as it is."""
    if is_dataclass(value) and not isinstance(value, type):
        return plain_data(value)
    if isinstance(value, list) and value and is_dataclass(value[0]):
        return [_plain(item) for item in value]
    return value
