"""The SMARS router: its parent book by property, and the real process against the real exchange."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import knightwatch
from knightwatch.agent.flagfile import declared_defaults
from knightwatch.bundle.spec import load_spec
from knightwatch.sim.market import symbols
from knightwatch.sim.sources import SOURCES, assemble
from knightwatch.testing import wait_until

SEED = 3
SYMBOL, PRICE = next(iter(symbols(SEED).items()))


def _parents_module() -> ModuleType:
    """smars/parents.py under a name of its own (other tests may import another smars)."""
    path = SOURCES / "common" / "smars" / "parents.py"
    spec = importlib.util.spec_from_file_location("kw_test_smars_parents", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


parents = _parents_module()


@settings(max_examples=200, deadline=None)
@given(
    quantity=st.integers(1, 50_000),
    child=st.integers(1, 5_000),
    fills=st.lists(st.floats(0, 1), min_size=1, max_size=60),
    batch=st.integers(1, 5),
)
def test_the_parent_book_never_sends_or_fills_more_than_the_parent(
    quantity: int, child: int, fills: list[float], batch: int
) -> None:
    """Whatever fraction of each child fills, counted children never exceed the parent."""
    book = parents.ParentBook()
    parent = parents.Parent("P1", SYMBOL, "buy", quantity, PRICE, True)
    book.add(parent)
    sent = 0
    for fraction in fills:
        planned = []
        for _ in range(batch):  # several children before any report, as in one tick
            if parent.state != parents.OPEN or parent.remaining <= 0:
                break
            planned.append(book.plan(parent, child, PRICE))
        sent += sum(c.quantity for c in planned)
        assert parent.filled + parent.in_flight <= quantity
        for c in planned:
            book.settle(c, int(c.quantity * fraction))
        assert parent.filled <= quantity and parent.overfill == 0
        if parent.state == parents.FILLED:
            assert parent.remaining == 0
            with pytest.raises(ValueError, match="nothing left"):
                book.plan(parent, child, PRICE)
    assert book.overfill() == 0


# -- the real processes ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def exchange_url() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "knightwatch.sim.exchange", "--port", "0", "--seed", str(SEED)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    port = json.loads(process.stdout.readline())["port"]
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)
    process.stdout.close()


class Router:
    """A router process from an assembled release tree, its flags written by hand."""

    def __init__(self, tree: Path, exchange_url: str, flag_values: dict[str, object]) -> None:
        self.port = _free_port()
        self.log = tree.parent / f"{tree.name}.log"
        defaults = declared_defaults(load_spec(tree).flag)
        flags_file = tree.parent / f"{tree.name}-flags.json"
        flags_file.write_text(
            json.dumps(
                {
                    "format": 1,
                    "node": "node1",
                    "release": None,
                    "version": 1,
                    "written_at": "2012-08-01T12:00:00Z",
                    "flags": {
                        name: {**d, "value": flag_values.get(name, d["default"]), "source": "fleet"}
                        for name, d in defaults.items()
                    },
                }
            )
        )
        env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(Path(knightwatch.__file__).resolve().parent.parent),
            "SMARS_PORT": str(self.port),
            "SMARS_EXCHANGE": exchange_url,
            "KNIGHTWATCH_FLAGS_FILE": str(flags_file),
            "KNIGHTWATCH_FLAG_DEFAULTS": json.dumps(defaults),
        }
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "bin/smars-router"], cwd=tree, env=env, stdout=log, stderr=log
            )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        wait_until(self._up, timeout=30, what="the router to listen")

    def _up(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        try:
            return self.http.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = self.http.get("/state").json()
        return data

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        self.process.wait(10)


def parent(number: int, quantity: int = 5000, rlp: bool = False) -> dict[str, object]:
    return {
        "id": f"P{number}",
        "symbol": SYMBOL,
        "side": "buy",
        "quantity": quantity,
        "limit_cents": PRICE * 2,
        "rlp": rlp,
    }


@pytest.fixture
def router(tmp_path: Path, exchange_url: str) -> Iterator[Router]:
    running = Router(assemble("2012.08", tmp_path / "r"), exchange_url, {"rlp": True})
    yield running
    running.stop()


def test_parents_become_child_orders_until_filled(router: Router) -> None:
    http = router.http
    assert http.post("/orders", json={"orders": [parent(1), parent(2, 300, True)]}).json() == {
        "accepted": 2
    }
    now = 5400.0
    for _ in range(10):
        now += 1
        assert http.post("/tick", json={"now": now}).status_code == 200
    state = router.state()
    assert state["parents"] == {"open": 0, "filled": 2, "cancelled": 0}
    counters = state["counters"]
    assert counters["smars_child_shares_filled_total"] == counters["smars_parent_shares_total"]
    assert counters["smars_rlp_child_orders_total"] >= 1
    text = http.get("/metrics").text
    samples = {
        s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
    }
    assert samples["smars_parent_shares_total"] == 5300
    assert samples["smars_parent_overfill_shares"] == 0
    assert router.state()["scrapes"] == 1


def test_halt_blocks_new_orders_and_cancels_working_ones(router: Router) -> None:
    http = router.http
    http.post("/orders", json={"orders": [parent(1, 1_000_000)]})
    http.post("/tick", json={"now": 5401.0})
    answer = http.post("/halt", json={})
    assert answer.json() == {"halted": True, "cancelled": 1}
    assert http.post("/orders", json={"orders": [parent(2)]}).status_code == 503
    assert http.post("/tick", json={"now": 5402.0}).status_code == 503
    assert router.state()["parents"]["cancelled"] == 1
    assert router.state()["halted"] is True


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"orders": [{**parent(1), "quantity": -5}]}, "orders[0].quantity"),
        ({"orders": [{**parent(1), "quantity": True}]}, "orders[0].quantity"),
        ({"orders": [{**parent(1), "quantity": 2.5}]}, "orders[0].quantity"),
        ({"orders": [{**parent(1), "limit_cents": 0}]}, "orders[0].limit_cents"),
        ({"orders": [{**parent(1), "side": "short"}]}, "orders[0].side"),
        ({"orders": [{**parent(1), "symbol": "lower"}]}, "orders[0].symbol"),
        ({"orders": [{**parent(1), "rlp": "yes"}]}, "orders[0].rlp"),
        ({"orders": [{**parent(1), "extra": 1}]}, "orders[0]"),
        ({"orders": [parent(1), {**parent(2), "id": "bad id!"}]}, "orders[1].id"),
        ({"orders": [parent(1), parent(1)]}, "orders"),
        ({"orders": [parent(i) for i in range(10_001)]}, "orders"),
        ({"orders": []}, "orders"),
        ([], "body"),
    ],
)
def test_bad_parent_orders_are_refused_and_nothing_is_accepted(
    router: Router, body: object, where: str
) -> None:
    before = router.state()
    answer = router.http.post("/orders", json=body)
    assert answer.status_code == 400
    assert answer.json()["where"] == where, answer.json()
    assert router.state() == before


def test_malformed_json_bad_ticks_and_a_flood_change_nothing(router: Router) -> None:
    http = router.http
    before = router.state()
    assert http.post("/orders", content=b"{nope").status_code == 400
    assert http.post("/tick", json={"now": "soon"}).status_code == 400
    assert http.post("/tick", json={"now": 1, "extra": 2}).status_code == 400
    assert http.post("/nowhere", json={}).status_code == 400
    assert http.get("/nowhere").status_code == 404
    for _ in range(2000):
        assert http.post("/orders", json={"orders": [{"id": 1}]}).status_code == 400
    assert router.state() == before
    assert http.post("/tick", json={"now": 5401.0}).status_code == 200
    assert http.post("/tick", json={"now": 5000.0}).status_code == 400  # never backwards


@pytest.mark.parametrize(("power_peg", "overfills"), [(True, True), (False, False)])
def test_2012_07_power_peg_overfills_only_when_its_flag_is_on(
    tmp_path: Path, exchange_url: str, power_peg: bool, overfills: bool
) -> None:
    router = Router(assemble("2012.07", tmp_path / "old"), exchange_url, {"power_peg": power_peg})
    try:
        for now in (5000.0, 5100.0):  # before the open: the legacy path's check
            router.http.post("/tick", json={"now": now})
        router.http.post("/orders", json={"orders": [parent(1, 500, rlp=True)]})
        for now in range(5401, 5411):
            router.http.post("/tick", json={"now": float(now)})
        state = router.state()
        assert (state["counters"]["smars_parent_overfill_shares"] > 0) is overfills
        warned = "Power Peg disabled" in router.log.read_text()
        assert warned is power_peg
    finally:
        router.stop()
