"""The exchange simulator as a user's process: real HTTP, real refusals, nothing corrupted."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from knightwatch.sim.market import symbols

SEED = "5"


@pytest.fixture(scope="module")
def exchange() -> Iterator[httpx.Client]:
    process = subprocess.Popen(
        [sys.executable, "-m", "knightwatch.sim.exchange", "--port", "0", "--seed", SEED],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    port = json.loads(process.stdout.readline())["port"]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client
    process.terminate()
    assert process.wait(10) == 0
    process.stdout.close()


def snapshot(client: httpx.Client, symbol: str) -> tuple[Any, Any]:
    return client.get("/positions").json(), client.get(f"/book/{symbol}").json()


def a_symbol(client: httpx.Client) -> tuple[str, int]:
    name, price = next(iter(symbols(int(SEED)).items()))
    return name, price


def order(symbol: str, **changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "participant": "knight",
        "client_id": "c1",
        "symbol": symbol,
        "side": "buy",
        "quantity": 100,
        "limit_cents": 10**6,
        "tif": "ioc",
    }
    return {**base, **changes}


def test_orders_fill_against_the_street_and_positions_follow(exchange: httpx.Client) -> None:
    symbol, _ = a_symbol(exchange)
    answer = exchange.post("/orders", json={"orders": [order(symbol, quantity=300)]})
    assert answer.status_code == 200, answer.text
    [report] = answer.json()["reports"]
    assert report["filled"] == 300 and report["status"] == "filled"
    knight = exchange.get("/positions").json()["participants"]["knight"]
    assert knight["positions"][symbol] >= 300
    assert exchange.get("/health").text == "ok\n"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"orders": [{"quantity": -5}]}, "orders[0].participant"),
        ({"orders": [order("X", quantity=-5)]}, "orders[0].quantity"),
        ({"orders": [order("X", quantity=0)]}, "orders[0].quantity"),
        ({"orders": [order("X", quantity=True)]}, "orders[0].quantity"),
        ({"orders": [order("X", quantity=1.5)]}, "orders[0].quantity"),
        ({"orders": [order("X", limit_cents="100")]}, "orders[0].limit_cents"),
        ({"orders": [order("X", side="short")]}, "orders[0].side"),
        ({"orders": [order("X", extra=1)]}, "orders[0].extra"),
        ({"orders": []}, "orders"),
        ({"orders": [order("X")] * 10_001}, "orders"),
        ({}, "orders"),
    ],
)
def test_malformed_orders_are_refused_naming_where(
    exchange: httpx.Client, body: dict[str, object], where: str
) -> None:
    symbol, _ = a_symbol(exchange)
    before = snapshot(exchange, symbol)
    answer = exchange.post("/orders", json=body)
    assert answer.status_code == 400
    assert answer.json()["where"] == where, answer.json()
    assert snapshot(exchange, symbol) == before


def test_an_unknown_symbol_refuses_the_whole_batch(exchange: httpx.Client) -> None:
    symbol, _ = a_symbol(exchange)
    before = snapshot(exchange, symbol)
    answer = exchange.post("/orders", json={"orders": [order(symbol), order("ZZZZZZ")]})
    assert answer.status_code == 400
    assert answer.json()["where"] == "orders[1].symbol"
    assert "unknown symbol" in answer.json()["error"]
    assert snapshot(exchange, symbol) == before


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"", 400),
        (b'{"orders": NaN}', 400),
        (b"x" * (4 * 1024 * 1024 + 1), 413),
    ],
)
def test_bodies_that_are_not_json_or_too_big_are_refused(
    exchange: httpx.Client, body: bytes, status: int
) -> None:
    symbol, _ = a_symbol(exchange)
    before = snapshot(exchange, symbol)
    answer = exchange.post("/orders", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status
    assert "error" in answer.json()
    assert snapshot(exchange, symbol) == before


def test_unknown_paths_and_a_clock_going_back(exchange: httpx.Client) -> None:
    assert exchange.get("/nope").status_code == 404
    assert exchange.post("/nope", json={}).status_code == 404
    assert exchange.post("/clock", json={"now": 100.0}).status_code == 200
    back = exchange.post("/clock", json={"now": 50.0})
    assert back.status_code == 400 and back.json()["where"] == "now"
    assert exchange.get("/book/ZZZZZZ").status_code == 400


def test_a_flood_of_orders_is_served_in_order_and_conserves_everything(
    exchange: httpx.Client,
) -> None:
    symbol, _ = a_symbol(exchange)
    for i in range(1500):
        side = "buy" if i % 2 else "sell"
        limit = 10**6 if side == "buy" else 1
        body = {"orders": [order(symbol, client_id=f"f{i}", side=side, limit_cents=limit)]}
        assert exchange.post("/orders", json=body).status_code == 200
    for _ in range(200):
        assert exchange.post("/orders", content=b"[").status_code == 400
    participants = exchange.get("/positions").json()["participants"]
    assert sum(p["cash_cents"] for p in participants.values()) == 0
    assert sum(p["positions"].get(symbol, 0) for p in participants.values()) == 0
