# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
The sim backend's live exchange: the ``trades_dialogue`` of ``brokerd.sim``.

It matches limit orders against the very :class:`~._market.SimMarket` the quote feed streams
(both come from the actor's :class:`~._venue.SimVenue`): on the first order for a symbol it
registers a listener on ``market.listeners``, which ``step()`` / ``set_price()`` call
synchronously with every quote; the listener only matches (never blocks) and queues the
resulting messages on the dialogues' outboxes. Matching, positions and the dialogue protocol
are the shared simulated-venue core (:mod:`piker_ems.simvenue`).

Unlike the paper engine this behaves like a remote venue:

- reqids are increasing ints;
- latency from the ``[sim]`` config section: ``ack_delay`` (seconds before a new order reaches
  the book and is acked, default 0) and ``fill_delay`` (seconds between an execution and its
  report, default 0), plus seeded ``latency_jitter``; the fill model and maker/taker fees are
  the paper engine's (``partial_fills``, ``queue``, ``maker_fee_bps``, ``taker_fee_bps``: see
  :mod:`piker_ems.simvenue._fidelity`);
- it only knows orders by reqid, so a ``BrokerdCancel`` with ``reqid=None`` (e.g. sent before
  the ack) is answered ``BrokerdError('unknown order')``: stashing cancels until the ack is the
  EMS's job;
- it outlives its gateway: every accepted order, modify, cancel and fill is journaled
  (:mod:`piker_ems.simvenue._journal`) in ``<config dir>/state/sim-exchange.sqlite`` before it is
  reported, and a restarted ``brokerd.sim`` restores the resting orders (matching again once
  the first dialogue opens), positions, fills ledger and the reqid / fill id counters
  (fill ids ``sim-<n>``). ``fee_bps``, ``persist`` and ``journal_sync`` in ``[sim]`` as for
  the paper engine.

The exchange is owned by the ``brokerd.sim`` actor (:func:`current_exchange`), created by its
first dialogue or stats call; the sim module is imported by every process that loads the
backend, but only ``brokerd.sim`` ever trades.
"""
from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import tractor

from ...clearing._messages import BrokerdCancel, BrokerdOrder
from ...log import get_logger, setup_console
from ...simvenue._clock import Clock, system_clock
from ...simvenue._dialogue import Dialogue, DialogueEngine
from ...simvenue._fidelity import Fidelity, fidelity_setting
from ...simvenue._journal import Journal, fee_setting, open_venue_journal, venue_settings
from ...service._state import owned
from ._venue import SimVenue, current_venue

__all__ = ['SimExchange', 'current_exchange', 'exchange_stats', 'serve_trades_dialogue']

log = get_logger(__name__)

_KEY = 'piker_ems.brokers.sim.exchange'


class SimExchange(DialogueEngine):
    """A simulated exchange trading the markets of ``venue``."""

    def __init__(
        self,
        venue: SimVenue,
        ack_delay: float | None = None,
        fill_delay: float | None = None,
        *,
        clock: Clock = system_clock,
        journal: Journal | None = None,
        fee_bps: float | None = None,
        fidelity: Fidelity | None = None,
    ) -> None:
        settings = venue_settings('sim')
        if fee_bps is None:
            fee_bps = fee_setting(settings)
        fidelity = fidelity if fidelity is not None else fidelity_setting(settings)
        if ack_delay is not None or fill_delay is not None:
            if not ((ack_delay or 0.0) >= 0 and (fill_delay or 0.0) >= 0):
                raise ValueError('sim ack_delay and fill_delay must be >= 0 seconds')
            fidelity = replace(
                fidelity,
                ack_delay=fidelity.ack_delay if ack_delay is None else float(ack_delay),
                fill_delay=fidelity.fill_delay if fill_delay is None else float(fill_delay))
        super().__init__(
            'sim', self._next_reqid, name='brokerd.sim exchange', clock=clock, journal=journal,
            fee_bps=fee_bps, fill_prefix='sim', fidelity=fidelity,
        )
        self.venue = venue
        self.watched: set[str] = set()

    def _next_reqid(self) -> int:
        # increasing ints, continuing after the last one the journal saw issued
        self.core.last_reqid += 1
        return self.core.last_reqid

    def on_bind(self) -> None:
        # orders restored from the journal match against their markets again
        for symbol in sorted(self.core.book.symbols()):
            self.watch(symbol)

    def watch(self, symbol: str) -> None:
        """Start matching ``symbol`` against its market (once per symbol)."""
        if symbol in self.watched:
            return
        market = self.venue.market(symbol)
        market.listeners.append(partial(self._on_market_quote, symbol))
        self.watched.add(symbol)
        self.on_quote(symbol, market.quote())  # the book top right now

    def _on_market_quote(self, symbol: str, quote: dict) -> None:
        # called synchronously from SimMarket.step()/set_price(): must never raise or block
        try:
            self.on_quote(symbol, quote)
        except Exception:
            log.exception('%s: quote listener failed for %s', self.name, symbol)

    def on_request(self, dialogue: Dialogue, req: BrokerdOrder | BrokerdCancel) -> None:
        if isinstance(req, BrokerdOrder):
            self.watch(req.symbol.lower())
        self.arrive(dialogue, req)  # a new order after the ack latency

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        stats.update(
            ack_delay=self.fidelity.ack_delay,   # (the latency model's: one source of truth)
            fill_delay=self.fidelity.fill_delay,
            watched=sorted(self.watched),
        )
        return stats


def current_exchange() -> SimExchange:
    """The running actor's exchange (reading the ``[sim]`` config), created on first use."""
    def make() -> SimExchange:
        settings = venue_settings('sim')
        journal = open_venue_journal('sim-exchange', 'brokerd.sim', settings)
        return SimExchange(current_venue(), journal=journal, fee_bps=fee_setting(settings),
                           fidelity=fidelity_setting(settings))

    return owned(_KEY, make)


async def serve_trades_dialogue(
    ctx: tractor.Context, loglevel: str | None = None, since_ns: int | None = None, **kw: Any,
) -> None:
    """Body of ``piker_ems.brokers.sim.trades_dialogue``."""
    setup_console(loglevel, process_name='brokerd.sim')
    if kw:
        log.debug('sim exchange: ignoring dialogue options %r', kw)
    await current_exchange().serve(ctx, since_ns)


def exchange_stats() -> dict[str, Any]:
    """The exchange's counters; see :meth:`DialogueEngine.stats` plus ``ack_delay``,
    ``fill_delay`` and ``watched``."""
    return current_exchange().stats()
