"""Canonical JSON: the one byte form every digest and signature is taken over.

Sorted keys, UTF-8, no insignificant whitespace, no NaN or infinities. Two
equal values always give the same bytes, so a SHA-256 over them is a stable
identity.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_json", "parse_json", "sha256_hex"]


def canonical_json(value: Any) -> bytes:
    """Return the canonical UTF-8 JSON bytes of ``value``."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def parse_json(data: bytes) -> Any:
    """Parse JSON bytes, refusing NaN and infinities that canonical JSON never holds."""

    def refuse(token: str) -> Any:
        raise ValueError(f"non-finite number {token} is not allowed")

    return json.loads(data.decode("utf-8"), parse_constant=refuse)


def sha256_hex(data: bytes) -> str:
    """Return the lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
