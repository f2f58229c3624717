"""The fleet page at 1,000 nodes, in a real browser: compact tiles, groups and filters.

The nodes are enrolled through the agent API but no agent runs for them (no
agent could run 1,000 times on this machine; the hollow-agent swarm is issue
16's): each is a real node of the control plane, shown as not reporting —
which is exactly the tile an operator most needs to find among a thousand.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from knightwatch.localfleet import LocalFleet
from knightwatch.protocol import public_key_text
from tests.integration.conftest import Releases, make_fleet
from tests.integration.test_dashboard import WAIT_MS, browser, http_client, signed_in

playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect

NODES = 1000
RACKS = 10
__all__ = ["browser"]  # the fixture, shared with test_dashboard


@pytest.fixture(scope="module")
def big_fleet(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Iterator[LocalFleet]:
    """A control plane with 1,000 enrolled nodes in 10 racks (groups), none reporting."""
    with make_fleet(tmp_path_factory.mktemp("dashboard-scale"), releases, nodes=0) as local:
        key = public_key_text(Ed25519PrivateKey.generate().public_key())
        with http_client(local) as agent_side:
            for i in range(NODES):
                name = f"n{i:04d}"
                grant = local.client.post(f"/nodes/{name}/enroll", {"group": f"rack{i % RACKS}"})
                joined = {"name": name, "token": grant["token"], "public_key": key}
                agent_side.post("/api/agent/v1/enroll", json=joined).raise_for_status()
        yield local


def test_the_fleet_page_stays_usable_at_a_thousand_nodes(
    browser: Any, big_fleet: LocalFleet, tmp_path: Path
) -> None:
    """1,000 compact tiles; grouped by rack; a filter finds one node; the stream carries it all."""
    started = time.monotonic()
    page = signed_in(browser, big_fleet, big_fleet.token)
    tiles = page.locator("#live .tile")
    expect(tiles).to_have_count(NODES, timeout=WAIT_MS)
    loaded_s = time.monotonic() - started
    expect(page.locator("#live ul.tiles").first).to_have_class("tiles compact")
    expect(tiles.first).to_contain_text("UNKNOWN")  # said in words on every tile

    page.get_by_label("Group by").select_option("group")
    page.wait_for_url("**group=group")
    groups = page.locator("#live section.group")
    expect(groups).to_have_count(RACKS, timeout=WAIT_MS)
    expect(groups.first.locator("h2")).to_contain_text("(100)")

    page.get_by_label("Filter").fill("n0421")
    expect(page.locator("#live .tile:not([hidden])")).to_have_count(1)
    expect(page.locator("#filter-count")).to_contain_text(f"1 of {NODES} nodes shown")
    expect(page.locator("#live section.group:not([hidden])")).to_have_count(1)
    page.get_by_label("Filter").fill("rack3")
    expect(page.locator("#live .tile:not([hidden])")).to_have_count(NODES // RACKS)
    page.screenshot(path=str(tmp_path / "dashboard-1000.png"))

    size = len(page.locator("#live").inner_html())
    print(json.dumps({"nodes": NODES, "first_load_s": round(loaded_s, 3), "fragment_bytes": size}))
    page.context.close()
