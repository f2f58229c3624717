"""``knightwatch server --check-upgrade``: what a start would migrate, without doing it."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from knightwatch.cli.output import out, print_json
from knightwatch.server.settings import ServerSettings
from knightwatch.server.upgrade import UpgradePlan

__all__ = ["check_upgrade_command", "plan_document"]


def check_upgrade_command(settings: ServerSettings, *, as_json: bool) -> None:
    """Print what opening the settings' database would migrate; change and create nothing."""
    from knightwatch import __version__
    from knightwatch.server.upgrade import upgrade_plan

    plan = upgrade_plan(settings)
    if as_json:
        print_json({**plan_document(plan), "version": __version__})
        return
    if plan.up_to_date:
        out.print(
            f"Up to date: schema {plan.head}; "
            f"a start of knightwatch {__version__} migrates nothing."
        )
        return
    if plan.current is None:
        out.print(
            f"No knightwatch schema yet: a start of knightwatch {__version__} creates it "
            f"at {plan.head}."
        )
        return
    count = len(plan.pending)
    out.print(
        f"A start of knightwatch {__version__} would migrate schema {plan.current} to "
        f"{plan.head}: {count} migration{'s' if count != 1 else ''}, in one transaction."
    )
    table = Table(box=box.SIMPLE, show_edge=False)
    table.add_column("REVISION", no_wrap=True)
    table.add_column("WHAT IT DOES")
    for migration in plan.pending:
        table.add_row(migration.revision, migration.summary)
    out.print(table)
    out.print(
        "Back up first: a SQLite database is copied to "
        f"knightwatch.db.before-{plan.head} by the start; PostgreSQL needs pg_dump."
    )


def plan_document(plan: UpgradePlan) -> dict[str, Any]:
    """The plan as JSON: current and head revisions and the pending migrations."""
    return {
        "current": plan.current,
        "head": plan.head,
        "up_to_date": plan.up_to_date,
        "pending": [{"revision": m.revision, "summary": m.summary} for m in plan.pending],
    }
