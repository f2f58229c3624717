"""The control plane's HTTP surface: operator API, agent API, WebSocket hub."""

from knightwatch.api.app import create_app

__all__ = ["create_app"]
