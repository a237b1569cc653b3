"""The brokerd side of feeds: one upstream task per symbol, fanned out to every subscriber.

``brokerd.<broker>`` runs :func:`_setup_persistent_brokerd` as its service task; it creates the
process's :class:`FeedBus`. Each subscriber (a chart, emsd, a paper engine, a bot, in any actor)
opens :func:`open_feed_stream`. Whatever the number of subscribers, each symbol has one
upstream task reading the backend; it pushes into a bounded buffer per subscriber without ever
waiting, so a subscriber that stops reading only loses its own quotes (counted and reported to
it) and never stalls the upstream or the other subscribers. The upstream stops when its last
subscriber leaves.

History is one per symbol too: the first chart asking for a period's bars gets the backend's
backfill, which the upstream then extends from the same quotes it fans out; every later chart
gets those very bars (:meth:`Upstream.history`), so a fill seen in one chart sits on the same bar
in another. A backfill taken at a different moment would be a different past.
"""
from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import AsyncIterator

import tractor
import trio

from ..brokers import get_brokermod
from ._bars import BarAggregator, fold_quote
from ..log import get_logger, setup_console
from ..service._auth import act_as_service, guarded
from ..service._cache import SharedCache
from ..service._ipc import HEARTBEAT_S, heartbeat as heartbeat_msg
from ..service._state import actor_state, maybe_actor_state

log = get_logger(__name__)

DEFAULT_BUFSIZE = 2048
#: bars a symbol's shared store is backfilled with (charts ask for fewer)
HISTORY_DEPTH = 1000
_BUS_KEY = 'feed_bus'


class Subscriber:
    """One subscribing context: a bounded buffer of ``(symbol, quote)`` and its drop count."""

    def __init__(self, name: str, bufsize: int) -> None:
        self.name = name
        self.tx, self.rx = trio.open_memory_channel[tuple[str, dict]](bufsize)
        self.dropped = 0
        self.reported = 0

    def push(self, symbol: str, quote: dict) -> None:
        """Queue a quote without waiting; count it as dropped when the buffer is full."""
        try:
            self.tx.send_nowait((symbol, quote))
        except trio.WouldBlock:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning('subscriber %s is slow: %d quotes dropped', self.name, self.dropped)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@dataclass
class Upstream:
    """The single reader of one symbol's backend quote stream."""

    symbol: str
    first_quote: dict
    info: dict
    subscribers: set[Subscriber] = field(default_factory=set)
    quotes_in: int = 0
    failed: BaseException | None = None
    #: the bars served to every chart, one store per bar period (see :meth:`history`)
    bars: dict[float, BarAggregator] = field(default_factory=dict)
    #: time of the newest quote folded into :attr:`bars`
    through: float | None = None
    _filling: dict[float, trio.Event] = field(default_factory=dict)

    async def pump(self, quotes: AsyncIterator[dict]) -> None:
        """Read the backend forever and fan every quote out; never waits on a subscriber."""
        try:
            async for quote in quotes:
                self.first_quote = quote
                self.quotes_in += 1
                for agg in self.bars.values():
                    fold_quote(agg, quote)
                self.through = quote.get('time', self.through)
                for sub in list(self.subscribers):
                    sub.push(self.symbol, quote)
        except Exception as err:  # a backend failure must not take brokerd down
            log.exception('quote stream for %s failed', self.symbol)
            self.failed = err
            for sub in list(self.subscribers):
                sub.tx.close()

    async def history(self, backfill, period_s: float, count: int) -> dict:
        """``{'bars': rows, 'through': t}``: the last ``count`` bars of this symbol's shared
        store for ``period_s`` (backfilled once, then extended by the live quotes).

        ``through`` is the time of the newest quote already in the bars: a chart skips the
        quotes it buffered up to then instead of counting them twice.
        """
        period_s = float(period_s)
        while period_s not in self.bars:
            filling = self._filling.get(period_s)
            if filling is not None:         # another chart is backfilling it: share that
                await filling.wait()
                continue
            self._filling[period_s] = done = trio.Event()
            try:
                agg = BarAggregator(period_s)
                rows = [] if backfill is None else await backfill(
                    self.symbol, period_s, max(int(count), HISTORY_DEPTH))
                if rows:
                    import numpy as np

                    from ._bars import BAR_DTYPE
                    agg.load(np.array([tuple(r) for r in rows], dtype=BAR_DTYPE))
                self.bars[period_s] = agg   # from now on, every quote extends it
            finally:
                del self._filling[period_s]
                done.set()
        array = self.bars[period_s].array[-max(0, int(count)):] if count else []
        return {'bars': [[float(v) for v in row] for row in array], 'through': self.through}


class FeedBus:
    """brokerd's feed state: the per-symbol upstreams and their subscribers.

    One per brokerd actor: created by its service task and kept in the actor's own state
    (:mod:`piker_ems.service._state`), so it goes away with the service task and the actor.
    """

    def __init__(self, broker: str, brokermod: ModuleType, nursery: trio.Nursery) -> None:
        self.broker = broker
        self.brokermod = brokermod
        self.upstreams = SharedCache(nursery)
        self.started_per_symbol: dict[str, int] = {}
        #: running upstreams by symbol (their bar stores serve history)
        self.live: dict[str, Upstream] = {}

    @staticmethod
    def current() -> 'FeedBus':
        """The bus of this brokerd actor (created by its service task)."""
        state = maybe_actor_state()
        bus = None if state is None else state.get(_BUS_KEY)
        if bus is None:
            raise RuntimeError('this actor is not a brokerd (no feed bus)')
        return bus

    @asynccontextmanager
    async def _open_upstream(self, symbol: str) -> AsyncIterator[Upstream]:
        info = (await self.brokermod.get_symbol_info(symbol)).model_dump()
        async with self.brokermod.open_quote_stream(symbol) as (first, quotes):
            upstream = Upstream(symbol, first, info, through=first.get('time'))
            self.started_per_symbol[symbol] = self.started_per_symbol.get(symbol, 0) + 1
            log.info('upstream for %s.%s started', symbol, self.broker)
            async with trio.open_nursery() as n:
                n.start_soon(upstream.pump, quotes)
                self.live[symbol] = upstream
                try:
                    yield upstream
                finally:
                    if self.live.get(symbol) is upstream:
                        del self.live[symbol]
                    n.cancel_scope.cancel()
                    log.info('upstream for %s.%s stopped', symbol, self.broker)

    @asynccontextmanager
    async def subscribe(self, symbol: str, subscriber: Subscriber) -> AsyncIterator[Upstream]:
        """Attach ``subscriber`` to ``symbol``'s upstream (starting it if needed)."""
        symbol = symbol.lower()
        async with self.upstreams.open(symbol, lambda: self._open_upstream(symbol)) as (_, upstream):
            if upstream.failed is not None:  # dying: its users are leaving; don't join them
                raise RuntimeError(f'quote stream for {symbol}.{self.broker} failed: {upstream.failed!r}')
            upstream.subscribers.add(subscriber)
            try:
                yield upstream
            finally:
                upstream.subscribers.discard(subscriber)

    def stats(self) -> dict:
        """Upstream counts per symbol (tests assert exactly one upstream per symbol)."""
        return {
            'active': {k: self.upstreams.users(k) for k in self.upstreams.keys()},
            'started': dict(self.started_per_symbol),
        }


@guarded('admin')
@tractor.context
async def _setup_persistent_brokerd(ctx: tractor.Context, broker: str, loglevel: str | None = None) -> None:
    """brokerd's service task: create the feed bus and keep it until pikerd cancels us."""
    setup_console(loglevel, process_name=f'brokerd.{broker}')
    act_as_service()
    brokermod = get_brokermod(broker)
    state = actor_state()
    if state.get(_BUS_KEY) is not None:
        raise RuntimeError(f'this actor already runs a feed bus for {state[_BUS_KEY].broker}')
    async with trio.open_nursery() as n:
        bus = state[_BUS_KEY] = FeedBus(broker, brokermod, n)
        try:
            await ctx.started(broker)
            await trio.sleep_forever()
        finally:
            if state.get(_BUS_KEY) is bus:
                del state[_BUS_KEY]


@guarded('watch', 'trade')
async def history(symbol: str, period_s: float, count: int) -> dict:
    """RPC: ``{'bars': rows, 'through': t}``, the symbol's bars for ``period_s``.

    While the symbol is streamed, the same shared store for every caller
    (:meth:`Upstream.history`); otherwise straight from the backend's optional ``backfill``
    (``through`` None; empty if it has none).
    """
    bus = FeedBus.current()
    symbol = symbol.lower()
    backfill = getattr(bus.brokermod, 'backfill', None)
    upstream = bus.live.get(symbol)
    if upstream is not None and upstream.failed is None:
        return await upstream.history(backfill, period_s, count)
    rows = [] if backfill is None else await backfill(symbol, period_s, count)
    return {'bars': [list(row) for row in rows], 'through': None}


@guarded('admin')
async def feed_stats() -> dict:
    """RPC: the bus's upstream counts (for tests; admin only)."""
    return FeedBus.current().stats()


@guarded('watch', 'trade')
@tractor.context
async def open_feed_stream(
    ctx: tractor.Context,
    symbols: list[str],
    subscriber: str = 'anonymous',
    bufsize: int = DEFAULT_BUFSIZE,
    heartbeat: float = HEARTBEAT_S,
) -> None:
    """Stream quotes for ``symbols`` to one subscriber.

    ``started()`` carries ``{symbol: {'info': Symbol dict, 'first_quote': quote}}``. Stream
    messages are ``{'quotes': {symbol: quote}}``, ``{'heartbeat': t}`` when idle for
    ``heartbeat`` seconds (so the subscriber can detect a dead brokerd), and
    ``{'overrun': {'dropped': n}}`` after this subscriber's buffer overflowed.
    """
    bus = FeedBus.current()
    sub = Subscriber(subscriber, bufsize)
    async with AsyncExitStack() as stack:
        firsts = {}
        for symbol in symbols:
            upstream = await stack.enter_async_context(bus.subscribe(symbol, sub))
            firsts[upstream.symbol] = {'info': upstream.info, 'first_quote': upstream.first_quote}
        await ctx.started(firsts)
        async with ctx.open_stream() as stream, trio.open_nursery() as n:

            async def watch_client() -> None:
                async for _ in stream:  # ends when the subscriber closes its side
                    pass
                n.cancel_scope.cancel()

            n.start_soon(watch_client)
            while True:
                item = None
                with trio.move_on_after(heartbeat):  # only the wait is timed, never a send
                    try:
                        item = await sub.rx.receive()
                    except trio.EndOfChannel:
                        raise RuntimeError(f'quote stream for {symbols} ended in brokerd.{bus.broker}') from None
                if item is None:
                    await stream.send(heartbeat_msg())
                    continue
                if sub.dropped != sub.reported:
                    await stream.send({'overrun': {'dropped': sub.dropped - sub.reported}})
                    sub.reported = sub.dropped
                await stream.send({'quotes': _batch(item, sub.rx)})


def _batch(item: tuple[str, dict], rx: trio.MemoryReceiveChannel, limit: int = 64) -> dict:
    """Merge already-queued quotes into one packet; a repeated symbol keeps its newest quote
    but its ticks are concatenated, so no tick is lost to batching."""
    symbol, quote = item
    packet = {symbol: quote}
    for _ in range(limit):
        try:
            symbol, quote = rx.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        prev = packet.get(symbol)
        if prev is not None:
            quote = {**quote, 'ticks': prev['ticks'] + quote['ticks']}
        packet[symbol] = quote
    return packet
