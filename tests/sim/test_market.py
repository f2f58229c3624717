"""The exchange's market, in process: conservation, matching rules, determinism, refusals."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knightwatch.sim.market import STREET, ChildOrder, Market, MarketInputError, symbols

SEED = 11
NAMES = list(symbols(SEED, 4))


@st.composite
def actions(draw: st.DrawFn) -> list[tuple[str, object]]:
    """A random day: orders from three participants, cancels and clock moves."""
    steps: list[tuple[str, object]] = []
    now = 0.0
    for index in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["order", "order", "order", "clock", "cancel"]))
        if kind == "clock":
            now += draw(st.floats(0, 120, allow_nan=False))
            steps.append(("clock", now))
        elif kind == "cancel":
            steps.append(("cancel", draw(st.lists(st.integers(1, 200), max_size=5))))
        else:
            symbol = draw(st.sampled_from(NAMES))
            order = ChildOrder(
                participant=draw(st.sampled_from(["knight", "fund", "retail"])),
                client_id=f"c{index}",
                symbol=symbol,
                side=draw(st.sampled_from(["buy", "sell"])),
                quantity=draw(st.integers(1, 30_000)),
                limit_cents=draw(st.integers(1, 20_000)),
                tif=draw(st.sampled_from(["ioc", "day"])),
            )
            steps.append(("order", order))
    return steps


def play(market: Market, steps: list[tuple[str, object]]) -> list[object]:
    answers: list[object] = []
    for kind, value in steps:
        if kind == "clock":
            assert isinstance(value, float)
            market.advance(value)
        elif kind == "cancel":
            assert isinstance(value, list)
            answers.append(market.cancel("knight", value))
        else:
            assert isinstance(value, ChildOrder)
            answers.extend(r.to_json() for r in market.submit([value]))
    return answers


@settings(max_examples=60, deadline=None)
@given(actions())
def test_shares_and_cash_are_conserved_and_books_never_cross(
    steps: list[tuple[str, object]],
) -> None:
    market = Market(SEED, 4)
    play(market, steps)
    participants = market.positions()["participants"]
    assert sum(p["cash_cents"] for p in participants.values()) == 0
    for symbol in NAMES:
        assert sum(p["positions"].get(symbol, 0) for p in participants.values()) == 0
        book = market.book(symbol)
        if book["bids"] and book["asks"]:
            assert book["bids"][0][0] < book["asks"][0][0]


@settings(max_examples=60, deadline=None)
@given(actions())
def test_fills_respect_the_limit_and_add_up(steps: list[tuple[str, object]]) -> None:
    market = Market(SEED, 4)
    orders = {o.client_id: o for k, o in steps if k == "order" and isinstance(o, ChildOrder)}
    for report in play(market, steps):
        if not isinstance(report, dict):
            continue
        order = orders[report["client_id"]]
        assert report["filled"] == sum(f["quantity"] for f in report["fills"])
        assert report["filled"] + report["leaves"] == order.quantity
        for fill in report["fills"]:
            if order.side == "buy":
                assert fill["price_cents"] <= order.limit_cents
            else:
                assert fill["price_cents"] >= order.limit_cents
        prices = [f["price_cents"] for f in report["fills"]]
        assert prices == sorted(prices, reverse=order.side == "sell")  # best price first


@settings(max_examples=30, deadline=None)
@given(actions())
def test_one_seed_one_market(steps: list[tuple[str, object]]) -> None:
    first, second = Market(SEED, 4), Market(SEED, 4)
    assert play(first, steps) == play(second, steps)
    assert first.positions() == second.positions()


def test_time_priority_at_one_price() -> None:
    market = Market(SEED, 4)
    symbol = NAMES[0]
    price = market.book(symbol)["bids"][0][0]
    first = ChildOrder("fund", "a", symbol, "buy", 100, price, "day")
    second = ChildOrder("retail", "b", symbol, "buy", 100, price, "day")
    market.submit([first, second])
    ask = market.book(symbol)["asks"][0][0]
    depth = sum(q for p, q in market.book(symbol)["bids"] if p == price)
    seller = ChildOrder("knight", "s", symbol, "sell", depth - 100, price, "ioc")
    market.submit([seller])  # the street's older orders and then the fund's go first
    positions = market.positions()["participants"]
    assert positions["fund"]["positions"].get(symbol) == 100
    assert "retail" not in positions  # behind the fund in time: never reached
    assert ask > price


def test_a_runaway_buyer_pushes_the_price_and_loses_money() -> None:
    market = Market(SEED, 4)
    symbol = NAMES[0]
    start = market.book(symbol)["fair_cents"]
    for second in range(600):
        market.advance(float(second))
        burst = [
            ChildOrder("knight", f"{second}-{i}", symbol, "buy", 1000, 2 * start) for i in range(5)
        ]
        market.submit(burst)
    knight = market.positions()["participants"]["knight"]
    assert knight["positions"][symbol] > 0
    assert market.book(symbol)["fair_cents"] > start
    assert knight["pnl_cents"] < 0
    assert market.positions()["participants"][STREET]["pnl_cents"] > 0


@pytest.mark.parametrize(
    ("order", "where"),
    [
        (ChildOrder("knight", "x", "NOPE", "buy", 100, 100), "orders[1].symbol"),
        (ChildOrder("knight", "x", NAMES[0], "buy", 0, 100), "orders[1].quantity"),
        (ChildOrder("knight", "x", NAMES[0], "buy", -5, 100), "orders[1].quantity"),
        (ChildOrder("knight", "x", NAMES[0], "buy", 100, 0), "orders[1].limit_cents"),
        (ChildOrder(STREET, "x", NAMES[0], "buy", 100, 100), "orders[1].participant"),
    ],
)
def test_a_bad_order_refuses_the_whole_batch_and_changes_nothing(
    order: ChildOrder, where: str
) -> None:
    market = Market(SEED, 4)
    market.submit([ChildOrder("fund", "warm", NAMES[0], "buy", 50, 99_999)])
    before = copy.deepcopy((market.positions(), [market.book(s) for s in NAMES]))
    good = ChildOrder("knight", "ok", NAMES[0], "buy", 100, 99_999)
    with pytest.raises(MarketInputError) as refused:
        market.submit([good, order])
    assert refused.value.where == where
    assert (market.positions(), [market.book(s) for s in NAMES]) == before


def test_the_clock_never_goes_back() -> None:
    market = Market(SEED, 4)
    market.advance(10.0)
    with pytest.raises(MarketInputError, match="at or after 10"):
        market.advance(5.0)
    assert market.now == 10.0
