"""One simulated trading day: the order flow into the routers, the clock forward, the book read.

The drill owns the clock. Each step it moves the exchange to the new
simulated time, hands every router the parent orders that arrived since the
last step (each parent goes to one node, in a fixed rotation), lets each
router work up to that time — one node after another, in name order — and
reads the firm's book back. Nothing runs between steps, so one seed gives
one day, however fast the machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from knightwatch.polling import wait_until
from knightwatch.sim.drill.links import ExchangeProcess, RouterLink
from knightwatch.sim.drill.outcome import Sample, ScenarioOutcome
from knightwatch.sim.drill.settings import DrillSettings
from knightwatch.sim.flow import ParentOrder

__all__ = ["Pacer", "RunawayWatch", "TradingDay", "steps"]

OnStep = Callable[[float], bool]
"""Called after each step with the simulated time; False stops the session."""
_BARRIER_TIMEOUT_S = 30.0


def steps(start: float, end: float, step: float) -> list[float]:
    """The simulated instants after ``start`` up to and including ``end``."""
    count = round((end - start) / step)
    return [start + step * (i + 1) for i in range(count)]


class Pacer:
    """Holds simulated time to ``speed`` simulated seconds per wall second (0: no pacing)."""

    def __init__(self, speed: float) -> None:
        self._speed = speed
        self._origin: tuple[float, float] | None = None

    def wait(self, t: float) -> None:
        """Sleep until simulated time ``t`` is due on the wall clock."""
        if self._speed <= 0:
            return
        if self._origin is None:
            self._origin = (t, time.monotonic())
            return
        sim0, wall0 = self._origin
        time.sleep(max(0.0, wall0 + (t - sim0) / self._speed - time.monotonic()))


class TradingDay:
    """The order flow of one seed, routed to a fleet's routers, step by step."""

    def __init__(
        self,
        settings: DrillSettings,
        exchange: ExchangeProcess,
        routers: Mapping[str, RouterLink],
        flow: Sequence[ParentOrder],
        outcome: ScenarioOutcome,
    ) -> None:
        self.settings = settings
        self.exchange = exchange
        self.routers = dict(routers)
        self.outcome = outcome
        self._pending = sorted(flow, key=lambda o: (o.at, o.id))
        self._next = 0
        self._nodes = settings.node_names
        self.now = 0.0
        self.gone: set[str] = set()
        """Nodes whose router no longer answers (halted or stopped)."""
        self.last_tick: dict[str, dict[str, Any]] = {}
        """Each router's answer to its latest tick."""
        self.barrier = False
        """After each step wait until every live router's agent acted on what the step did."""

    def preopen(self) -> None:
        """08:00 to the open, a simulated minute at a time: the routers' pre-open checks."""
        for t in steps(self.now, self.settings.open_s, self.settings.preopen_step_s):
            self._step(t)

    def session(self, until: float, on_step: OnStep | None = None, *, speed: float = 0.0) -> None:
        """Trade from now until ``until`` (or until ``on_step`` says stop)."""
        pacer = Pacer(speed)
        for t in steps(self.now, until, self.settings.tick_s):
            pacer.wait(t)
            self._step(t)
            if on_step is not None and not on_step(t):
                break

    def close_books(self) -> None:
        """Move the market to the end of the session and mark the firm's book there."""
        if self.now < self.settings.end_s:
            self.exchange.advance(self.settings.end_s)
            self.now = self.settings.end_s
        self._sample(self.now)
        firm = self.exchange.firm()
        out = self.outcome
        out.pnl_cents = int(firm.get("pnl_cents", 0))
        out.executions = int(firm.get("executions", 0))
        out.shares_traded = int(firm.get("shares_traded", 0))
        out.symbols_traded = int(firm.get("symbols_traded", 0))

    def replace_router(self, node: str, router: RouterLink) -> None:
        """Node ``node`` now answers at ``router`` (a restarted process)."""
        old = self.routers.get(node)
        if old is not None:
            old.close()
        self.routers[node] = router
        self.gone.discard(node)

    def router_states(self) -> dict[str, dict[str, Any]]:
        """Each live router's own view of itself."""
        states = {}
        for node, router in self.routers.items():
            state = router.state() if node not in self.gone else None
            if state is not None:
                states[node] = state
        return states

    def _step(self, t: float) -> None:
        self.exchange.advance(t)
        self.now = t
        arrivals = self._arrivals(t)
        for node in sorted(self.routers, key=self._nodes.index):
            if node in self.gone:
                continue
            router = self.routers[node]
            self.outcome.parent_orders += router.send(arrivals.get(node, []))
            worked = router.tick(t)
            if worked is None:
                self.gone.add(node)
                continue
            self.last_tick[node] = worked
            self.outcome.child_orders += int(worked.get("child_orders", 0))
            self.outcome.child_shares += int(worked.get("child_shares", 0))
        if self.barrier:
            self._wait_scraped(self._scrapes())
        self._sample(t)

    def _arrivals(self, t: float) -> dict[str, list[ParentOrder]]:
        by_node: dict[str, list[ParentOrder]] = {}
        while self._next < len(self._pending) and self._pending[self._next].at <= t:
            node = self._nodes[self._next % len(self._nodes)]
            by_node.setdefault(node, []).append(self._pending[self._next])
            self._next += 1
        return by_node

    def _scrapes(self) -> dict[str, int]:
        return {node: int(state.get("scrapes", 0)) for node, state in self.router_states().items()}

    def _wait_scraped(self, after: Mapping[str, int]) -> None:
        """Until the agent of every live router has acted on a scrape taken after the step.

        ``after`` is each router's scrape count read once every router had
        worked the step, so any scrape counted later reads the step's effects
        (counting them before the step was wrong: on a loaded machine several
        scrapes fall between that read and a router's tick). The agent
        evaluates its guards on a scrape, and halts, before it scrapes again —
        so once the second scrape after ``after`` is served, a guard the step
        tripped has acted (or the router is halted or gone); a third is margin.
        The next step sees the same world whatever the machine's speed.
        """

        def settled() -> bool:
            states = self.router_states()
            return all(
                node not in states
                or states[node].get("halted")
                or int(states[node].get("scrapes", 0)) >= count + 3
                for node, count in after.items()
            )

        wait_until(settled, timeout=_BARRIER_TIMEOUT_S, what="the agents to read the routers")

    def _sample(self, t: float) -> None:
        firm = self.exchange.firm()
        self.outcome.sample(
            Sample(
                t=t,
                child_orders=self.outcome.child_orders,
                gross_exposure_cents=int(firm.get("gross_exposure_cents", 0)),
                pnl_cents=int(firm.get("pnl_cents", 0)),
            )
        )


class RunawayWatch:
    """Finds the first step after which some router had filled more than its parents asked for.

    It reads the routers' answers to the step itself (never a later read, which
    a router halted in between could no longer give).

    The runaway began during that step; it is dated from the step's start, so a
    time to detection or to halt counted from it is an upper bound.
    """

    def __init__(self, day: TradingDay, out: ScenarioOutcome) -> None:
        self._day = day
        self._out = out

    def watch(self, t: float) -> None:
        """Look once, after the step at simulated time ``t``."""
        if "runaway_started_s" in self._out.facts:
            return
        for node, worked in sorted(self._day.last_tick.items()):
            if int(worked.get("overfill_shares", 0)) > 0:
                began = t - self._day.settings.tick_s  # sometime in this step: count from its start
                self._out.facts["runaway_started_s"] = began
                self._out.facts["runaway_node"] = node
                self._out.mark(began, "runaway", f"{node} fills beyond its parent orders")
                return
