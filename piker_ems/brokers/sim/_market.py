"""A seeded synthetic market: one random-walk order book top per symbol.

Prices are kept as whole numbers of ticks so every bid, ask and print lies exactly on the tick
grid and the spread is always a whole number (>= 1) of ticks. The same seed, symbol and config
give the same sequence of quotes.
"""
from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ...config import load_config
from ...symbols import tick_digits


@dataclass(frozen=True)
class SimConfig:
    """Knobs of one simulated symbol (``[sim]`` and ``[sim.symbols.<name>]`` in the config)."""

    seed: int = 0
    rate: float = 20.0            # quote updates per second
    tick_size: float = 0.01
    lot_size: float = 1.0
    start_price: float | None = None  # None: derived from the symbol name
    volatility: float = 2.0       # std dev of the mid move per update, in ticks
    max_spread: int = 3           # spread is 1..max_spread ticks
    trade_prob: float = 0.35      # chance of a trade print per update

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError('sim rate must be > 0 updates per second')
        if self.tick_size <= 0 or self.lot_size <= 0:
            raise ValueError('sim tick_size and lot_size must be > 0')
        if self.max_spread < 1:
            raise ValueError('sim max_spread must be >= 1 tick')


def sim_config(symbol: str, overrides: dict[str, Any] | None = None) -> SimConfig:
    """Build the config for ``symbol`` from the config file, then explicit overrides."""
    section = dict(load_config().get('sim', {}))
    per_symbol = section.pop('symbols', {}).get(symbol, {})
    known = SimConfig.__dataclass_fields__
    values = {k: v for k, v in {**section, **per_symbol, **(overrides or {})}.items() if k in known}
    return SimConfig(**values)


def _stable_seed(seed: int, symbol: str) -> int:
    digest = hashlib.sha256(f'{seed}:{symbol}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little')


@dataclass
class SimMarket:
    """The top of book of one simulated symbol, advanced one update at a time by :meth:`step`."""

    symbol: str
    config: SimConfig
    listeners: list[Callable[[dict], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.config
        self._rng = random.Random(_stable_seed(cfg.seed, self.symbol))
        self._digits = tick_digits(cfg.tick_size)
        start = cfg.start_price
        if start is None:
            start = 50 + (_stable_seed(0, self.symbol) % 45_000) / 100  # 50.00 .. 500.00
        self.bid_t = max(1, round(start / cfg.tick_size))
        self.ask_t = self.bid_t + 1
        self.last_t = self.bid_t
        self.bsize = self.asize = 1.0
        self.volume = 0.0
        self.updates = 0
        self.injected: set = set()  # memory channels of quote streams that publish set_price()

    def price(self, ticks: int) -> float:
        """Convert a tick count to a price on the grid."""
        return round(ticks * self.config.tick_size, self._digits)

    @property
    def bid(self) -> float:
        return self.price(self.bid_t)

    @property
    def ask(self) -> float:
        return self.price(self.ask_t)

    @property
    def last(self) -> float:
        return self.price(self.last_t)

    def quote(self, ticks: list[dict] | None = None) -> dict:
        """The current state as a quote dict (SPEC §2)."""
        return {
            'symbol': self.symbol,
            'last': self.last,
            'bid': self.bid,
            'ask': self.ask,
            'bsize': self.bsize,
            'asize': self.asize,
            'size': 0.0,
            'volume': self.volume,
            'time': time.time(),
            'ticks': ticks or [],
        }

    def _size(self) -> float:
        lots = self._rng.randint(1, 20)
        return round(lots * self.config.lot_size, 8)

    def step(self) -> dict:
        """Advance the market by one update and return its quote (with its ticks)."""
        cfg, rng = self.config, self._rng
        move = round(rng.gauss(0.0, cfg.volatility))
        self.bid_t = max(1, self.bid_t + move)
        self.ask_t = self.bid_t + rng.randint(1, cfg.max_spread)
        self.bsize, self.asize = self._size(), self._size()
        ticks = [
            {'type': 'bid', 'price': self.bid, 'size': self.bsize},
            {'type': 'ask', 'price': self.ask, 'size': self.asize},
        ]
        quote = self._maybe_print(ticks)
        self.updates += 1
        return quote

    def _maybe_print(self, ticks: list[dict]) -> dict:
        size = 0.0
        if self._rng.random() < self.config.trade_prob:
            self.last_t = self.ask_t if self._rng.random() < 0.5 else self.bid_t
            size = self._size()
            self.volume = round(self.volume + size, 8)
            ticks.append({'type': 'trade', 'price': self.last, 'size': size})
        quote = self.quote(ticks)
        quote['size'] = size
        for listener in list(self.listeners):
            listener(quote)
        return quote

    def set_price(self, price: float, spread_ticks: int = 1) -> dict:
        """Move the market so a trade prints at ``price`` (snapped to the grid); return that quote.

        A hook for tests and demos that need the market at a known level.
        """
        t = max(1, round(price / self.config.tick_size))
        self.bid_t, self.ask_t = t, t + max(1, spread_ticks)
        self.last_t = t
        size = self._size()
        self.volume = round(self.volume + size, 8)
        ticks = [
            {'type': 'bid', 'price': self.bid, 'size': self.bsize},
            {'type': 'ask', 'price': self.ask, 'size': self.asize},
            {'type': 'trade', 'price': self.last, 'size': size},
        ]
        quote = self.quote(ticks)
        quote['size'] = size
        for listener in list(self.listeners):
            listener(quote)
        for tx in list(self.injected):
            try:
                tx.send_nowait(quote)
            except Exception:  # a closed stream
                self.injected.discard(tx)
        return quote

    def history(self, period_s: float, count: int, end: float) -> list[tuple]:
        """Synthetic past bars ``(time, open, high, low, close, volume)`` ending at ``end``.

        A deterministic walk *backwards* from the current last price (seeded by the config seed,
        the symbol and the period), with the same volatility per update as the live market, so
        the history joins the live bars without a gap.
        """
        import numpy as np

        cfg = self.config
        count = max(0, int(count))
        if count == 0:
            return []
        rng = np.random.default_rng(_stable_seed(cfg.seed, f'{self.symbol}:history:{period_s}'))
        steps = max(1.0, cfg.rate * period_s)
        sigma = cfg.volatility * steps ** 0.5
        closes = np.empty(count, dtype=np.int64)
        closes[-1] = self.last_t
        moves = np.rint(rng.normal(0.0, sigma, count)).astype(np.int64)
        for i in range(count - 1, 0, -1):
            closes[i - 1] = max(1, closes[i] - moves[i])
        opens = np.empty_like(closes)
        opens[1:] = closes[:-1]
        opens[0] = max(1, closes[0] - moves[0])
        wick_hi = np.abs(np.rint(rng.normal(0.0, sigma / 2, count))).astype(np.int64)
        wick_lo = np.abs(np.rint(rng.normal(0.0, sigma / 2, count))).astype(np.int64)
        highs = np.maximum(opens, closes) + wick_hi
        lows = np.maximum(1, np.minimum(opens, closes) - wick_lo)
        vols = rng.poisson(steps * cfg.trade_prob * 10.5 * cfg.lot_size, count)
        start = (end // period_s) * period_s - count * period_s
        return [
            (start + i * period_s, self.price(int(opens[i])), self.price(int(highs[i])),
             self.price(int(lows[i])), self.price(int(closes[i])), float(vols[i]))
            for i in range(count)
        ]

    def with_config(self, **changes: Any) -> SimConfig:
        """A copy of this market's config with ``changes`` (for tests)."""
        return replace(self.config, **changes)
