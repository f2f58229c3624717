"""Canonical JSON: the byte form every digest is taken over."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from knightwatch.canonical import canonical_json, parse_json, sha256_hex

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


class TestCanonicalJson:
    @given(json_values)
    def test_round_trip(self, value: object) -> None:
        """Parsing canonical bytes gives back an equal value."""
        assert parse_json(canonical_json(value)) == value

    @given(json_values)
    def test_idempotent(self, value: object) -> None:
        """Re-serialising a parsed canonical document gives the same bytes."""
        data = canonical_json(value)
        assert canonical_json(parse_json(data)) == data

    @given(st.dictionaries(st.text(max_size=8), st.integers(), max_size=8))
    def test_key_order_does_not_matter(self, mapping: dict[str, int]) -> None:
        """Two dicts with the same items in another order give the same digest."""
        reordered = dict(reversed(list(mapping.items())))
        assert sha256_hex(canonical_json(mapping)) == sha256_hex(canonical_json(reordered))

    def test_form(self) -> None:
        """Sorted keys, no insignificant whitespace, UTF-8 rather than escapes."""
        assert canonical_json({"b": 1, "a": [1, 2], "é": "ü"}) == (
            '{"a":[1,2],"b":1,"é":"ü"}'.encode()
        )

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
    def test_refuses_non_finite(self, value: float) -> None:
        """NaN and infinities have no canonical form and are refused."""
        with pytest.raises(ValueError):
            canonical_json({"x": value})

    def test_parse_refuses_non_finite(self) -> None:
        """Parsing refuses the NaN and Infinity tokens that json.dumps would write."""
        with pytest.raises(ValueError):
            parse_json(json.dumps({"x": math.nan}).encode())
