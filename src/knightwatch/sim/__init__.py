"""The workload of the Knightmare drill, shipped with knightwatch.

* :mod:`.market` — a price-time order book per symbol, liquidity that
  replenishes, price impact, and every participant's positions and cash,
  marked to market (pure, no I/O);
* :mod:`.exchange` — that market as its own process, over HTTP;
* :mod:`.flow` — the parent orders of a trading day, from a seed;
* ``sources/`` — the SMARS order router as release sources (2012.07,
  2012.08 and 2012.08-reuse), assembled by :mod:`.sources` and deployed by
  knightwatch like any service;
* :mod:`.drill` — ``knightwatch drill knightmare`` and ``knightwatch demo``.
"""
