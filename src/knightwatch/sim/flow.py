"""The parent orders of one trading day, from a seed.

Institutional parents (5,000 to 50,000 shares) arrive through the session;
retail parents (100 to 2,000 shares), eligible for the Retail Liquidity
Program (``rlp``), arrive from the open. Each has a limit 3 % through the
symbol's starting price, so a working router fills it within seconds.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

__all__ = ["ParentOrder", "order_flow"]


@dataclass(frozen=True)
class ParentOrder:
    """One parent order a client sends to SMARS."""

    id: str
    at: float
    symbol: str
    side: str
    quantity: int
    limit_cents: int
    rlp: bool

    def to_json(self) -> dict[str, Any]:
        """The order as the router's ``POST /orders`` takes it."""
        return {
            "id": self.id,
            "symbol": self.symbol,
            "side": self.side,
            "quantity": self.quantity,
            "limit_cents": self.limit_cents,
            "rlp": self.rlp,
        }


def order_flow(
    seed: int,
    symbols: dict[str, int],
    *,
    start: float = 5400.0,
    end: float = 8100.0,
    institutional_per_minute: float = 6.0,
    retail_per_minute: float = 4.7,
) -> list[ParentOrder]:
    """Every parent order of the day between ``start`` and ``end``, sorted by time."""
    digest = hashlib.sha256(f"{seed}:flow".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))  # noqa: S311 - a simulation, seeded
    names = sorted(symbols)
    arrivals: list[tuple[float, bool]] = []
    for rate, retail in ((institutional_per_minute, False), (retail_per_minute, True)):
        t = start
        while rate > 0:
            t += rng.expovariate(rate / 60.0)
            if t >= end:
                break
            arrivals.append((t, retail))
    arrivals.sort()
    orders = []
    for number, (at, retail) in enumerate(arrivals, start=1):
        symbol = rng.choice(names)
        side = rng.choice(("buy", "sell"))
        quantity = rng.randrange(1, 21) * 100 if retail else rng.randrange(50, 501) * 100
        price = symbols[symbol]
        through = max(1, round(price * 0.03))
        limit = price + through if side == "buy" else max(1, price - through)
        orders.append(
            ParentOrder(f"P{number:06d}", round(at, 3), symbol, side, quantity, limit, retail)
        )
    return orders
