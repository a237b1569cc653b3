# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
The connection to Binance spot: one ccxt exchange per ``brokerd.binance`` actor.

:class:`BinanceVenue` owns the asyncio thread (:mod:`._bridge`) and a ``ccxt.pro.binance``
exchange pointed at the configured URLs (:mod:`._config`). Every user (a quote stream, a
trades dialogue, a history request) holds it through :func:`open_venue`; some seconds after the
last one left (or when the actor stops) the exchange's sessions are closed and the thread
stopped, so a normal stop logs no tracebacks.

REST goes through ccxt's *implicit* API methods (``private_post_order`` ...) with the venue's
own parameters, not through its unified ``create_order``: ccxt would round our price to the
tick and prefix our client order id, and we want the venue to see exactly what the trader
asked for (and to answer with its own reasons). ccxt still signs, throttles by request weight
and maps error codes to exception classes. Market data comes from ``ccxt.pro``'s websocket
watchers, each in a loop that reconnects with backoff.
"""
from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import trio

from ...log import get_logger
from ...service._state import owned
from ...symbols import Symbol
from .. import SymbolNotFound
from ._bridge import AsyncioThread
from ._config import BinanceSettings, load_settings

__all__ = ['BinanceVenue', 'RateLimited', 'VenueError', 'open_venue', 'venue_reason']

log = get_logger(__name__)

_KEY = 'piker_ems.brokers.binance.venue'
#: Longest wait between websocket reconnection attempts.
MAX_BACKOFF_S = 15.0
#: How often a REST call is retried after HTTP 429/418 before it fails.
RATE_LIMIT_RETRIES = 4


class VenueError(Exception):
    """Binance refused a request; ``reason`` is the venue's own message."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.code = reason, code


class RateLimited(VenueError):
    """HTTP 429/418: too many requests; ``retry_after`` seconds until the next try."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def venue_reason(err: BaseException) -> tuple[str, int | None]:
    """Binance's ``msg`` (and ``code``) from a ccxt error's text ``binance {"code":..,"msg":..}``.

    A cancel-replace failure nests the reason of the part that failed; that one is returned."""
    text = str(err)
    start = text.find('{')
    if start >= 0:
        try:
            body = json.loads(text[start:])
        except ValueError:
            body = None
        if isinstance(body, dict) and 'msg' in body:
            msg, code = str(body['msg']), body.get('code')
            try:  # cancelReplace: {"code":-2021,"msg":"...","data":{...}} inside msg or at top
                nested = json.loads(msg) if msg.startswith('{') else body
                data = nested.get('data') or {}
                for part in ('newOrderResponse', 'cancelResponse'):
                    sub = data.get(part)
                    if isinstance(sub, dict) and 'msg' in sub:
                        return str(sub['msg']), sub.get('code')
                if 'msg' in nested and nested is not body:
                    return str(nested['msg']), nested.get('code')
            except (ValueError, AttributeError):
                pass
            return msg, code
    return (text.removeprefix('binance ').strip() or type(err).__name__), None


async def _make_exchange(settings: BinanceSettings) -> Any:
    """Build the ccxt exchange on the asyncio loop (ccxt binds it to the running loop)."""
    import ccxt.pro

    config: dict[str, Any] = {
        'enableRateLimit': True,
        'options': {
            'defaultType': 'spot',
            # without these ccxt also calls margin, currency and futures endpoints
            'fetchMarkets': {'types': ['spot']},
            'fetchCurrencies': False,
            'fetchMargins': False,
        },
    }
    if settings.has_keys:
        config['apiKey'], config['secret'] = settings.api_key, settings.secret
    ex = ccxt.pro.binance(config)
    api = dict(ex.urls['api'])
    rest = settings.rest_url
    api.update({'public': f'{rest}/api/v3', 'private': f'{rest}/api/v3', 'v1': f'{rest}/api/v1',
                'sapi': f'{rest}/sapi/v1'})
    ws = dict(api.get('ws') or {})
    ws['spot'] = ws['margin'] = settings.ws_url
    ws['ws-api'] = {**(ws.get('ws-api') or {}), 'spot': settings.ws_api_url}
    api['ws'] = ws
    ex.urls['api'] = api
    return ex


class BinanceVenue:
    """ccxt's Binance exchange, its asyncio thread and the spot markets it loaded."""

    def __init__(self, settings: BinanceSettings) -> None:
        self.settings = settings
        self.bridge = AsyncioThread('binance-asyncio')
        self.ex: Any = None
        self.markets: dict[str, dict] = {}   # our key ('btcusdt') -> ccxt market
        self.users = 0
        self.linger: trio.CancelScope | None = None
        self.lock = trio.Lock()
        self.seen_fills: set[str] = set()    # venue trade ids already reported (this actor)
        # callables (run on the asyncio loop) that get every raw executionReport
        self.report_sinks: set[Callable[[dict], None]] = set()
        self.on_rate_limit: list[Callable[[str, float], None]] = []
        self.bad_frames = 0                  # websocket frames ccxt could not handle (skipped)

    async def start(self) -> None:
        self.bridge.start()
        try:
            self.ex = await self.bridge.call(_make_exchange, self.settings)
            self._tap_order_updates(self.ex)
            self._skip_bad_frames(self.ex)
            await self.rest(self.ex.load_markets)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.stop()
            raise
        self.markets = {m['id'].lower(): m for m in self.ex.markets.values() if m.get('spot')}
        log.info('binance: %d spot markets from %s', len(self.markets), self.settings.rest_url)

    def _tap_order_updates(self, ex: Any) -> None:
        """Hand every raw ``executionReport`` to :attr:`report_sinks` before ccxt parses it
        (ccxt's order cache keeps only an order's latest state: a fill and the next update
        arriving together would lose the fill)."""
        original = ex.handle_order_update

        def tap(client: Any, message: Any) -> Any:
            event = message.get('event', message) if isinstance(message, dict) else message
            if isinstance(event, dict) and event.get('e') == 'executionReport':
                for sink in list(self.report_sinks):
                    try:
                        sink(event)
                    except Exception:
                        log.exception('binance: execution report sink failed')
            return original(client, message)

        ex.handle_order_update = tap

    def _skip_bad_frames(self, ex: Any) -> None:
        """Log and skip a websocket frame that ccxt's parser raises on. ccxt handles frames in
        its receive loop's done-callback: an exception there is only printed by asyncio and the
        loop is never rescheduled, so that connection (a quote feed, or the user stream with
        every order's fills) would go silent without an error to reconnect on."""
        original = ex.handle_message   # ccxt's clients take it when they are created

        def guarded(client: Any, message: Any) -> Any:
            try:
                return original(client, message)
            except Exception as err:
                self.bad_frames += 1
                log.warning('binance: skipped a websocket frame ccxt could not handle (%d so far): '
                            '%.300r (%r)', self.bad_frames, message, err)
                return None

        ex.handle_message = guarded

    async def stop(self) -> None:
        if self.ex is not None and self.bridge.loop is not None:
            try:
                await self.bridge.call(self.ex.close)
            except Exception as err:
                log.warning('binance: closing the exchange: %r', err)
        self.ex = None
        await self.bridge.stop()

    # -- REST ------------------------------------------------------------------------

    async def rest(self, fn: Callable[..., Any], *args: Any, retries: int = RATE_LIMIT_RETRIES, **kw: Any) -> Any:
        """Call a ccxt REST method; venue refusals become :class:`VenueError`.

        HTTP 429/418 backs off (the venue's ``Retry-After``, else doubling from 1 s), tells the
        ``on_rate_limit`` listeners, and retries up to ``retries`` times before raising
        :class:`RateLimited`."""
        import ccxt

        delay = 1.0
        for attempt in range(retries + 1):
            try:
                return await self.bridge.call(fn, *args, **kw)
            except ccxt.DDoSProtection as err:   # 429, 418 (and RateLimitExceeded)
                headers = getattr(self.ex, 'last_response_headers', None) or {}
                try:
                    wait = float(headers.get('Retry-After') or headers.get('retry-after') or delay)
                except ValueError:
                    wait = delay
                reason, _ = venue_reason(err)
                text = f'binance rate limit (HTTP {"418" if " 418 " in str(err) else "429"}): {reason}'
                if attempt == retries:
                    raise RateLimited(text, wait) from None
                log.warning('%s; backing off %.1fs (attempt %d/%d)', text, wait, attempt + 1, retries)
                for cb in list(self.on_rate_limit):
                    cb(text, wait)
                await trio.sleep(wait)
                delay = min(delay * 2, 30.0)
            except ccxt.ExchangeError as err:
                reason, code = venue_reason(err)
                raise VenueError(reason, code) from None

    # -- symbols -------------------------------------------------------------------------

    def market(self, symbol: str) -> dict:
        market = self.markets.get(symbol.lower())
        if market is None:
            raise SymbolNotFound(f'binance has no spot market {symbol!r} (e.g. btcusdt)')
        return market

    def symbol_info(self, symbol: str) -> Symbol:
        m = self.market(symbol)
        prec = m.get('precision') or {}
        return Symbol(
            key=symbol.lower(), broker='binance', tick_size=float(prec.get('price') or 0.01),
            lot_size=float(prec.get('amount') or 1e-8), currency=str(m['quote']).lower(),
        )

    # -- market data ---------------------------------------------------------------------

    def watch(self, method: str, symbol: str) -> Callable[[], AsyncIterator[Any]]:
        """An async generator (run on the asyncio loop) of a ccxt.pro watcher's updates that
        survives disconnects and error frames: it reconnects with a doubling backoff and
        resubscribes."""
        ex = self.ex
        unified = self.market(symbol)['symbol']

        async def loop() -> AsyncIterator[Any]:
            import asyncio

            import ccxt

            backoff = 0.25
            while True:
                try:
                    if method == 'watch_bids_asks':
                        got = await ex.watch_bids_asks([unified])
                        items = list(got.values())
                    else:
                        items = await getattr(ex, method)(unified)
                    backoff = 0.25
                    for item in items:
                        yield item
                except (ccxt.NetworkError, ccxt.ExchangeError) as err:
                    # an error frame (ExchangeError) fails every watcher of the connection:
                    # subscribe again, as after a drop, rather than end the feed
                    log.warning('binance %s %s: %s; reconnecting in %.2fs', method, symbol, err, backoff)
                    yield {'_reconnecting': str(err)}
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)

        return loop

    @asynccontextmanager
    async def quotes(self, symbol: str) -> AsyncIterator[tuple[dict, AsyncIterator[dict]]]:
        """The first quote and the quote stream of one symbol (L1 ticks and trade prints)."""
        key = symbol.lower()
        state = {'symbol': key, 'last': float('nan'), 'bid': float('nan'), 'ask': float('nan'),
                 'bsize': 0.0, 'asize': 0.0, 'size': 0.0, 'volume': 0.0}
        tx, rx = trio.open_memory_channel[dict](1000)

        def on_book(info: dict) -> dict | None:
            ticks = []
            bid, bsize, ask, asize = (float(info[k]) for k in ('b', 'B', 'a', 'A'))
            if (bid, bsize) != (state['bid'], state['bsize']):
                ticks.append({'type': 'bid', 'price': bid, 'size': bsize})
            if (ask, asize) != (state['ask'], state['asize']):
                ticks.append({'type': 'ask', 'price': ask, 'size': asize})
            state.update(bid=bid, bsize=bsize, ask=ask, asize=asize, size=0.0)
            return ticks or None

        def on_trade(info: dict) -> list:
            price, size = float(info['p']), float(info['q'])
            state.update(last=price, size=size, volume=round(state['volume'] + size, 8))
            return [{'type': 'trade', 'price': price, 'size': size}]

        async def pump(method: str, handle: Callable[[dict], Any]) -> None:
            async with self.bridge.stream(self.watch(method, key)) as items:
                async for item in items:
                    if '_reconnecting' in item:
                        continue
                    try:
                        ticks = handle(item.get('info') or {})
                    except (KeyError, TypeError, ValueError) as err:  # one bad frame, not the feed
                        log.warning('binance %s for %s: skipped a malformed message %r (%r)',
                                    method, key, item.get('info'), err)
                        continue
                    if ticks:
                        quote = {**state, 'time': time.time(), 'ticks': ticks}
                        try:
                            tx.send_nowait(quote)
                        except trio.WouldBlock:   # a slow consumer loses old quotes, never blocks us
                            log.warning('binance quotes for %s: consumer lagging, dropped one', key)

        # the book as it is now (the websocket only speaks on changes, and a quiet market may
        # not change for a while); its last trade price too, if it printed one
        market = self.market(key)
        book = await self.rest(self.ex.public_get_ticker_bookticker, {'symbol': market['id']})
        on_book({'b': book['bidPrice'], 'B': book['bidQty'], 'a': book['askPrice'], 'A': book['askQty']})
        tape = await self.rest(self.ex.public_get_trades, {'symbol': market['id'], 'limit': 1})
        if tape:
            state['last'] = float(tape[-1]['price'])
        else:  # nothing printed yet: the mid stands in
            state['last'] = (state['bid'] + state['ask']) / 2
        first = {**state, 'time': time.time(), 'ticks': []}
        async with trio.open_nursery() as n:
            n.start_soon(pump, 'watch_bids_asks', on_book)
            n.start_soon(pump, 'watch_trades', on_trade)

            async def updates() -> AsyncIterator[dict]:
                async for q in rx:
                    yield q

            try:
                yield first, updates()
            finally:
                n.cancel_scope.cancel()

    # -- history -------------------------------------------------------------------------

    #: Binance kline intervals (seconds -> name).
    INTERVALS = {1: '1s', 60: '1m', 180: '3m', 300: '5m', 900: '15m', 1800: '30m', 3600: '1h',
                 7200: '2h', 14400: '4h', 21600: '6h', 28800: '8h', 43200: '12h', 86400: '1d'}

    async def history(self, symbol: str, period_s: float, count: int, end: float | None = None) -> list[tuple]:
        """``count`` bars of ``period_s`` before ``end`` from klines, aggregated from the
        largest Binance interval dividing the period (5 s bars from 1 s klines)."""
        market = self.market(symbol)
        period = max(1, int(round(period_s)))
        base = max(s for s in self.INTERVALS if period % s == 0) if period % 1 == 0 else 1
        per_bar = period // base
        end_ms = int((end or time.time()) * 1000)
        start_ms = (end_ms // (period * 1000) - count) * period * 1000
        rows: list[list] = []
        since = start_ms
        while since < end_ms and len(rows) < count * per_bar:
            page = await self.rest(self.ex.public_get_klines, {
                'symbol': market['id'], 'interval': self.INTERVALS[base], 'startTime': since,
                'endTime': end_ms - 1, 'limit': 1000})
            if not page:
                break
            rows.extend(page)
            since = int(page[-1][0]) + base * 1000
            if len(page) < 1000:
                break
        bars: dict[int, list[float]] = {}
        for r in rows:
            t = int(r[0]) // 1000 // period * period
            o, h, l, c, v = (float(x) for x in r[1:6])
            bar = bars.get(t)
            if bar is None:
                bars[t] = [o, h, l, c, v]
            else:
                bar[1], bar[2], bar[3], bar[4] = max(bar[1], h), min(bar[2], l), c, bar[4] + v
        return [(float(t), *bar) for t, bar in sorted(bars.items())][-count:]


#: How long the connection outlives its last user (a chart asks for symbol info, history and
#: quotes one after the other: each would otherwise reconnect and reload the markets).
LINGER_S = 15.0


async def _linger(venue: BinanceVenue, scope: trio.CancelScope) -> None:
    """Stop the idle connection after :data:`LINGER_S` (at once when the actor shuts down)."""
    try:
        with scope:
            await trio.sleep(LINGER_S)
    finally:
        with trio.CancelScope(shield=True):
            async with venue.lock:
                if venue.users == 0 and venue.ex is not None:
                    await venue.stop()


@asynccontextmanager
async def open_venue() -> AsyncIterator[BinanceVenue]:
    """Use this actor's Binance connection, starting it on first use; it is closed when it
    has had no user for :data:`LINGER_S` seconds, or when the actor stops."""
    import tractor

    venue: BinanceVenue = owned(_KEY, lambda: BinanceVenue(load_settings()))
    async with venue.lock:
        if venue.linger is not None:
            venue.linger.cancel()   # back in use: the pending stop sees a user and does nothing
            venue.linger = None
        if venue.ex is None:
            await venue.start()
        venue.users += 1
    try:
        yield venue
    finally:
        with trio.CancelScope(shield=True):
            async with venue.lock:
                venue.users -= 1
                if venue.users == 0:
                    venue.linger = trio.CancelScope()
                    try:
                        tractor.current_actor()._service_n.start_soon(_linger, venue, venue.linger)
                    except RuntimeError:  # the actor is going away: stop now
                        venue.linger = None
                        await venue.stop()
