# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
The paper clearing engine: ``paperboi.<broker>`` (SPEC §6).

A child actor of emsd (or any actor: tests spawn it on its own) exposing the
same :func:`trades_dialogue` contract as a live brokerd, so emsd cannot tell
the difference. Matching, positions and the dialogue protocol come from the
shared simulated-venue core (:mod:`piker_ems.simvenue`); this module adds the market data: the
first new order for a symbol opens a feed for ``<symbol>.<broker>`` (one feed
task per symbol), and new orders for a symbol whose first quote is not known
yet are held, in arrival order, until it is. Every later quote is matched
against the resting orders.

The engine is per actor and broker, not per dialogue: it is kept on the running
actor (:func:`engine_for`, see :mod:`piker_ems.service._state`), so resting
orders and positions survive a dialogue closing, like at a real broker. They also
survive the actor: every accepted order, modify, cancel and fill is journaled
(:mod:`piker_ems.simvenue._journal`) in ``<config dir>/state/paper.<broker>.sqlite``
before it is reported, and a new ``paperboi.<broker>`` restores its resting orders
(re-opening their feeds), positions, fills ledger and id counters from there. Paper
reqids are strings ``paper-<uuid4>``; fill ids ``paper.<broker>-<n>``.

Settings, in ``piker_ems.toml`` (a ``[paper.<broker>]`` table overrides ``[paper]``)::

    [paper]
    fee_bps = 0            # fee per fill, basis points of its notional (default 0)
    persist = true         # journal to state/paper.<broker>.sqlite (default true)
    journal_sync = "normal"   # SQLite synchronous level; "full" survives power loss too

    [paper.kraken]
    fee_bps = 2.6

plus the fill model, maker/taker fees and latency of :mod:`piker_ems.simvenue._fidelity`
(``partial_fills``, ``queue``, ``maker_fee_bps``, ``taker_fee_bps``, ``ack_delay``,
``fill_delay``, ``latency_jitter``, ``latency_seed``); see README "Paper fills".

RPCs: :func:`trades_dialogue` (``@tractor.context``) and :func:`paper_stats`.
"""
from __future__ import annotations

import uuid
from contextlib import nullcontext
from typing import Any

import tractor
import trio

from ..brokers import get_brokermod
from ..log import get_logger, setup_console
from ..simvenue._clock import Clock, system_clock
from ..simvenue._dialogue import Dialogue, DialogueEngine
from ..simvenue._fidelity import Fidelity, fidelity_setting
from ..simvenue._journal import Journal, fee_setting, open_venue_journal, venue_settings
from ..service._auth import act_as_service, guarded
from ..service._state import owned
from ._messages import BrokerdCancel, BrokerdError, BrokerdOrder, to_wire

__all__ = ['PaperEngine', 'engine_for', 'paper_stats', 'trades_dialogue']

log = get_logger(__name__)

#: Seconds between attempts to reopen a symbol's feed after it was lost.
FEED_RETRY_S = 1.0


def _paper_reqid() -> str:
    return f'paper-{uuid.uuid4()}'


class PaperEngine(DialogueEngine):
    """The paper venue of one broker."""

    def __init__(
        self,
        broker: str,
        *,
        clock: Clock = system_clock,
        journal: Journal | None = None,
        fee_bps: float | None = None,
        fidelity: Fidelity | None = None,
    ) -> None:
        if fee_bps is None or fidelity is None:
            settings = venue_settings('paper', broker)
            fee_bps = fee_setting(settings) if fee_bps is None else fee_bps
            fidelity = fidelity_setting(settings) if fidelity is None else fidelity
        super().__init__(
            broker, _paper_reqid, name=f'paperboi.{broker}', clock=clock, journal=journal,
            fee_bps=fee_bps, fill_prefix=f'paper.{broker}', fidelity=fidelity,
        )
        # symbol -> 'starting' | 'live' | 'reconnecting'
        self.feeds: dict[str, str] = {}
        # new orders waiting for their symbol's first quote, in arrival order
        self.pending: dict[str, list[tuple[Dialogue, BrokerdOrder]]] = {}
        self.loglevel: str | None = None
        self.quotes = 0

    def on_request(self, dialogue: Dialogue, req: BrokerdOrder | BrokerdCancel) -> None:
        if isinstance(req, BrokerdOrder) and req.reqid is None:
            symbol = req.symbol.lower()
            if symbol in self.pending or not self.core.has_l1(symbol):
                # keep arrival order: behind any order already waiting for this symbol
                self.pending.setdefault(symbol, []).append((dialogue, req))
                self._ensure_feed(symbol)
                return
            self._ensure_feed(symbol)
        # cancels and modifies name a reqid: the order (and its quotes) already exist
        self.arrive(dialogue, req)

    def on_bind(self) -> None:
        # orders restored from the journal keep matching: open their symbols' feeds
        for symbol in sorted(self.core.book.symbols()):
            self._ensure_feed(symbol)

    def _ensure_feed(self, symbol: str) -> None:
        if symbol not in self.feeds:
            self.feeds[symbol] = 'starting'
            self.spawn(self._run_feed, symbol)

    def _release(self, symbol: str) -> None:
        """The first quote is known: process the held orders in arrival order."""
        held = self.pending.pop(symbol, [])
        with self.journal_group() if len(held) > 1 else nullcontext():  # one journal commit
            for dialogue, req in held:
                if not dialogue.open:
                    log.warning('%s: dropping held order %s: its dialogue closed', self.name, req.oid)
                    continue
                # one boundary per order: a failure never loses the other held orders
                self.guarded_process(dialogue, req, held=True)

    def _fail_pending(self, symbol: str, reason: str) -> None:
        for dialogue, req in self.pending.pop(symbol, []):
            self.emit(dialogue, [to_wire(BrokerdError(
                oid=req.oid, symbol=req.symbol, reason=reason,
                broker_details={'broker': self.broker},
            ))])

    async def _run_feed(self, symbol: str) -> None:
        """Subscribe to ``<symbol>.<broker>`` and match every quote; reconnect if it is lost."""
        from ..data.feed import open_feed  # not at import: data pulls in the service layer

        fqsn = f'{symbol}.{self.broker}'
        live = False
        try:
            while True:
                try:
                    async with open_feed([fqsn], loglevel=self.loglevel) as feed:
                        first = feed.first_quotes.get(fqsn)
                        if first is None:
                            raise LookupError(f'the feed for {fqsn} has no first quote')
                        self.on_quote(symbol, first)
                        live = True
                        self.feeds[symbol] = 'live'
                        self._release(symbol)
                        async for packet in feed.stream:
                            quote = packet.get(fqsn)
                            if quote is not None:
                                self.quotes += 1
                                self.on_quote(symbol, quote)
                    log.warning('%s: feed for %s ended', self.name, fqsn)
                except Exception as err:
                    if not live:
                        log.error('%s: cannot open the feed for %s: %r', self.name, fqsn, err)
                        self._fail_pending(symbol, f'no quotes for {fqsn}: {err}')
                        return
                    log.warning('%s: feed for %s lost (%r): reconnecting', self.name, fqsn, err)
                self.feeds[symbol] = 'reconnecting'
                await trio.sleep(FEED_RETRY_S)
        finally:
            if not live:  # a later order for this symbol tries again
                self.feeds.pop(symbol, None)

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        stats.update(
            feeds=dict(self.feeds),
            held_orders=sum(len(v) for v in self.pending.values()),
            quotes=self.quotes,
        )
        return stats


def engine_for(broker: str) -> PaperEngine:
    """The running actor's paper engine for ``broker`` (created on first use, from its journal
    ``<config dir>/state/paper.<broker>.sqlite`` unless ``persist = false``)."""
    def make() -> PaperEngine:
        settings = venue_settings('paper', broker)
        journal = open_venue_journal(f'paper.{broker}', f'paperboi.{broker}', settings)
        return PaperEngine(broker, journal=journal, fee_bps=fee_setting(settings),
                           fidelity=fidelity_setting(settings))

    return owned(f'piker_ems.clearing._paper.engine.{broker}', make)


def _default_broker() -> str:
    """``paperboi.<broker>`` -> ``<broker>``; ``sim`` for an actor named otherwise."""
    actor = tractor.current_actor(err_on_no_runtime=False)
    name = actor.name if actor is not None else ''
    prefix, dot, broker = name.partition('.')
    return broker if prefix == 'paperboi' and dot and broker else 'sim'


@guarded('admin')
@tractor.context
async def trades_dialogue(
    ctx: tractor.Context,
    broker: str | None = None,
    loglevel: str | None = None,
    since_ns: int | None = None,
    max_batch: int = 1,
    **kw: Any,
) -> None:
    """The paper venue's ``trades_dialogue`` (same contract as a live backend's, see
    ``docs/backends.md``).

    ``started()`` carries a ``VenueSnapshot`` dict (positions, open orders, and with
    ``since_ns`` the orders ended and fills executed at or after it); the stream takes
    ``BrokerdOrder`` / ``BrokerdCancel`` dicts and yields ``BrokerdOrderAck`` /
    ``BrokerdStatus`` / ``BrokerdFill`` / ``BrokerdError`` / ``BrokerdPosition`` dicts.
    ``max_batch`` > 1 (emsd asks for it): a backlog of events goes as one list of up to that
    many (the batch form of docs/backends.md); the default sends every event alone.
    """
    broker = (broker or _default_broker()).lower()
    get_brokermod(broker)  # an unknown broker fails the open with a readable error
    setup_console(loglevel, process_name=f'paperboi.{broker}')
    act_as_service()  # its own feed subscriptions act as the local participant
    if kw:
        log.debug('paperboi.%s: ignoring dialogue options %r', broker, kw)
    engine = engine_for(broker)
    if loglevel is not None:
        engine.loglevel = loglevel
    await engine.serve(ctx, since_ns, max_batch=max(1, int(max_batch)))


@guarded('admin')
async def paper_stats(broker: str | None = None) -> dict[str, Any]:
    """RPC: the paper engine's counters for ``broker`` (default: this actor's broker).

    ``{'broker', 'dialogues_opened', 'dialogues_active', 'received', 'rejected',
    'executions', 'resting_orders' (count), 'open_orders' (list of {reqid, oid, account,
    action, symbol, price, size, filled}), 'positions' (list of {account, symbol, size,
    avg_price}, flat ones included), 'requests' (valid requests received, as dicts, in order),
    'journal' (in/out events: {dir, name, oid, reqid, time_ns}), 'feeds' ({symbol: state}),
    'held_orders' (new orders waiting for a first quote), 'quotes' (quotes matched)}``
    """
    return engine_for((broker or _default_broker()).lower()).stats()
