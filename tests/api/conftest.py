"""Fixtures of the in-process API tests: one control plane, its app and clients of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from knightwatch.api import create_app
from knightwatch.client import ApiClient, ServerTarget
from knightwatch.clock import VirtualClock
from knightwatch.server.plane import ControlPlane
from knightwatch.server.settings import Secret, ServerSettings
from tests.api.inprocess import PortalTransport, serving

TOKEN = "operator-token-for-api-tests"
URL = "http://control-plane.test"


@pytest.fixture
def clock() -> VirtualClock:
    """The control plane's clock: it moves only when a test says so."""
    return VirtualClock()


@pytest.fixture
def plane(tmp_path: Path, key_dir: Path, clock: VirtualClock) -> ControlPlane:
    """A control plane over a fresh data directory, trusting release.pub (closed by the app)."""
    settings = ServerSettings(
        data_dir=tmp_path / "data",
        trusted_keys=(key_dir / "release.pub",),
        operator_token=Secret(TOKEN),
    )
    return ControlPlane.open(settings, clock=clock)


@pytest.fixture
def transport(plane: ControlPlane) -> Iterator[PortalTransport]:
    """The app serving ``plane``, its lifespan running, as an httpx transport."""
    with serving(create_app(plane)) as served:
        yield served


@pytest.fixture
def operator(transport: PortalTransport) -> Iterator[ApiClient]:
    """The operator's client, exactly as the CLI builds it, over the in-process transport."""
    client = ApiClient(ServerTarget(URL, TOKEN), transport=transport)
    yield client
    client.close()
