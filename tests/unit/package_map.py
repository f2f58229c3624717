"""Which part of knightwatch may import which: the package map, as data.

Every package and root module of ``src/knightwatch`` has a row; an import of
another part that its row does not list is a layering error
(tests/unit/test_structure.py). Read it bottom-up: base modules import only
``errors``; the domain (``bundle``, ``control``) imports no adapter; the agent
never touches the store or the control plane; only the composition roots
(``cli``, ``api``, ``server``) see everything they wire.

``python -m tests.unit.package_map`` prints it.
"""

from __future__ import annotations

BASE = frozenset(
    {"errors", "canonical", "clock", "selection", "text", "polling", "vocabulary", "plain"}
)
"""Leaf modules with no knightwatch dependency but ``errors`` (and each other)."""

ALLOWED: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "canonical": frozenset({"errors"}),
    "clock": frozenset({"errors"}),
    "selection": frozenset({"errors"}),
    "text": frozenset({"errors"}),
    "polling": frozenset({"errors"}),
    "vocabulary": frozenset(),
    "plain": frozenset(),  # dataclass views as plain data, without asdict's deep copies
    "sdk": frozenset(),  # services import it: the standard library only (and openfeature)
    "logs": BASE,
    "shipped": BASE,  # release sources shipped in the package (the example, the simulator's)
    "tlsca": BASE,
    "protocol": BASE,
    "bundle": BASE,
    "store": BASE | {"knightwatch"},  # the version, in the refusal of a newer schema
    "client": BASE | {"tlsca"},
    # running on hosts: the settings files' places and the systemd units
    "hosting": BASE,
    "push": BASE | {"bundle", "client", "protocol"},
    "control": BASE | {"bundle", "protocol", "store"},
    "agent": BASE | {"knightwatch", "bundle", "protocol", "tlsca", "logs"},
    "server": BASE | {"bundle", "control", "hosting", "protocol", "store", "tlsca"},
    "api": BASE | {"knightwatch", "bundle", "control", "protocol", "server", "store"},
    "localfleet": BASE | {"agent", "client", "hosting", "push", "tlsca"},
    "testing": BASE | {"localfleet"},
    # hollow agents: the agent's protocol side without its node, for scale measurements
    "swarm": BASE | {"knightwatch", "agent", "client", "protocol", "tlsca"},
    # the simulator and its drill: a user of the product, through its API and a local fleet
    "sim": BASE | {"knightwatch", "agent", "bundle", "client", "localfleet", "sdk", "shipped"},
    "cli": BASE
    | {"knightwatch", "agent", "api", "bundle", "client", "localfleet", "logs", "protocol"}
    | {"hosting", "push", "server", "shipped", "sim", "swarm", "tlsca"},
    "__main__": frozenset({"cli"}),
    "__init__": BASE | {"bundle"},
}
"""For each part (a subpackage or a root module), the other parts it may import.

``knightwatch`` is the package itself (``from knightwatch import __version__``: the
agent and the hollow agents state it when they connect).
"""

FORBIDDEN_LIBRARIES: dict[str, frozenset[str]] = {
    "bundle": frozenset({"fastapi", "starlette", "typer", "rich", "sqlalchemy", "alembic"}),
    "control": frozenset({"fastapi", "starlette", "typer", "rich", "uvicorn", "jinja2"}),
    "protocol": frozenset({"fastapi", "starlette", "typer", "rich", "sqlalchemy"}),
    "agent": frozenset({"fastapi", "starlette", "sqlalchemy", "alembic", "typer"}),
    "store": frozenset({"fastapi", "starlette", "typer", "rich"}),
}
"""Third-party libraries a part must not use (the domain knows nothing of HTTP or the CLI)."""


def render() -> str:
    """The map as text, one part a line, lowest layer first (``base`` stands for BASE)."""
    order = sorted(ALLOWED, key=lambda part: (len(ALLOWED[part]), part))
    width = max(len(part) for part in ALLOWED)
    lines = []
    for part in order:
        allowed = ALLOWED[part]
        names = sorted(allowed - BASE) if allowed >= BASE else sorted(allowed)
        shown = (["base"] if allowed >= BASE else []) + names
        lines.append(f"{part:<{width}}  -> {', '.join(shown) or '(nothing)'}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
