"""One dark-trigger scan per (broker, symbol), owned by emsd, and the directory that holds them.

The scan holds the symbol's feed and its :class:`~._darkbook.DarkBook`; every tick of every
quote is checked against price-sorted triggers, so dark orders and alerts fire with no client
connected, exactly once, at a cost that does not grow with the number of resting orders.

A fire is reported to a *sink* (emsd's Router, duck-typed: ``on_trigger(st, tick_type, price,
tick_size)``); this module does not import the Router. A scan nobody needs any more (no resting
order, no live order, no client on the symbol) is closed by the Router through
:meth:`ScanDirectory.close`, which ends its feed subscription.
"""
from __future__ import annotations

from typing import Any, Callable

import trio

from ..data import FeedLost, open_feed
from ..log import get_logger
from ..service._specs import ServiceDown, remote_error
from ..symbols import Symbol
from ._darkbook import DarkBook
from ._outage import OutageLog

log = get_logger(__name__)

RETRY_S = 1.0


class DarkScan:
    """The trigger book, symbol info and last price of one symbol."""

    def __init__(self, fqsn: str) -> None:
        self.fqsn = fqsn
        self.book = DarkBook()
        self.symbol: Symbol | None = None
        self.last: float | None = None
        self.failed: str | None = None  # why the feed could not be opened (the scan is dead)
        self.down = False  # ... because its brokerd was started elsewhere and is down (ServiceDown)
        self.quotes = 0
        self.ready = trio.Event()   # set once symbol info and a first price are known, or failed
        self.scope = trio.CancelScope()
        self.sink: Any = None
        # (a lost feed is retried every second: its outage is logged once, not per attempt)
        self.outage = OutageLog(log, 'feed of the dark scan of')

    def __len__(self) -> int:
        return len(self.book)

    def arm(self, st: Any, direction: str | None = None) -> Any:
        """Rest (or re-arm, for a modify) a dark order/alert at its price; returns its entry.

        The direction is chosen from the last price, or forced (a restored order keeps the
        direction it was placed with)."""
        return self.book.arm(st.oid, st.req.action, st.req.price, self.last, payload=st,
                             direction=direction)

    def disarm(self, oid: str) -> None:
        """Remove a resting order; it can never fire afterwards."""
        self.book.disarm(oid)

    async def wait_ready(self, timeout: float) -> None:
        """Wait for the first quote (or the failure); raises TimeoutError after ``timeout``."""
        with trio.fail_after(timeout):
            await self.ready.wait()

    def on_quote(self, quote: dict) -> None:
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
                try:
                    self.sink.on_trigger(entry.payload, ttype, price, self.symbol.tick_size)
                except Exception:
                    log.exception('trigger of %s failed', entry.oid)
        if self.last is None and quote.get('last') is not None:
            self.last = quote['last']

    async def run(self, loglevel: str | None = None) -> None:
        """Keep the symbol's feed open and scan every quote, until the scan is closed."""
        with self.scope:
            while await self._run_feed(loglevel):
                await trio.sleep(RETRY_S)

    async def _run_feed(self, loglevel: str | None) -> bool:
        """Scan one feed connection; True: reconnect, False: give up (it never started)."""
        try:
            async with open_feed([self.fqsn], loglevel=loglevel, subscriber='emsd') as feed:
                self.symbol = feed.symbols[self.fqsn]
                first = feed.first_quotes[self.fqsn]
                if self.last is None:
                    self.last = first.get('last') or first.get('bid')
                self.ready.set()
                self.outage.up(self.fqsn)
                async for packet in feed.stream:
                    quote = packet.get(self.fqsn)
                    if quote is not None:
                        try:
                            self.on_quote(quote)
                        except Exception:
                            log.exception('dark scan for %s failed on a quote; continuing', self.fqsn)
        except* FeedLost as eg:
            self.outage.down(self.fqsn, f'{eg.exceptions[0]} (reconnecting)')
        except* Exception as eg:
            err = eg.exceptions[0]
            if not self.ready.is_set():
                self.failed = str(err) or f'feed for {self.fqsn} failed ({type(err).__name__})'
                self.down = remote_error(eg, ServiceDown) is not None
                self.ready.set()
                log.warning('dark scan for %s could not start: %s', self.fqsn, self.failed)
            else:
                self.outage.down(self.fqsn, f'{type(err).__name__}: {err} (reconnecting)')
        return self.failed is None


class ScanDirectory:
    """emsd's scans, one per symbol, started in the service nursery on first need."""

    def __init__(self, start_soon: Callable[..., Any], loglevel: str | None = None) -> None:
        self.start_soon = start_soon
        self.loglevel = loglevel
        self.scans: dict[str, DarkScan] = {}
        self.sink: Any = None

    def bind(self, sink: Any) -> None:
        self.sink = sink

    def get(self, fqsn: str) -> DarkScan:
        scan = self.scans.get(fqsn)
        if scan is None or scan.failed:
            scan = self.scans[fqsn] = DarkScan(fqsn)
            scan.sink = self.sink
            self.start_soon(self._run, scan)
        return scan

    async def _run(self, scan: DarkScan) -> None:
        try:
            await scan.run(self.loglevel)
        finally:
            if not scan.ready.is_set():
                scan.failed = scan.failed or 'the scan was closed'
                scan.ready.set()
            if self.scans.get(scan.fqsn) is scan and scan.failed:
                del self.scans[scan.fqsn]

    def peek(self, fqsn: str) -> DarkScan | None:
        return self.scans.get(fqsn)

    def close(self, fqsn: str) -> None:
        scan = self.scans.pop(fqsn, None)
        if scan is not None:
            log.info('closing the idle scan of %s', fqsn)
            scan.scope.cancel()

    def all(self) -> list[DarkScan]:
        return list(self.scans.values())
