"""Tick-to-bar aggregation for the chart.

The feed streams quotes (trade ticks with ``last``/``size`` and bid/ask-only
updates); the chart needs OHLCV bars. :class:`BarAggregator` folds ticks into
fixed-period bars kept in one contiguous numpy structured array so the chart
can draw thousands of bars from a single array view without per-bar objects.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ['BAR_DTYPE', 'BarAggregator', 'TRADE_TICKS', 'fold_quote']

#: tick types that are trades (they shape bars and add volume)
TRADE_TICKS = ('trade', 'last')

#: Layout of one bar. ``time`` is the bar's start (epoch seconds, a multiple
#: of the period); the chart draws the bar over ``[time, time + period)``.
BAR_DTYPE = np.dtype([
    ('time', 'f8'),
    ('open', 'f8'),
    ('high', 'f8'),
    ('low', 'f8'),
    ('close', 'f8'),
    ('volume', 'f8'),
])


class BarAggregator:
    """Turn a stream of ticks into OHLCV bars of ``period_s`` seconds.

    Exists so the chart can build bars itself from the live quote stream
    (there is no history service): every tick goes through :meth:`update`
    and the chart redraws from :attr:`array`.

    Rules:

    * A tick whose ``ts`` falls in the current bar's period updates that bar.
      A tick past it opens a new bar starting at the period boundary that
      contains ``ts``; empty periods in between (gaps) are simply skipped,
      no flat filler bars are invented.
    * A tick older than the current bar (late/out-of-order delivery) is folded
      into the current bar rather than rewriting history.
    * Trades (``is_trade=True``) set OHLC and add ``size`` to the volume.
      Quote-only updates (``is_trade=False``, e.g. the bid/ask mid) never add
      volume, and only shape a bar that has seen no trade yet -- so a quiet
      market still draws bars, but once a trade prints in a period the bar
      reflects trades only (its OHLC restarts from that first trade).

    Storage: a preallocated buffer of ``capacity`` rows that doubles when full
    (no ring buffer: history is never dropped). :attr:`array` is a view into
    the buffer, so a view taken before a growth is stale afterwards -- re-read
    :attr:`array` after each update instead of holding on to it.
    """

    def __init__(self, period_s: float = 5.0, capacity: int = 100_000) -> None:
        if not period_s > 0:
            raise ValueError(f'period_s must be > 0, got {period_s!r}')
        if capacity < 1:
            raise ValueError(f'capacity must be >= 1, got {capacity!r}')
        self.period_s = float(period_s)
        self._buf = np.zeros(int(capacity), dtype=BAR_DTYPE)
        self._n = 0
        # whether the current (last) bar has seen at least one trade
        self._cur_has_trade = False

    # -- read side ---------------------------------------------------------
    @property
    def array(self) -> np.ndarray:
        """The filled bars, oldest first (a view into the internal buffer)."""
        return self._buf[:self._n]

    @property
    def capacity(self) -> int:
        """Rows currently allocated; grows (doubles) as bars are added."""
        return len(self._buf)

    def __len__(self) -> int:
        """Number of bars (including the forming one)."""
        return self._n

    @property
    def last(self) -> np.void | None:
        """The current (still forming) bar, or None before the first tick."""
        return self._buf[self._n - 1] if self._n else None

    def bar_start(self, ts: float) -> float:
        """Start of the period containing ``ts`` (used to align arrows etc.)."""
        return math.floor(ts / self.period_s) * self.period_s

    # -- write side --------------------------------------------------------
    def update(
        self,
        ts: float,
        price: float,
        size: float = 0.0,
        is_trade: bool = True,
    ) -> bool:
        """Fold one tick into the bars; return True if a new bar was opened.

        The return value lets the chart choose between redrawing just the
        last bar (False) and extending the history (True).
        """
        price = float(price)
        if not math.isfinite(price):
            return False
        start = self.bar_start(ts)

        if self._n == 0 or start > self._buf[self._n - 1]['time']:
            self._open_bar(start, price, size if is_trade else 0.0)
            self._cur_has_trade = bool(is_trade)
            return True

        bar = self._buf[self._n - 1]
        if is_trade:
            if not self._cur_has_trade:
                # first trade in a bar drawn from quotes: trades take over
                bar['open'] = bar['high'] = bar['low'] = bar['close'] = price
                self._cur_has_trade = True
            else:
                self._extend(bar, price)
            bar['volume'] += size
        elif not self._cur_has_trade:
            self._extend(bar, price)
        return False

    def load(self, bars: np.ndarray) -> None:
        """Replace the bars with ``bars`` (history, oldest first, BAR_DTYPE fields).

        Lets the chart open with a backfill instead of an empty plot; live ticks then extend
        the last loaded bar if they fall in its period.
        """
        n = len(bars)
        if n > len(self._buf):
            self._buf = np.zeros(max(n * 2, len(self._buf)), dtype=BAR_DTYPE)
        for name in BAR_DTYPE.names:
            self._buf[name][:n] = bars[name]
        self._n = n
        self._cur_has_trade = n > 0

    def clear(self) -> None:
        """Forget all bars (e.g. when the chart switches symbol)."""
        self._n = 0
        self._cur_has_trade = False

    # -- internals ---------------------------------------------------------
    @staticmethod
    def _extend(bar: np.void, price: float) -> None:
        if price > bar['high']:
            bar['high'] = price
        if price < bar['low']:
            bar['low'] = price
        bar['close'] = price

    def _open_bar(self, start: float, price: float, volume: float) -> None:
        if self._n == len(self._buf):
            grown = np.zeros(len(self._buf) * 2, dtype=BAR_DTYPE)
            grown[:self._n] = self._buf[:self._n]
            self._buf = grown
        self._buf[self._n] = (start, price, price, price, price, volume)
        self._n += 1


def fold_quote(agg: BarAggregator, quote: dict, now: float | None = None) -> bool:
    """Fold one quote (SPEC §2: its trade ticks, else its bid/ask mid) into ``agg``.

    The one rule for turning quotes into bars, shared by brokerd's per-symbol bar store and
    every chart, so bars built from the same quotes are the same everywhere. Returns True if
    the quote traded.
    """
    ts = quote.get('time') or now
    if ts is None:
        import time
        ts = time.time()
    traded = False
    for tick in quote.get('ticks') or ():
        if tick.get('type') in TRADE_TICKS and tick.get('price') is not None:
            agg.update(ts, tick['price'], tick.get('size') or 0.0, is_trade=True)
            traded = True
    bid, ask = quote.get('bid'), quote.get('ask')
    if not traded and _finite(bid) and _finite(ask):
        agg.update(ts, (bid + ask) / 2, is_trade=False)
    return traded


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
