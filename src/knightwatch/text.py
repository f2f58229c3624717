"""Characters that must never reach a terminal raw: controls, bidi overrides, NUL.

A reason, a name or a detail another person typed (or a node reported) is
shown to operators; an ANSI escape in it could repaint their terminal and a
bidi override could make ``node1`` read as something else. The API refuses
these characters in what operators send (:func:`unsafe_characters`), and the
CLI shows whatever still holds them (a file name a node reported) as visible
escapes (:func:`visible`).
"""

from __future__ import annotations

import re

__all__ = ["UNSAFE", "unsafe_characters", "visible"]

UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""C0 controls (but tab and line feed), DEL, C1 controls, and the bidi marks and overrides."""

_UNSAFE_WITH_NEWLINES = re.compile(f"{UNSAFE.pattern[:-1]}\t\n]")


def unsafe_characters(text: str, *, newlines: bool = False) -> list[str]:
    """The distinct unsafe characters in ``text``, as escapes (``['\\x1b', '\\u202e']``).

    Tab and line feed count as unsafe too unless ``newlines`` allows them.
    """
    pattern = UNSAFE if newlines else _UNSAFE_WITH_NEWLINES
    return sorted({_escape(m.group()) for m in pattern.finditer(text)})


def visible(text: str) -> str:
    """``text`` with every unsafe character replaced by its visible escape (``\\x1b``)."""
    return UNSAFE.sub(lambda m: _escape(m.group()), text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
