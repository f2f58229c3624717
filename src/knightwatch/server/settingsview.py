"""The server's settings as plain JSON values, secrets masked (``knightwatch server config show``).

A password in the database URL becomes ``***``; the operator token is
``**********``; an alert receiver's webhook and Alertmanager URLs (which may
carry a token in their path or query) keep only their scheme and host.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from knightwatch.bundle.spec import GuardSpec
from knightwatch.control.changes.rules import ApprovalPolicy, FreezeWindow
from knightwatch.control.routing import AlertRouting
from knightwatch.server.settings import Secret, ServerSettings, mask_url

__all__ = ["MASK", "shown_values"]

MASK = "**********"


def shown_values(settings: ServerSettings) -> dict[str, Any]:
    """Every setting's value as JSON data, with secrets masked."""
    shown: dict[str, Any] = {}
    for item in fields(settings):
        value = getattr(settings, item.name)
        if item.name == "database_url" and isinstance(value, Secret):
            shown[item.name] = mask_url(value.reveal())
        else:
            shown[item.name] = _plain(value)
    return shown


def _plain(value: Any) -> Any:  # noqa: PLR0911 - one branch per kind of value
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, timedelta):
        return value.total_seconds() / 86_400  # flag lifetimes are given in days
    if isinstance(value, ApprovalPolicy | FreezeWindow):
        return value.to_json()
    if isinstance(value, AlertRouting):
        return _routing(value)
    if isinstance(value, GuardSpec):
        return value.model_dump(mode="json")
    return value


def _routing(routing: AlertRouting) -> dict[str, Any]:
    """The alert routing with every receiver URL cut to its scheme and host."""
    data = routing.model_dump(mode="json", exclude_none=True)
    for receiver in data.get("receivers", []):
        if "webhook" in receiver:
            receiver["webhook"] = _origin(receiver["webhook"])
        if "alertmanager" in receiver:
            receiver["alertmanager"] = [_origin(url) for url in receiver["alertmanager"]]
    return data


def _origin(url: str) -> str:
    """``https://host:port/***``: where a URL points, without its path, query or user."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/***"
