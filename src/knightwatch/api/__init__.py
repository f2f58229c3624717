"""The control plane's HTTP surface: operator API, agent API, WebSocket hub."""

from knightwatch.api.app import ControlPlane, create_app

__all__ = ["ControlPlane", "create_app"]
