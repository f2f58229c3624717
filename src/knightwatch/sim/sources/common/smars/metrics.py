"""The router's counters and their Prometheus text exposition."""

from __future__ import annotations

COUNTERS = {
    "smars_parent_orders_total": "parent orders accepted",
    "smars_parent_shares_total": "shares of the parent orders accepted",
    "smars_child_orders_total": "child orders sent to the exchange",
    "smars_child_shares_sent_total": "shares of the child orders sent",
    "smars_child_shares_filled_total": "shares of the child orders filled",
    "smars_rlp_child_orders_total": "child orders of Retail Liquidity Program parents",
}
GAUGES = {
    "smars_parent_orders_open": "parent orders still working",
    "smars_parent_overfill_shares": "shares filled beyond their parent orders (must stay 0)",
    "smars_child_order_rate": "child orders per simulated second in the last tick",
    "smars_halted": "1 once the router was halted",
}


def exposition(values: dict[str, float]) -> str:
    """Prometheus text for every counter and gauge in ``values``."""
    lines = []
    for table, kind in ((COUNTERS, "counter"), (GAUGES, "gauge")):
        for name, help_text in table.items():
            family = name.removesuffix("_total") if kind == "counter" else name
            lines.append(f"# HELP {family} {help_text}")
            lines.append(f"# TYPE {family} {kind}")
            lines.append(f"{name} {values.get(name, 0)}")
    return "\n".join(lines) + "\n"
