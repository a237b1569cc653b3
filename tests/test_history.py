"""Chart backfill: the sim backend's history joins the live market on the tick grid."""
from __future__ import annotations

import numpy as np
import pytest
import trio

from piker_ems.brokers.sim import SimMarket
from piker_ems.brokers.sim._market import SimConfig
from piker_ems.data import fetch_history, open_feed
from piker_ems.data._bars import BarAggregator
from piker_ems.service import open_pikerd

from conftest import write_config


def test_sim_history_is_on_grid_consistent_and_ends_at_last():
    m = SimMarket('btcusd', SimConfig(seed=1, tick_size=0.25))
    for _ in range(50):
        m.step()
    bars = m.history(5.0, 300, end=1_000_000.0)
    assert len(bars) == 300
    t, o, h, l, c, v = map(np.array, zip(*bars))
    assert np.all(np.diff(t) == 5.0) and t[-1] + 5.0 == (1_000_000.0 // 5) * 5
    assert np.all((h >= np.maximum(o, c)) & (l <= np.minimum(o, c)) & (l > 0))
    for col in (o, h, l, c):
        assert np.allclose(np.round(col / 0.25) * 0.25, col)
    assert np.all(o[1:] == c[:-1])           # no gaps between bars
    assert c[-1] == m.last                   # joins the live market
    same = SimMarket('btcusd', SimConfig(seed=1, tick_size=0.25))
    for _ in range(50):
        same.step()
    assert same.history(5.0, 300, end=1_000_000.0) == bars  # deterministic


def test_aggregator_load_then_live_ticks_extend_the_last_bar():
    agg = BarAggregator(5.0)
    hist = np.array([(100.0, 1, 2, 0.5, 1.5, 10), (105.0, 1.5, 1.6, 1.4, 1.5, 3)], dtype=agg.array.dtype)
    agg.load(hist)
    assert len(agg) == 2
    assert agg.update(107.0, 1.9, 1.0) is False      # same period as the last loaded bar
    assert agg.array[-1]['high'] == 1.9 and agg.array[-1]['volume'] == 4
    assert agg.update(110.0, 1.0, 1.0) is True


@pytest.mark.trio
async def test_fetch_history_through_brokerd(reg_addr, config_dir):
    write_config(config_dir, '[sim]\nseed = 4\nvolatility = 0\n')
    async with open_pikerd(reg_addr):
        async with open_feed('es.sim') as feed:
            last = feed.first_quotes['es.sim']['last']
            with trio.fail_after(5):
                hist = await fetch_history('es.sim', 1.0, 120)
        assert len(hist) == 120
        assert hist['close'][-1] == last  # volatility 0: the market has not moved
