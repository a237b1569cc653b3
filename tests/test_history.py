"""Chart backfill: the sim backend's history joins the live market on the tick grid."""
from __future__ import annotations

import numpy as np
import pytest
import trio

from piker_ems.brokers.sim import SimMarket
from piker_ems.brokers.sim._market import SimConfig
from piker_ems.data import fetch_history, open_feed
from piker_ems.data._bars import BarAggregator, fold_quote
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
        assert hist.bars['close'][-1] == last  # volatility 0: the market has not moved


async def _fold_until(feed, fqsn: str, agg: BarAggregator, through: float | None, t_end: float) -> None:
    """What a chart does with its feed: fold every quote newer than ``through`` into ``agg``,
    until a quote at or after ``t_end`` arrived."""
    while True:
        packet = await feed.stream.receive()
        quote = packet.get(fqsn)
        if quote is None:
            continue
        if through is None or quote['time'] > through:
            fold_quote(agg, quote)
        if quote['time'] >= t_end:
            return


@pytest.mark.trio
async def test_two_charts_of_a_symbol_get_the_same_bars(reg_addr, config_dir):
    """Issue 12 item 10: history is one per symbol. Chart A opens, loads history and builds
    live bars from its feed; chart B opens 2.5 bars later: B's history is A's bars, bar for
    bar (a fill seen in A sits on the same bar in B). Each opening used to get its own
    backfill anchored at its own moment: a different past."""
    write_config(config_dir, '[sim]\nseed = 5\nrate = 20\nvolatility = 3\n')
    fqsn = 'btcusd.sim'
    async with open_pikerd(reg_addr):
        async with open_feed(fqsn, subscriber='chart-a') as feed_a:
            with trio.fail_after(15):
                hist_a = await fetch_history(fqsn, 1.0, 200)
                a = BarAggregator(1.0)
                a.load(hist_a.bars)
                t0 = hist_a.through or feed_a.first_quotes[fqsn]['time']
                await _fold_until(feed_a, fqsn, a, hist_a.through, t0 + 2.5)
            async with open_feed(fqsn, subscriber='chart-b') as feed_b:
                with trio.fail_after(15):
                    hist_b = await fetch_history(fqsn, 1.0, 200)
                    b = BarAggregator(1.0)
                    b.load(hist_b.bars)
                    # both keep charting for another two bars
                    t_end = (hist_b.through or t0 + 2.5) + 2.0
                    await _fold_until(feed_a, fqsn, a, None, t_end)
                    await _fold_until(feed_b, fqsn, b, hist_b.through, t_end)
        # every bar both charts have closed is the same bar
        closed = min(a.array['time'][-1], b.array['time'][-1])
        bars_a = a.array[a.array['time'] < closed]
        bars_b = b.array[b.array['time'] < closed]
        common = np.intersect1d(bars_a['time'], bars_b['time'])
        assert len(common) >= 150
        assert np.array_equal(bars_a[np.isin(bars_a['time'], common)],
                              bars_b[np.isin(bars_b['time'], common)])
        assert bars_a['time'][-1] > hist_a.bars['time'][-1] + 1  # live bars are compared too
        assert hist_a.through is not None and hist_b.through > hist_a.through


@pytest.mark.trio
async def test_history_without_a_feed_is_the_backfill(reg_addr, config_dir):
    write_config(config_dir, '[sim]\nseed = 4\nvolatility = 0\n')
    async with open_pikerd(reg_addr):
        with trio.fail_after(10):
            hist = await fetch_history('es.sim', 1.0, 50)
        assert len(hist) == 50 and hist.through is None
