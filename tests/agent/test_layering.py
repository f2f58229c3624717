"""The agent stays an agent: it never loads the control plane's store or web stack."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = (
    "knightwatch.store",
    "knightwatch.api",
    "knightwatch.control",
    "sqlalchemy",
    "alembic",
    "fastapi",
    "starlette",
    "uvicorn",
)


def test_importing_the_agent_loads_no_server_module() -> None:
    """Importing the agent and its CLI command (transitively) loads none of the server's modules."""
    code = (
        "import sys, knightwatch.agent, knightwatch.cli.agent\n"
        f"bad = sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))\n"
        "print('\\n'.join(bad))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == ""
