"""The router: parent orders in, child orders out, one simulated second at a time.

The clock is driven: ``tick(now)`` works every open parent once for each
simulated second since the last tick, sends that tick's child orders to the
exchange in one batch and applies the reports. Which child orders a parent
gets is the release's strategy (``smars/strategy.py``); how much a counted
child may be is :class:`~smars.parents.ParentBook`'s.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable
from typing import Any

from smars import strategy
from smars.exchange import ExchangeClient
from smars.metrics import exposition
from smars.parents import Child, Parent, ParentBook

MAX_ORDERS = 10_000
MAX_QUANTITY = 10_000_000
OPEN_S = 5400.0
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_SYMBOL = re.compile(r"^[A-Z]{1,8}$")
_FIELDS = {"id", "symbol", "side", "quantity", "limit_cents", "rlp"}


class OrderError(Exception):
    """A request the router refuses; ``where`` names the field. Nothing was accepted."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


class HaltedError(Exception):
    """The router was halted: it takes no orders and does no work."""


def parse_orders(document: object) -> list[Parent]:
    """``{"orders": [...]}`` checked field by field; the parents, or OrderError."""
    if not isinstance(document, dict) or set(document) != {"orders"}:
        raise OrderError("body", 'expected an object with exactly one key, "orders"')
    orders = document["orders"]
    if not isinstance(orders, list) or not 1 <= len(orders) <= MAX_ORDERS:
        raise OrderError("orders", f"expected a list of 1 to {MAX_ORDERS} parent orders")
    parents = [_parent(order, f"orders[{i}]") for i, order in enumerate(orders)]
    ids = [p.id for p in parents]
    if len(set(ids)) != len(ids):
        raise OrderError("orders", "the same id twice in one batch")
    return parents


def _parent(order: object, where: str) -> Parent:
    if not isinstance(order, dict):
        raise OrderError(where, "expected an object")
    if set(order) != _FIELDS:
        extra, missing = sorted(set(order) - _FIELDS), sorted(_FIELDS - set(order))
        raise OrderError(where, f"unknown keys {extra}" if extra else f"missing keys {missing}")
    _check(
        isinstance(order["id"], str) and _ID.match(order["id"]),
        f"{where}.id",
        "1-64 [A-Za-z0-9_.:-]",
    )
    _check(
        isinstance(order["symbol"], str) and _SYMBOL.match(order["symbol"]),
        f"{where}.symbol",
        "1-8 capital letters",
    )
    _check(order["side"] in ("buy", "sell"), f"{where}.side", 'must be "buy" or "sell"')
    _check(
        _count(order["quantity"], MAX_QUANTITY),
        f"{where}.quantity",
        f"a whole number of shares from 1 to {MAX_QUANTITY}",
    )
    _check(
        _count(order["limit_cents"], 10**9),
        f"{where}.limit_cents",
        "a positive whole number of cents",
    )
    _check(isinstance(order["rlp"], bool), f"{where}.rlp", "must be true or false")
    return Parent(
        order["id"],
        order["symbol"],
        order["side"],
        order["quantity"],
        order["limit_cents"],
        order["rlp"],
    )


def _count(value: object, most: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= most


def _check(ok: object, where: str, message: str) -> None:
    if not ok:
        raise OrderError(where, message)


class Router:
    """One node's router: its parents, its counters, its exchange link, its halt."""

    def __init__(
        self,
        exchange: ExchangeClient,
        config: dict[str, Any],
        flags: Any,
        log: Callable[[str], None],
    ) -> None:
        self._exchange = exchange
        self._config = config
        self._flags = flags
        self._log = log
        self._lock = threading.Lock()
        self.halted = False
        self.scrapes = 0
        self._reset()

    def _reset(self) -> None:
        self.book = ParentBook()
        self.now: float | None = None
        self.counters: dict[str, float] = {}
        self._checked_minute = -1

    def reset(self) -> None:
        """A new trading day: no parents, counters at zero (a halt stays)."""
        with self._lock:
            self._reset()

    def accept(self, parents: list[Parent]) -> int:
        """Take new parent orders; how many were new."""
        with self._lock:
            if self.halted:
                raise HaltedError
            accepted = [p for p in parents if self.book.add(p)]
            self._add("smars_parent_orders_total", len(accepted))
            self._add("smars_parent_shares_total", sum(p.quantity for p in accepted))
            return len(accepted)

    def tick(self, now: float) -> dict[str, int]:
        """Work every open parent for each simulated second up to ``now``."""
        if not math.isfinite(now) or now < 0:
            raise OrderError("now", "must be a finite number of seconds, 0 or more")
        with self._lock:
            if self.halted:
                raise HaltedError
            if self.now is not None and now < self.now:
                raise OrderError("now", f"the clock is at {self.now}; it never goes back")
            seconds = 1 if self.now is None else int(now) - int(self.now)
            self.now = now
            if now < OPEN_S:
                self._preopen(now)
                return self._worked([], 0)
            children: list[Child] = []
            for _ in range(max(0, seconds)):
                for parent in self.book.working():
                    children += strategy.children(self.book, parent, self._config, self._flags)
            filled = self._send(children)
            self.counters["smars_child_order_rate"] = len(children) / max(1, seconds)
            return self._worked(children, filled)

    def _worked(self, children: list[Child], filled: int) -> dict[str, int]:
        """What a tick did, and the parents' state after it (overfill included)."""
        return {
            "child_orders": len(children),
            "child_shares": sum(c.quantity for c in children),
            "filled_shares": filled,
            "open_parents": len(self.book.working()),
            "overfill_shares": self.book.overfill(),
        }

    def _preopen(self, now: float) -> None:
        minute = int(now // 60)
        if minute != self._checked_minute:
            self._checked_minute = minute
            strategy.preopen(self._flags, self._log)

    def _send(self, children: list[Child]) -> int:
        if not children:
            return 0
        participant = str(self._config.get("participant", "knight"))
        parents = self.book.parents
        orders = [
            {
                "participant": participant,
                "client_id": f"{c.parent}-{i}",
                "symbol": parents[c.parent].symbol,
                "side": parents[c.parent].side,
                "quantity": c.quantity,
                "limit_cents": c.limit_cents,
                "tif": "ioc",
            }
            for i, c in enumerate(children)
        ]
        reports = self._exchange.orders(orders)
        filled = 0
        for child, report in zip(children, reports, strict=True):
            self.book.settle(child, int(report["filled"]))
            filled += int(report["filled"])
        self._add("smars_child_orders_total", len(children))
        self._add("smars_child_shares_sent_total", sum(c.quantity for c in children))
        self._add("smars_child_shares_filled_total", filled)
        self._add("smars_rlp_child_orders_total", sum(c.path == "rlp" for c in children))
        return filled

    def halt(self) -> int:
        """Block new orders and cancel the working ones; how many were cancelled."""
        with self._lock:
            self.halted = True
            cancelled = self.book.cancel_all()
            self._log(f"halted: {cancelled} working parent orders cancelled, no new orders taken")
            return cancelled

    def _add(self, name: str, amount: float) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def values(self) -> dict[str, float]:
        """Every counter and gauge as of now."""
        with self._lock:
            values = dict(self.counters)
            values["smars_parent_orders_open"] = len(self.book.working())
            values["smars_parent_overfill_shares"] = self.book.overfill()
            values["smars_halted"] = 1 if self.halted else 0
            return values

    def metrics(self) -> str:
        """The Prometheus exposition (and one more scrape counted)."""
        with self._lock:
            self.scrapes += 1
        return exposition(self.values())

    def state(self) -> dict[str, Any]:
        """The router's own view of itself, as JSON data."""
        values = self.values()
        with self._lock:
            return {
                "halted": self.halted,
                "scrapes": self.scrapes,
                "now": self.now,
                "parents": self.book.counts(),
                "counters": values,
            }


def load_json(body: bytes) -> object:
    """A request body as JSON (NaN and Infinity refused); OrderError if it is not JSON."""

    def refuse(name: str) -> object:
        raise ValueError(f"{name} is not allowed")

    try:
        return json.loads(body, parse_constant=refuse)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OrderError("body", f"not JSON: {exc}") from None
