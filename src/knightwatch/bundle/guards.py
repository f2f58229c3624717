"""Guard rules: CEL expressions checked for syntax at build and push time."""

from __future__ import annotations

__all__ = ["check_cel"]


def check_cel(rule: str) -> None:
    """Raise ValueError with the position of the error if ``rule`` is not valid CEL."""
    # Imported here: the cel package pulls in a REPL toolkit (~0.2 s) at import.
    import cel  # noqa: PLC0415

    try:
        cel.compile(rule)
    except ValueError as exc:
        detail = str(exc)
        marker = "ERROR: <input>:"
        if marker in detail:
            detail = detail[detail.index(marker) + len("ERROR: ") :]
            detail = detail.replace("<input>:", "line:col ", 1)
        raise ValueError(f"not a valid CEL expression: {detail}") from None
