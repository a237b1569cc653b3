"""Synthetic bars for chart and order-mode tests."""
from __future__ import annotations

import numpy as np

from piker_ems.data._bars import BarAggregator

T0 = 1_700_000_000.0


def make_bars(n: int = 200, period: float = 5.0, seed: int = 1) -> np.ndarray:
    """``n`` bars of a seeded random walk around 100 (4 trades per bar)."""
    rng = np.random.default_rng(seed)
    agg = BarAggregator(period)
    price = 100.0
    for i in range(n * 4):
        price += rng.normal(0, 0.03)
        agg.update(T0 + i * period / 4, round(price, 2), size=1)
    return agg.array.copy()
