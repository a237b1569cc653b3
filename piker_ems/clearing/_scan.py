"""One dark-trigger scan per (broker, symbol), owned by emsd.

The scan holds the symbol's feed and its :class:`~._darkbook.DarkBook`; every tick of every
quote is checked against price-sorted triggers, so dark orders and alerts fire with no client
connected, exactly once, at a cost that does not grow with the number of resting orders.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ..data import FeedLost, open_feed
from ..log import get_logger
from ..symbols import Symbol
from ._darkbook import DarkBook

if TYPE_CHECKING:
    from ._orders import OrderState
    from ._router import Router

log = get_logger(__name__)

RETRY_S = 1.0


class DarkScan:
    """The trigger book and last price of one symbol."""

    def __init__(self, router: 'Router', broker: str, symbol: str) -> None:
        self.router = router
        self.broker = broker
        self.key = symbol
        self.fqsn = f'{symbol}.{broker}'
        self.book = DarkBook()
        self.symbol: Symbol | None = None
        self.last: float | None = None
        self.quotes = 0
        self.connected = trio.Event()

    def arm(self, st: 'OrderState') -> None:
        """Rest (or re-arm, for a modify) a dark order/alert at its price."""
        self.book.arm(st.oid, st.req.action, st.req.price, self.last, payload=st)
        st.phase = 'dark'

    def disarm(self, oid: str) -> None:
        """Remove a resting order; it can never fire afterwards."""
        self.book.disarm(oid)

    async def on_quote(self, quote: dict) -> None:
        """Check every tick of a quote against the book, in arrival order."""
        self.quotes += 1
        for tick in quote.get('ticks', ()):
            ttype, price = tick.get('type'), tick.get('price')
            if price is None:
                continue
            if ttype in ('trade', 'last'):
                self.last = price
            if not self.book:
                continue
            for entry in self.book.on_tick(ttype, price):
                st = entry.payload
                if st.phase != 'dark':
                    continue  # cancelled or modified away in the meantime
                await self.router.on_trigger(st, ttype, price, self.symbol.tick_size)
        if self.last is None and quote.get('last') is not None:
            self.last = quote['last']

    @classmethod
    async def run(cls, router: 'Router', broker: str, symbol: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Start the scan (reporting it once its first quote is known) and keep its feed alive."""
        scan = cls(router, broker, symbol)
        started = False
        while True:
            try:
                async with open_feed([scan.fqsn], loglevel=router.loglevel, subscriber='emsd') as feed:
                    scan.symbol = feed.symbols[scan.fqsn]
                    first = feed.first_quotes[scan.fqsn]
                    if scan.last is None:
                        scan.last = first.get('last') or first.get('bid')
                    if not started:
                        started = True
                        task_status.started(scan)
                    scan.connected.set()
                    async for packet in feed.stream:
                        quote = packet.get(scan.fqsn)
                        if quote is not None:
                            try:
                                await scan.on_quote(quote)
                            except Exception:
                                log.exception('dark scan for %s failed on a quote; continuing', scan.fqsn)
            except* FeedLost as eg:
                log.error('dark scan for %s lost its feed (%s); reconnecting', scan.fqsn, eg.exceptions[0])
            except* Exception as eg:
                if not started:
                    raise
                log.error('dark scan for %s: feed failed (%r); reconnecting', scan.fqsn, eg.exceptions[0])
            scan.connected = trio.Event()
            await trio.sleep(RETRY_S)
