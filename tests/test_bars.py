"""Tick -> OHLCV bar aggregation (piker_ems.data._bars)."""
import numpy as np
import pytest

from piker_ems.data._bars import BAR_DTYPE, BarAggregator


def bars(agg):
    return [tuple(float(v) for v in b) for b in agg.array]


def test_empty():
    agg = BarAggregator()
    assert len(agg) == 0
    assert agg.array.dtype == BAR_DTYPE
    assert agg.array.shape == (0,)
    assert agg.last is None


def test_ohlc_and_volume_within_one_bar():
    agg = BarAggregator(period_s=5.0)
    assert agg.update(100.0, 10.0, 1) is True      # opens the bar
    assert agg.update(101.0, 12.0, 2) is False
    assert agg.update(102.5, 9.0, 3) is False
    assert agg.update(104.999, 11.0, 4) is False
    assert bars(agg) == [(100.0, 10.0, 12.0, 9.0, 11.0, 10.0)]


def test_bar_boundaries_aligned_to_period():
    agg = BarAggregator(period_s=5.0)
    agg.update(103.0, 10.0, 1)    # bar [100, 105)
    agg.update(105.0, 11.0, 1)    # exactly on the boundary: new bar [105, 110)
    agg.update(109.9, 12.0, 1)
    agg.update(110.0, 13.0, 1)
    t = agg.array['time'].tolist()
    assert t == [100.0, 105.0, 110.0]
    assert bars(agg)[1] == (105.0, 11.0, 12.0, 11.0, 12.0, 2.0)


def test_gap_starts_new_bar_at_containing_boundary():
    agg = BarAggregator(period_s=5.0)
    agg.update(100.0, 10.0, 1)
    agg.update(137.3, 14.0, 2)   # 6 empty periods skipped, no filler bars
    assert agg.array['time'].tolist() == [100.0, 135.0]
    assert bars(agg)[1] == (135.0, 14.0, 14.0, 14.0, 14.0, 2.0)


def test_late_tick_folds_into_current_bar():
    agg = BarAggregator(period_s=5.0)
    agg.update(100.0, 10.0, 1)
    agg.update(106.0, 11.0, 1)
    agg.update(101.0, 15.0, 1)   # late: belongs to the first bar's period
    assert len(agg) == 2
    assert bars(agg)[0] == (100.0, 10.0, 10.0, 10.0, 10.0, 1.0)
    assert bars(agg)[1] == (105.0, 11.0, 15.0, 11.0, 15.0, 2.0)


def test_quote_only_updates_draw_bars_without_volume():
    agg = BarAggregator(period_s=5.0)
    assert agg.update(100.0, 10.0, is_trade=False) is True
    agg.update(101.0, 10.5, size=99, is_trade=False)   # size ignored for quotes
    agg.update(102.0, 9.5, is_trade=False)
    assert bars(agg) == [(100.0, 10.0, 10.5, 9.5, 9.5, 0.0)]


def test_first_trade_takes_over_a_quote_bar():
    agg = BarAggregator(period_s=5.0)
    agg.update(100.0, 10.0, is_trade=False)
    agg.update(101.0, 13.0, is_trade=False)
    agg.update(102.0, 11.0, size=2)                     # trades take over
    agg.update(103.0, 20.0, is_trade=False)             # quotes now ignored
    agg.update(104.0, 11.5, size=1)
    assert bars(agg) == [(100.0, 11.0, 11.5, 11.0, 11.5, 3.0)]


def test_quotes_ignored_once_bar_has_trades():
    agg = BarAggregator(period_s=5.0)
    agg.update(100.0, 10.0, 1)
    agg.update(101.0, 50.0, is_trade=False)
    agg.update(102.0, 1.0, is_trade=False)
    assert bars(agg) == [(100.0, 10.0, 10.0, 10.0, 10.0, 1.0)]
    # ... but a quote opening the next period does start a bar
    assert agg.update(105.0, 10.2, is_trade=False) is True
    assert bars(agg)[1] == (105.0, 10.2, 10.2, 10.2, 10.2, 0.0)


def test_growth_past_capacity_keeps_history():
    agg = BarAggregator(period_s=1.0, capacity=4)
    for i in range(37):
        agg.update(float(i), 100.0 + i, size=1)
        agg.update(i + 0.5, 100.0 + i + 0.25, size=1)
    assert len(agg) == 37
    assert agg.capacity >= 37
    a = agg.array
    np.testing.assert_array_equal(a['time'], np.arange(37, dtype=float))
    np.testing.assert_array_equal(a['open'], 100.0 + np.arange(37))
    np.testing.assert_array_equal(a['close'], 100.25 + np.arange(37))
    np.testing.assert_array_equal(a['volume'], np.full(37, 2.0))


def test_array_is_view_and_last_bar_updates_in_place():
    agg = BarAggregator(period_s=5.0, capacity=16)
    agg.update(0.0, 1.0, 1)
    view = agg.array
    agg.update(1.0, 2.0, 1)
    assert view['close'][0] == 2.0      # a view, not a copy
    assert agg.last['high'] == 2.0


def test_non_finite_prices_ignored_and_bad_args():
    agg = BarAggregator()
    assert agg.update(0.0, float('nan')) is False
    assert len(agg) == 0
    with pytest.raises(ValueError):
        BarAggregator(period_s=0)
    with pytest.raises(ValueError):
        BarAggregator(capacity=0)


def test_clear_and_bar_start():
    agg = BarAggregator(period_s=60.0)
    assert agg.bar_start(125.0) == 120.0
    agg.update(125.0, 1.0)
    agg.clear()
    assert len(agg) == 0
    agg.update(10.0, 2.0)
    assert agg.array['time'].tolist() == [0.0]
