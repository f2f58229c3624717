"""Path globs of the release spec: ``*``, ``?``, ``[...]`` and ``**``.

``*`` and ``?`` stay inside one path segment; ``**`` matches any number of
segments (zero included); a glob ending in ``/`` matches everything below
that directory. Matching is over POSIX relative paths.
"""

from __future__ import annotations

import functools
import re

__all__ = ["compile_glob", "glob_matches"]


@functools.lru_cache(maxsize=4096)
def compile_glob(glob: str) -> re.Pattern[str]:
    """Return the regular expression for ``glob``; raise ValueError if malformed."""
    if glob.startswith("/") or ".." in glob.split("/"):
        raise ValueError(f"glob {glob!r} must be relative and must not contain '..'")
    if glob.endswith("/"):
        glob += "**"
    try:
        return re.compile(_translate(glob))
    except re.error as exc:
        raise ValueError(f"glob {glob!r} is malformed: {exc.msg}") from None


def glob_matches(glob: str, path: str) -> bool:
    """Tell whether the relative POSIX ``path`` matches ``glob``."""
    return compile_glob(glob).fullmatch(path) is not None


def _translate(glob: str) -> str:
    out: list[str] = []
    segments = glob.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        out.append(_translate_segment(segment, glob))
        if not last:
            out.append("/")
    return "".join(out)


def _translate_segment(segment: str, glob: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = segment.find("]", i + 2 if segment[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end == -1:
                raise ValueError(f"glob {glob!r} has an unclosed '['")
            body = segment[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            body = body.replace("\\", "\\\\").replace("/", "").replace("[", "\\[")
            for op in ("&&", "~~", "||", "--"):
                body = body.replace(op, "\\" + op[0] + "\\" + op[1])
            out.append("[" + body + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)
