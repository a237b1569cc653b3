# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
How closely a simulated venue imitates a market: fill model, fees and latency, as data.

Read from the venue's settings (``[paper]`` / ``[paper.<broker>]`` for the paper engine,
``[sim]`` for the sim exchange) by :func:`fidelity_setting`; every knob defaults to the old
behaviour (whole size on touch, one fee rate, no delay) so nothing changes unless asked.

- ``partial_fills``: an execution is bounded by the size shown at the touch (L1 bid/ask size of
  the quote; taken liquidity is gone until a quote shows it again) and, for a resting order
  filled by prints, by the printed size; the rest of the order keeps resting. A quote without
  a size is unbounded. Marketable orders fill at the touch, never better; a remainder that was
  marketable keeps taking at the touch of later quotes (taker); an order that rested passively
  fills at its limit (maker). Slippage beyond L1 is **not modelled** (no depth data).
- ``queue`` (with ``partial_fills``): a resting limit joining the touch waits behind the size
  shown at its price when it arrived; only prints at or through its price shrink that queue,
  and only print volume beyond it fills the order (shared by every paper order it reaches).
  A level away from the touch has no known depth: the queue ahead is taken as 0 there.
- ``maker_fee_bps`` / ``taker_fee_bps``: fee rates in basis points of the notional (each
  defaults to ``fee_bps``); every fill reports its fee and its liquidity side.
- ``ack_delay`` / ``fill_delay`` seconds plus a uniform jitter in ``[0, latency_jitter)`` drawn
  from ``random.Random(latency_seed)``: the same inputs give the same delays every run. Reports
  keep their order (a fill is never reported before an earlier one).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ['Fidelity', 'Latency', 'fidelity_setting']


@dataclass(frozen=True, slots=True)
class Fidelity:
    partial_fills: bool = False
    queue: bool = False
    maker_fee_bps: float | None = None
    taker_fee_bps: float | None = None
    ack_delay: float = 0.0
    fill_delay: float = 0.0
    latency_jitter: float = 0.0
    latency_seed: int = 0

    @property
    def delays(self) -> bool:
        return bool(self.ack_delay or self.fill_delay or self.latency_jitter)


def _number(settings: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = settings.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f'{key} must be a number >= 0, got {value!r}')
    return float(value)


def _flag(settings: Mapping[str, Any], key: str) -> bool:
    value = settings.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f'{key} must be true or false, got {value!r}')
    return value


def fidelity_setting(settings: Mapping[str, Any]) -> Fidelity:
    """The :class:`Fidelity` a venue's settings table asks for (ValueError naming a bad key)."""
    seed = settings.get('latency_seed', 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f'latency_seed must be an integer, got {seed!r}')
    fid = Fidelity(
        partial_fills=_flag(settings, 'partial_fills'),
        queue=_flag(settings, 'queue'),
        maker_fee_bps=_number(settings, 'maker_fee_bps', None),
        taker_fee_bps=_number(settings, 'taker_fee_bps', None),
        ack_delay=_number(settings, 'ack_delay', 0.0) or 0.0,
        fill_delay=_number(settings, 'fill_delay', 0.0) or 0.0,
        latency_jitter=_number(settings, 'latency_jitter', 0.0) or 0.0,
        latency_seed=seed,
    )
    if fid.queue and not fid.partial_fills:
        raise ValueError('queue = true needs partial_fills = true (a queue fills in parts)')
    return fid


class Latency:
    """Seeded ack/fill delays (seconds): base + uniform jitter, one draw per event."""

    def __init__(self, fid: Fidelity) -> None:
        self.fid = fid
        self.rng = random.Random(fid.latency_seed)

    def _jitter(self) -> float:
        return self.rng.random() * self.fid.latency_jitter if self.fid.latency_jitter else 0.0

    def ack(self) -> float:
        return self.fid.ack_delay + self._jitter()

    def fill(self) -> float:
        return self.fid.fill_delay + self._jitter()
