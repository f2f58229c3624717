"""What a start of the control plane would migrate, read from its settings."""

from __future__ import annotations

from knightwatch.server.settings import ServerSettings
from knightwatch.store.database import check_upgrade
from knightwatch.store.migrate import Migration, UpgradePlan

__all__ = ["Migration", "UpgradePlan", "upgrade_plan"]


def upgrade_plan(settings: ServerSettings) -> UpgradePlan:
    """The migrations opening the settings' database would apply; nothing is changed."""
    url = settings.database_url.reveal() if settings.database_url else None
    return check_upgrade(url, settings.data_dir)
