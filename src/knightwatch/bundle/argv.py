"""A program and its arguments in the release spec: a TOML list, or one string split like a shell.

``command = ["python3", "app/main.py", "--port", "8080"]`` is the exact form.
``command = "python3 app/main.py --port 8080"`` (what a Procfile or a systemd
unit says) is accepted too: it is split as a POSIX shell splits words
(``shlex.split``: quotes and backslashes work), and then run without a shell.
So nothing a shell would do beyond splitting happens: no pipes, redirections,
``&&``, ``;``, ``$VAR``, ``$(…)`` or backticks. A string that uses one of them
is refused with the list form to write instead, rather than run differently
from what it says. ``${KNIGHTWATCH_SERVICE_PORT}`` and the agent's other
``${NAME}`` variables are substituted by the agent in both forms.
"""

from __future__ import annotations

import re
import shlex
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

__all__ = ["MAX_ARGS", "Argv", "split_command"]

MAX_ARGS = 256
_OPERATORS = frozenset({"|", "||", "&", "&&", ";", ";;", "<", ">", ">>", "<<", "(", ")"})
_EXPANSIONS = ("$", "`")
_AGENT_VARIABLE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
"""``${NAME}``: substituted by the agent, not a shell (knightwatch.agent.runenv)."""


def split_command(text: str) -> list[str]:
    """Split a command string as a shell splits words; refuse what only a shell could run."""
    if not text.strip():
        raise ValueError('is empty: name a program, e.g. ["python3", "app/main.py"]')
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError as exc:  # an unclosed quote or a trailing backslash
        raise ValueError(f"cannot be split into words ({exc})") from None
    if expanded := next((w for w in words if _needs_a_shell(w)), None):
        raise ValueError(
            f"word {expanded!r} needs a shell to expand it ($VAR, $(...) or backticks), "
            "but commands run without a shell; give the values in [service.env], "
            f"or write the exact list, e.g. {_list_form(words)}"
        )
    operators = [w for w in words if w in _OPERATORS or set(w) <= set("|&;<>()")]
    if operators:
        raise ValueError(
            f"uses the shell operator {operators[0]!r}, but commands run without a shell; "
            "put the pipeline in a script and run that, e.g. "
            f"{_list_form(['bin/start.sh'])}"
        )
    return words


def _needs_a_shell(word: str) -> bool:
    """``$VAR``, ``$(…)`` or a backtick; the agent's own ``${KNIGHTWATCH_…}`` is not one."""
    return any(c in _AGENT_VARIABLE.sub("", word) for c in _EXPANSIONS)


def _from_string(value: Any) -> Any:
    return split_command(value) if isinstance(value, str) else value


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("may not contain NUL (no program argument can)")
    return text


def _list_form(words: list[str]) -> str:
    return "[" + ", ".join(f'"{w}"' for w in words[:8]) + (", …]" if len(words) > 8 else "]")


Argv = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_no_nul)]],
    Field(min_length=1, max_length=MAX_ARGS),
    BeforeValidator(_from_string),
]
"""A program and its arguments: a list of strings, or one string split like a shell's words."""
