"""Fixtures of the in-process API tests: one control plane, its app and clients of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from knightwatch.api import create_app
from knightwatch.client import ApiClient, ServerTarget
from knightwatch.clock import VirtualClock
from knightwatch.control.changes import SOLO
from knightwatch.control.users import token_hash
from knightwatch.server.plane import ControlPlane
from knightwatch.server.settings import ServerSettings
from knightwatch.store import User
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
        data_dir=tmp_path / "data", trusted_keys=(key_dir / "release.pub",), approvals=SOLO
    )
    plane = ControlPlane.open(settings, clock=clock)
    with plane.db.session() as session:  # an admin whose token the tests know
        session.add(
            User(
                name="admin",
                role="admin",
                token_hash=token_hash(plane.users_key, TOKEN),
                created_at=clock.now(),
                created_by="tests",
            )
        )
    return plane


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
