"""The client side of feeds: :func:`open_feed` for any actor (chart, emsd, paper engine, bot).

Each broker's quotes arrive over one tractor stream that a local pump task always drains into a
bounded local buffer, so an unread feed can never head-of-line block the IPC channel it shares
with other contexts. brokerd sends heartbeats when idle; if neither quotes nor heartbeats arrive
for ``heartbeat_timeout`` seconds the feed is declared lost and the next ``receive()`` raises
:class:`FeedLost` instead of hanging forever.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import tractor
import trio

from ..log import get_logger
from ..service import maybe_spawn_brokerd
from ..service._auth import call, endpoint_name, make_auth
from ..service._ipc import HEARTBEAT_TIMEOUT_S, Silence, abandon_context
from ..symbols import Symbol, parse_fqsn
from . import _brokerd

log = get_logger(__name__)



class FeedLost(RuntimeError):
    """A brokerd stopped sending quotes and heartbeats (it died or hung)."""


@dataclass
class QuoteStream:
    """Async iterator of quote packets ``{fqsn: quote}`` merged from every broker of a feed."""

    rx: trio.MemoryReceiveChannel
    lost: dict[str, str] = field(default_factory=dict)

    async def receive(self) -> dict[str, dict]:
        """The next packet; raises :class:`FeedLost` once a broker connection died."""
        try:
            return await self.rx.receive()
        except trio.EndOfChannel:
            raise FeedLost('; '.join(self.lost.values()) or 'feed closed') from None

    def __aiter__(self) -> 'QuoteStream':
        return self

    async def __anext__(self) -> dict[str, dict]:
        try:
            return await self.receive()
        except FeedLost:
            if self.lost:
                raise
            raise StopAsyncIteration from None


@dataclass
class Feed:
    """What :func:`open_feed` yields: symbol infos, first quotes and the quote stream."""

    symbols: dict[str, Symbol]
    first_quotes: dict[str, dict]
    stream: QuoteStream
    dropped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Quotes lost per broker because this consumer was slow (brokerd-side and local)."""
    malformed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Messages per broker that were not a feed message (skipped, logged)."""

    def __aiter__(self) -> QuoteStream:
        return self.stream


@dataclass
class _Link:
    """One broker connection of a feed; ``lost`` once the pump gave up on it."""

    stream: tractor.MsgStream
    firsts: dict
    lost: bool = False


async def _pump(
    broker: str,
    link: _Link,
    tx: trio.MemorySendChannel,
    feed: Feed,
    heartbeat_timeout: float,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Drain one broker's stream forever into the local buffer (never blocks on the consumer)."""
    stream = link.stream
    task_status.started()
    try:
        with Silence(heartbeat_timeout) as silence:
            while True:
                try:
                    msg = await stream.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError) as err:
                    link.lost = True
                    feed.stream.lost[broker] = f'brokerd.{broker} closed the feed ({type(err).__name__})'
                    return
                except tractor.RemoteActorError as err:  # the backend's quote stream failed in brokerd
                    link.lost = True
                    feed.stream.lost[broker] = f'brokerd.{broker} feed failed: {_remote_reason(err)}'
                    log.error(feed.stream.lost[broker])
                    return
                silence.heard()
                _take(msg, broker, tx, feed)
        # only the silence deadline ends the loop without returning
        link.lost = True
        feed.stream.lost[broker] = f'brokerd.{broker} sent nothing for {heartbeat_timeout:g}s: feed lost'
        log.error(feed.stream.lost[broker])
    finally:
        tx.close()


def _take(msg: Any, broker: str, tx: trio.MemorySendChannel, feed: Feed) -> None:
    """One message of brokerd's feed into the local buffer: a quotes packet, or an overrun
    notice. A malformed one is counted, logged and skipped (it must not end everyone's feed)."""
    try:
        quotes = msg.get('quotes')
        packet = {f'{sym}.{broker}': q for sym, q in quotes.items()} if quotes is not None else None
        overrun = int(msg['overrun']['dropped']) if packet is None and 'overrun' in msg else 0
    except Exception as err:
        feed.malformed[broker] += 1
        log.warning('brokerd.%s sent a malformed feed message (%s: %s): skipped %r',
                    broker, type(err).__name__, err, msg)
        return
    if packet is not None:
        try:
            tx.send_nowait(packet)
        except trio.WouldBlock:
            feed.dropped[broker] += 1
    elif overrun:
        feed.dropped[broker] += overrun
        log.warning('brokerd.%s dropped %d quotes for this slow consumer', broker, overrun)


def _remote_reason(err: tractor.RemoteActorError) -> str:
    tb = ((getattr(err, 'msgdata', None) or {}).get('tb_str') or '').strip().splitlines()
    return tb[-1] if tb else str(err)


async def _abandon_draining(ctx: tractor.Context) -> None:
    """:func:`abandon_context`, reading (and dropping) the quotes still arriving meanwhile.

    Nobody reads the feed any more, but brokerd keeps sending until our cancel reaches it:
    once the context's buffer is full, tractor 0.1.0a5's message loop blocks on it (stalling
    every context on the channel, including the cancel's own answer), and closing the buffer
    under that blocked send crashes the actor (``BrokenResourceError``). A process that closes
    a feed and lives on (a chart tab, a chart that leaves pikerd running) must not die of it.
    """
    async def drain() -> None:
        chan = ctx._recv_chan
        if chan is None:
            return
        try:
            async for _ in chan:
                pass
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    with trio.CancelScope(shield=True):
        async with trio.open_nursery() as n:
            n.start_soon(drain)
            await abandon_context(ctx)
            n.cancel_scope.cancel()


@asynccontextmanager
async def _open_broker_feed(
    broker: str,
    symbols: list[str],
    subscriber: str,
    loglevel: str | None,
    heartbeat_timeout: float,
) -> AsyncIterator[_Link]:
    async with maybe_spawn_brokerd(broker, loglevel=loglevel) as portal:
        link: _Link | None = None
        try:
            async with portal.open_context(
                _brokerd.open_feed_stream, symbols=symbols, subscriber=subscriber,
                auth=make_auth(endpoint_name(_brokerd.open_feed_stream)),
            ) as (ctx, firsts):
                failed = False
                try:
                    async with ctx.open_stream() as stream:
                        link = _Link(stream, firsts)
                        yield link
                except BaseException:
                    failed = True
                    raise
                finally:
                    finished = False
                    if not failed and not (link and link.lost):
                        # a dead brokerd never answers: don't wait for its result for long
                        with trio.CancelScope(shield=True), trio.move_on_after(1):
                            await ctx.result()
                            finished = True
                    if not finished:
                        await _abandon_draining(ctx)
        except BaseExceptionGroup as eg:
            # once the feed is lost the consumer already got FeedLost; tractor re-raises the
            # remote side's failure beside it at context exit: keep only the local story
            if link is None or not link.lost:
                raise
            rest = eg.subgroup(lambda e: not isinstance(e, (tractor.RemoteActorError, BaseExceptionGroup)))
            if rest is None:
                raise
            raise rest.exceptions[0] if len(rest.exceptions) == 1 else rest
        except tractor.RemoteActorError:
            if link is None or not link.lost:
                raise
            raise FeedLost(f'brokerd.{broker} feed failed') from None


@asynccontextmanager
async def open_feed(
    fqsns: list[str] | str,
    *,
    loglevel: str | None = None,
    subscriber: str | None = None,
    bufsize: int = 1024,
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
) -> AsyncIterator[Feed]:
    """Open live quotes for ``fqsns`` (spawning the brokerds as needed) and yield a :class:`Feed`.

    Packets are keyed by fqsn. Must run inside a tractor runtime (see ``maybe_open_pikerd``).
    """
    if isinstance(fqsns, str):
        fqsns = [fqsns]
    by_broker: dict[str, list[str]] = defaultdict(list)
    for fqsn in fqsns:
        sym, broker = parse_fqsn(fqsn)
        if sym not in by_broker[broker]:
            by_broker[broker].append(sym)
    subscriber = subscriber or tractor.current_actor().name
    tx, rx = trio.open_memory_channel[dict](bufsize)
    feed = Feed(symbols={}, first_quotes={}, stream=QuoteStream(rx))
    async with AsyncExitStack() as stack:
        links = []
        for broker, syms in by_broker.items():
            link = await stack.enter_async_context(
                _open_broker_feed(broker, syms, subscriber, loglevel, heartbeat_timeout)
            )
            for sym, first in link.firsts.items():
                fqsn = f'{sym}.{broker}'
                feed.symbols[fqsn] = Symbol.model_validate(first['info'])
                feed.first_quotes[fqsn] = first['first_quote']
            links.append((broker, link))
        n = await stack.enter_async_context(trio.open_nursery())
        async with tx:
            for broker, link in links:
                await n.start(_pump, broker, link, tx.clone(), feed, heartbeat_timeout)
        try:
            yield feed
        finally:
            n.cancel_scope.cancel()


@dataclass
class History:
    """Bars from :func:`fetch_history`.

    ``through``: the time of the newest quote already folded into ``bars`` (None when the
    symbol was not streamed): quotes up to then are in the bars and must not be folded again.
    """

    bars: Any   # numpy array of BAR_DTYPE
    through: float | None = None

    def __len__(self) -> int:
        return len(self.bars)


async def fetch_history(
    fqsn: str, period_s: float, count: int, loglevel: str | None = None,
) -> History:
    """Past OHLCV bars of ``fqsn`` (empty if the backend has none).

    Asks ``brokerd.<broker>`` (spawning it if needed). While the symbol is streamed (a feed is
    open), every caller gets the same bars: brokerd keeps one store per symbol and period.
    """
    import numpy as np

    from ._bars import BAR_DTYPE

    sym, broker = parse_fqsn(fqsn)
    async with maybe_spawn_brokerd(broker, loglevel=loglevel) as portal:
        reply = await call(
            portal, 'piker_ems.data._brokerd', 'history', symbol=sym, period_s=period_s, count=count,
        )
    bars = np.array([tuple(r) for r in reply['bars']], dtype=BAR_DTYPE)
    return History(bars, reply.get('through'))
