"""The exchange's market: an order book per symbol, the market maker, and everyone's book.

Prices are integer cents, quantities integer shares, cash integer cents, so
what one participant gains another loses exactly: for every symbol the
positions of all participants sum to 0, and so does everyone's cash.

Each symbol has a *fundamental* price (a random walk, one step per simulated
second, from a random stream of its own) and an *impact*: aggressive
volume pushes it (buying up, selling down) and it decays with a half-life.
The market maker, ``street``, quotes :data:`LEVELS` price levels each side
around the fair price (fundamental plus impact) and replenishes them to
:data:`DEPTH` shares once a simulated second has passed since it last
quoted; within one second an aggressive order walks the book, so a large
order gets worse prices. Symbols are brought up to date lazily (only when an
order, a book or a mark needs them); each symbol consumes one random draw
per simulated second whenever that happens, so the result does not depend
on when it is computed.

A position is marked at the fundamental: shares bought by pushing the price
up are worth the undisturbed price, so a runaway that keeps buying at the
offer loses money.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from knightwatch.errors import InvalidInputError

__all__ = [
    "DEPTH",
    "LEVELS",
    "STREET",
    "ChildOrder",
    "Market",
    "MarketInputError",
    "OrderReport",
    "symbols",
]

STREET = "street"
"""The market maker: it owns every order the market replenishes."""
LEVELS = 5
DEPTH = 2000
"""Shares the street shows at each of its price levels once replenished."""
SPREAD = 0.0005
"""Half the street's spread, and the distance between its levels, as a fraction of the price."""
IMPACT_PER_SHARE = 3e-7
"""How far one aggressive share pushes the fair price (a fraction): 100k shares, 3 %."""
IMPACT_HALF_LIFE_S = 300.0
VOLATILITY = 0.0002
"""Standard deviation of the fundamental's step per simulated second (a fraction)."""
MAX_QUANTITY = 10_000_000
Side = Literal["buy", "sell"]


class MarketInputError(InvalidInputError):
    """An order, a cancel or a clock move the market refuses; nothing was changed."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


def _stream(seed: int, name: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))  # noqa: S311 - a simulation, seeded


def symbols(seed: int, count: int = 154) -> dict[str, int]:
    """``count`` distinct tickers of 3 or 4 letters, each with a starting price in cents."""
    rng = _stream(seed, "symbols")
    names: dict[str, int] = {}
    while len(names) < count:
        size = rng.choice((3, 4))
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(size))
        if name not in names and name != "KCG":
            names[name] = rng.randrange(1000, 10001)
    return dict(sorted(names.items()))


@dataclass(frozen=True)
class ChildOrder:
    """One order as the exchange receives it (already checked for shape)."""

    participant: str
    client_id: str
    symbol: str
    side: Side
    quantity: int
    limit_cents: int
    tif: Literal["ioc", "day"] = "ioc"


@dataclass
class OrderReport:
    """What happened to one order: its fills and what is left."""

    client_id: str
    order_id: int
    status: str
    filled: int
    leaves: int
    fills: list[tuple[int, int]]

    def to_json(self) -> dict[str, Any]:
        """The report as the exchange answers it."""
        return {
            "client_id": self.client_id,
            "order_id": self.order_id,
            "status": self.status,
            "filled": self.filled,
            "leaves": self.leaves,
            "fills": [{"price_cents": p, "quantity": q} for p, q in self.fills],
        }


@dataclass
class _Resting:
    order_id: int
    participant: str
    quantity: int


@dataclass
class _Account:
    cash_cents: int = 0
    positions: dict[str, int] = field(default_factory=dict)
    executions: int = 0
    shares_traded: int = 0
    symbols: set[str] = field(default_factory=set)


class _Book:
    """One symbol: its prices, its two sides (price level → FIFO queue), its street orders."""

    def __init__(self, seed: int, symbol: str, start_cents: int) -> None:
        self.symbol = symbol
        self.rng = _stream(seed, symbol)
        self.fundamental = float(start_cents)
        self.impact = 0.0
        self.seconds = 0
        self.quoted_at = -1
        self.bids: dict[int, deque[_Resting]] = {}
        self.asks: dict[int, deque[_Resting]] = {}

    def fair(self) -> float:
        return self.fundamental * (1.0 + self.impact)

    def catch_up(self, now: float) -> None:
        """Walk the fundamental and decay the impact up to whole second ``now``."""
        target = int(now)
        elapsed = target - self.seconds
        if elapsed <= 0:
            return
        for _ in range(elapsed):
            self.fundamental *= math.exp(VOLATILITY * self.rng.gauss(0.0, 1.0))
        self.fundamental = max(self.fundamental, 100.0)
        self.impact *= 0.5 ** (elapsed / IMPACT_HALF_LIFE_S)
        self.seconds = target

    def side(self, side: Side) -> dict[int, deque[_Resting]]:
        return self.bids if side == "buy" else self.asks

    def best(self, side: Side) -> int | None:
        levels = self.side(side)
        if not levels:
            return None
        return max(levels) if side == "buy" else min(levels)


class Market:
    """Every symbol's book and every participant's account, moved by orders and the clock."""

    def __init__(self, seed: int, count: int = 154) -> None:
        self.seed = seed
        self.now = 0.0
        self._next_id = 1
        self._books = {s: _Book(seed, s, p) for s, p in symbols(seed, count).items()}
        self._accounts: dict[str, _Account] = {}
        self._orders: dict[int, tuple[str, Side, int]] = {}
        """Resting orders: id → (symbol, side, price)."""

    @property
    def symbol_names(self) -> list[str]:
        """Every listed symbol, sorted."""
        return list(self._books)

    # -- the clock ----------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Move the market to simulated time ``now`` (never backwards)."""
        if not math.isfinite(now) or now < self.now:
            raise MarketInputError("now", f"must be a time at or after {self.now} (got {now})")
        self.now = now

    # -- orders -------------------------------------------------------------------------

    def submit(self, orders: list[ChildOrder]) -> list[OrderReport]:
        """Check every order, then match them in order; one report each."""
        for index, order in enumerate(orders):
            self._check(order, f"orders[{index}]")
        return [self._match(order) for order in orders]

    def cancel(self, participant: str, order_ids: list[int]) -> tuple[list[int], list[int]]:
        """Cancel ``participant``'s resting orders; (cancelled, unknown) ids."""
        cancelled, unknown = [], []
        for order_id in order_ids:
            where = self._orders.get(order_id)
            if where is None or not self._remove(order_id, participant, where):
                unknown.append(order_id)
            else:
                cancelled.append(order_id)
        return cancelled, unknown

    def _check(self, order: ChildOrder, where: str) -> None:
        if order.symbol not in self._books:
            raise MarketInputError(f"{where}.symbol", f"unknown symbol {order.symbol!r}")
        if order.participant == STREET:
            raise MarketInputError(f"{where}.participant", "'street' is the market maker's own")
        if not 0 < order.quantity <= MAX_QUANTITY:
            raise MarketInputError(
                f"{where}.quantity", f"must be from 1 to {MAX_QUANTITY} (got {order.quantity})"
            )
        if order.limit_cents <= 0:
            raise MarketInputError(f"{where}.limit_cents", "must be a positive number of cents")

    def _match(self, order: ChildOrder) -> OrderReport:
        book = self._fresh(order.symbol)
        order_id = self._next_id
        self._next_id += 1
        fills = self._take(book, order)
        filled = sum(q for _, q in fills)
        leaves = order.quantity - filled
        if order.participant != STREET and filled:
            signed = filled if order.side == "buy" else -filled
            book.impact += IMPACT_PER_SHARE * signed
        status = "filled" if leaves == 0 else ("partial" if filled else "expired")
        if leaves and order.tif == "day":
            self._rest(book, order.side, order.limit_cents, order_id, order.participant, leaves)
            status = "resting"
        return OrderReport(order.client_id, order_id, status, filled, leaves, fills)

    def _take(self, book: _Book, order: ChildOrder) -> list[tuple[int, int]]:
        """Cross ``order`` against the other side, best price first, oldest first."""
        opposite: Side = "sell" if order.side == "buy" else "buy"
        levels = book.side(opposite)
        wanted = order.quantity
        fills: list[tuple[int, int]] = []
        while wanted and levels:
            price = book.best(opposite)
            assert price is not None
            if (order.side == "buy" and price > order.limit_cents) or (
                order.side == "sell" and price < order.limit_cents
            ):
                break
            queue = levels[price]
            while wanted and queue:
                maker = queue[0]
                quantity = min(wanted, maker.quantity)
                self._trade(book.symbol, order.side, order.participant, maker, price, quantity)
                wanted -= quantity
                maker.quantity -= quantity
                if maker.quantity == 0:
                    queue.popleft()
                    self._orders.pop(maker.order_id, None)
                if not fills or fills[-1][0] != price:
                    fills.append((price, quantity))
                else:
                    fills[-1] = (price, fills[-1][1] + quantity)
            if not queue:
                del levels[price]
        return fills

    def _trade(
        self, symbol: str, side: Side, taker: str, maker: _Resting, price: int, quantity: int
    ) -> None:
        sign = 1 if side == "buy" else -1
        for who, direction in ((taker, sign), (maker.participant, -sign)):
            account = self._accounts.setdefault(who, _Account())
            account.positions[symbol] = account.positions.get(symbol, 0) + direction * quantity
            account.cash_cents -= direction * quantity * price
            account.executions += 1
            account.shares_traded += quantity
            account.symbols.add(symbol)

    def _rest(
        self, book: _Book, side: Side, price: int, order_id: int, participant: str, quantity: int
    ) -> None:
        book.side(side).setdefault(price, deque()).append(_Resting(order_id, participant, quantity))
        self._orders[order_id] = (book.symbol, side, price)

    def _remove(self, order_id: int, participant: str, where: tuple[str, Side, int]) -> bool:
        symbol, side, price = where
        levels = self._books[symbol].side(side)
        queue = levels.get(price, deque())
        for resting in queue:
            if resting.order_id == order_id:
                if resting.participant != participant:
                    return False
                queue.remove(resting)
                if not queue:
                    del levels[price]
                del self._orders[order_id]
                return True
        return False

    # -- the market maker ---------------------------------------------------------------

    def _fresh(self, symbol: str) -> _Book:
        """``symbol``'s book as of now: prices caught up, the street's quotes renewed."""
        book = self._books[symbol]
        book.catch_up(self.now)
        if book.quoted_at < book.seconds:
            self._requote(book)
            book.quoted_at = book.seconds
        return book

    def _requote(self, book: _Book) -> None:
        for side in ("buy", "sell"):
            levels = book.side(side)
            for price in list(levels):
                queue = deque(r for r in levels[price] if r.participant != STREET)
                for resting in levels[price]:
                    if resting.participant == STREET:
                        self._orders.pop(resting.order_id, None)
                if queue:
                    levels[price] = queue
                else:
                    del levels[price]
        fair = book.fair()
        step = max(1, round(fair * SPREAD))
        best_bid = max(1, math.floor(fair) - step)
        best_ask = max(best_bid + 1, math.ceil(fair) + step)
        top_bid, top_ask = book.best("buy"), book.best("sell")
        for level in range(LEVELS):
            bid, ask = best_bid - level * step, best_ask + level * step
            if bid > 0 and (top_ask is None or bid < top_ask):
                self._street_order(book, "buy", bid)
            if top_bid is None or ask > top_bid:
                self._street_order(book, "sell", ask)

    def _street_order(self, book: _Book, side: Side, price: int) -> None:
        order_id = self._next_id
        self._next_id += 1
        self._rest(book, side, price, order_id, STREET, DEPTH)

    # -- what everyone holds ------------------------------------------------------------

    def positions(self) -> dict[str, Any]:
        """Every participant's cash, positions and value marked at the fundamental."""
        participants = {}
        for who in sorted(self._accounts):
            account = self._accounts[who]
            value = gross = 0
            for symbol, shares in account.positions.items():
                price = self._mark(symbol)
                value += shares * price
                gross += abs(shares) * price
            participants[who] = {
                "cash_cents": account.cash_cents,
                "positions": {s: n for s, n in sorted(account.positions.items()) if n},
                "market_value_cents": value,
                "pnl_cents": account.cash_cents + value,
                "gross_exposure_cents": gross,
                "executions": account.executions,
                "shares_traded": account.shares_traded,
                "symbols_traded": len(account.symbols),
            }
        return {"now": self.now, "participants": participants}

    def _mark(self, symbol: str) -> int:
        book = self._books[symbol]
        book.catch_up(self.now)
        return round(book.fundamental)

    def book(self, symbol: str) -> dict[str, Any]:
        """One symbol's book: price levels with their total shares, and its prices."""
        if symbol not in self._books:
            raise MarketInputError("symbol", f"unknown symbol {symbol!r}")
        book = self._fresh(symbol)
        return {
            "symbol": symbol,
            "bids": [[p, sum(r.quantity for r in book.bids[p])] for p in sorted(book.bids)[::-1]],
            "asks": [[p, sum(r.quantity for r in book.asks[p])] for p in sorted(book.asks)],
            "fundamental_cents": round(book.fundamental),
            "fair_cents": round(book.fair()),
        }
