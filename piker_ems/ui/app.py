"""The chart app: live bars, L1 and order mode for one or more symbols
(``piker chart FQSN [FQSN...]``), one tab each.

:class:`ChartApp` is the trio side (pikerd, and per symbol a :class:`SymbolSession`: feed, EMS,
order mode) and :class:`ChartWindow` the Qt side (a tab per symbol with its chart and status
bar, the key help overlay, the close dialog). Both run on the Qt main thread: trio is a guest
of Qt's event loop (:mod:`._exec`). Closing the window cancels the app's trio work *inside* the
actor tree, trio then tears the actors down and finishes, and only then does Qt quit.

A chart that hosts pikerd (nothing was listening when it started) holds the dark orders of
every client in its process: closing it with orders resting asks first (:class:`CloseDialog`),
and can keep pikerd serving in the background after the window is gone.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..data._bars import BarAggregator, fold_quote
from ..log import get_logger
from ._chart import ChartWidget
from ._exec import ScreenshotError
from ._statusbar import StatusBar
from ._window import KEYS_HELP, KEYS_TABLE, ChartWindow, CloseDialog, SymbolPage
from .order_mode import Notifier, OrderMode, orders

HISTORY_BARS = 600  # backfilled bars a chart opens with (when the backend has history)

log = get_logger(__name__)

__all__ = ['ChartApp', 'ChartOptions', 'ChartWindow', 'KEYS_HELP', 'KEYS_TABLE', 'SymbolSession', 'main']

#: seconds the close dialog's 'cancel my orders' waits for emsd's confirmations
CANCEL_WAIT_S = 5.0


@dataclass
class ChartOptions:
    """What ``piker chart`` was asked for."""

    fqsn: str
    period: float = 5.0
    size: float = 1.0
    account: str = 'paper'
    name: str = 'chart'
    registry: tuple[str, int] | None = None
    loglevel: str | None = 'warning'
    tractor_loglevel: str | None = None
    screenshot: str | None = None
    exit_after: float | None = None
    notify: bool = False
    control_others: bool = False  # this session may cancel/drag other clients' orders
    width: int = 1280
    height: int = 760
    more: list[str] = field(default_factory=list)   # further symbols, a tab each

    def __post_init__(self) -> None:
        self.fqsn = self.fqsn.lower()
        self.more = [f.lower() for f in self.more if f.lower() != self.fqsn]
        if not self.period > 0:
            raise ValueError(f'period must be > 0 seconds, got {self.period!r}')
        if not self.size > 0:
            raise ValueError(f'size must be > 0, got {self.size!r}')
        if self.screenshot and self.exit_after is None:
            self.exit_after = 5.0

    @property
    def fqsns(self) -> list[str]:
        return list(dict.fromkeys([self.fqsn, *self.more]))


class SymbolSession:
    """One symbol's tab at work: its feed, bars, L1, EMS connection and order mode.

    Public state for tests and tools: :attr:`mode` (the :class:`OrderMode` once the EMS is
    connected), :attr:`book`, :attr:`feed` and :attr:`aggregator` (the bars).
    """

    def __init__(self, app: 'ChartApp', page: SymbolPage) -> None:
        self.app = app
        self.opts = app.opts
        self.fqsn = page.fqsn
        self.page = page
        self.chart: ChartWidget = page.chart
        self.status: StatusBar = page.status
        self.aggregator = BarAggregator(app.opts.period)
        self.mode: OrderMode | None = None
        self.book: Any = None
        self.feed: Any = None
        self.quotes = 0
        self.state = 'connecting'
        self._l1: tuple | None = None
        self._last: float | None = None
        self._through: float | None = None   # quotes up to then are in the loaded history
        #: replaced after each EMS message (the close dialog's cancel waits on it)
        self.msg_event: Any = None

    def set_state(self, state: str) -> None:
        """The tab and status bar say whether this symbol is live."""
        self.state = state
        self.app.window.set_tab_state(self.page, state)
        self.app.show_info()

    # -- feed -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Feed, history and order mode for this tab, until the app is cancelled."""
        import trio

        from ..data.feed import open_feed

        fqsn = self.fqsn
        self.msg_event = trio.Event()
        self.set_state('connecting')
        loading = self.status.open_status(f'loading {fqsn}..')
        try:
            async with open_feed(fqsn, loglevel=self.opts.loglevel) as feed:
                loading()
                self.feed = feed
                symbol = feed.symbols.get(fqsn)
                if symbol is not None:
                    self.chart.set_tick_size(symbol.tick_size)
                await self._load_history()
                first = feed.first_quotes.get(fqsn)
                if first:
                    self.on_quote(first)
                    self.redraw()
                async with trio.open_nursery() as n:
                    n.start_soon(self._feed_loop, feed)
                    await self._order_mode_loop()
                    await trio.sleep_forever()
        finally:
            loading()

    async def _load_history(self) -> None:
        """Open with brokerd's bars for the symbol (the same for every chart) instead of an
        empty plot."""
        import trio

        from ..data.feed import fetch_history

        try:
            with trio.move_on_after(5):
                hist = await fetch_history(
                    self.fqsn, self.opts.period, HISTORY_BARS, loglevel=self.opts.loglevel)
                if len(hist):
                    self.aggregator.load(hist.bars)
                    self._through = hist.through
        except Exception as err:  # history is a nicety: the live chart works without it
            log.warning('no history for %s: %r', self.fqsn, err)

    async def _feed_loop(self, feed) -> None:
        import trio

        from ..data.feed import FeedLost

        fqsn = self.fqsn
        try:
            while True:
                batch = [await feed.stream.receive()]
                while True:   # drain what is queued, then draw once
                    try:
                        batch.append(feed.stream.rx.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        break
                for packet in batch:
                    quote = packet.get(fqsn)
                    if quote:
                        self.on_quote(quote)
                self.redraw()
        except FeedLost as err:
            if feed.stream.lost:     # brokerd died or hung (not our own teardown)
                log.error('%s', err)
            self.set_state('lost')
            self.status.show_error(f'quotes stopped: {err}', sticky=True)

    def on_quote(self, quote: dict) -> None:
        """Fold one quote (its ticks) into the bars, L1 and last price.

        Quotes brokerd had already folded into the history we loaded (buffered while it was
        fetched) update L1 and last only: counting them again would make our bars differ
        from every other chart's.
        """
        self.quotes += 1
        ts = quote.get('time')
        if self._through is None or ts is None or ts > self._through:
            fold_quote(self.aggregator, quote, now=time.time())
        bid, ask = quote.get('bid'), quote.get('ask')
        self._l1 = (bid, ask, quote.get('bsize'), quote.get('asize'))
        last = quote.get('last')
        if _finite(last):
            self._last = last

    @property
    def last_price(self) -> float | None:
        """The last traded price seen on the feed."""
        return self._last

    def redraw(self) -> None:
        """Push the latest bars, L1 and last price to the chart."""
        if self.app.closing:
            return  # Qt may already be tearing the widgets down; trio is being cancelled
        self.chart.update_bars(self.aggregator.array)
        if self._l1 is not None:
            bid, ask, bsize, asize = self._l1
            self.chart.set_l1(bid if _finite(bid) else None, ask if _finite(ask) else None,
                              bsize, asize)
        if self._last is not None:
            self.chart.set_last(self._last)
        if self.mode is not None:
            self.mode.update_pnl()

    # -- order mode -------------------------------------------------------------------------

    async def _order_mode_loop(self) -> None:
        import trio

        from ..clearing import EmsLost, open_ems
        from ..service._auth import refusal

        opts = self.opts
        starting = self.status.open_status('starting order mode..')
        try:
            async with open_ems(
                self.fqsn, mode='paper' if opts.account == 'paper' else 'live',
                account=opts.account, name=opts.name, loglevel=opts.loglevel, watch='symbol',
                control_others=opts.control_others,
            ) as (book, trades, positions):
                self.book = book
                symbol = self.feed.symbols.get(self.fqsn) if self.feed is not None else None
                mode = OrderMode(
                    self.chart, self.status, book, size=opts.size,
                    lot_size=getattr(symbol, 'lot_size', None),
                    notify=Notifier(opts.notify), fqsn=self.fqsn,
                    control_others=opts.control_others,
                )
                mode.load(book.open_orders, positions)
                mode.connect()
                self.mode = mode
                starting()
                self.set_state('ok')
                try:
                    async for msg in trades:
                        if self.app.closing:
                            break  # don't draw into a window that is closing
                        mode.on_msg(msg)
                        self.msg_event.set()
                        self.msg_event = trio.Event()
                    self.set_state('lost')
                    self.status.show_error('emsd closed the connection: order mode off', sticky=True)
                except EmsLost as err:
                    log.error('%s', err)
                    self.set_state('lost')
                    self.status.show_error(f'order mode off: lost the EMS: {err}', sticky=True)
                finally:
                    mode.disconnect()
                    self.mode = None
        except Exception as err:  # the chart stays useful without order mode
            refused = refusal(err)
            if refused is not None:   # e.g. --control-others without the role: say so, once
                log.error('order mode refused for %s: %s', self.fqsn, refused)
                self.status.show_error(f'order mode refused: {refused}', sticky=True)
            else:
                log.exception('order mode failed')
                self.status.show_error(f'order mode unavailable: {_one_line(err)}', sticky=True)
            self.set_state('lost')
        finally:
            starting()

    def resting(self) -> list:
        """Order lines that stop working with the pikerd hosting them: dark orders and alerts
        (held by emsd), and on the paper account every order (the paper engine is in the
        tree too). Ours and other clients'."""
        paper = self.opts.account == 'paper'
        return [ln for ln in self.chart.lines()
                if ln.confirmed and (ln.exec_mode == 'dark' or ln.action == 'alert' or paper)]


class ChartApp:
    """The running chart: call :meth:`run` as the trio guest's main function.

    Public state for tests and tools: :attr:`sessions` (one :class:`SymbolSession` per tab;
    :attr:`mode`, :attr:`book`, :attr:`chart`, :attr:`status`, :attr:`aggregator` and
    :attr:`last_price` are the first tab's), :attr:`nursery` (for extra tasks while the app
    runs), :attr:`hosts_pikerd`, :attr:`close_dialog` and :attr:`background` (pikerd kept
    serving after the window closed).
    """

    def __init__(self, opts: ChartOptions, window: ChartWindow | None = None) -> None:
        self.opts = opts
        self.window = window or ChartWindow(opts)
        self.sessions: list[SymbolSession] = []
        for fqsn in opts.fqsns:
            self._new_session(fqsn)
        self.nursery: Any = None
        self.screenshot_path: Path | None = None
        self.hosts_pikerd = False
        self.background = False
        self.close_dialog: CloseDialog | None = None
        self._cs: Any = None
        self._token: Any = None
        self._close_requested = False
        self._stop_background: Any = None
        self.window.on_close = self.request_close
        self.window.on_add_symbol = self.add_symbol
        self.window.setWindowTitle(f'piker chart {" ".join(opts.fqsns)}')

    def _new_session(self, fqsn: str) -> SymbolSession:
        page = self.window.page_for(fqsn) or self.window.add_page(fqsn)
        session = SymbolSession(self, page)
        self.sessions.append(session)
        return session

    # the first tab's state (what a one-symbol chart is)
    @property
    def first(self) -> SymbolSession:
        return self.sessions[0]

    @property
    def chart(self) -> ChartWidget:
        return self.first.chart

    @property
    def status(self) -> StatusBar:
        return self.first.status

    @property
    def mode(self) -> OrderMode | None:
        return self.first.mode

    @property
    def book(self) -> Any:
        return self.first.book

    @property
    def feed(self) -> Any:
        return self.first.feed

    @property
    def aggregator(self) -> BarAggregator:
        return self.first.aggregator

    @property
    def last_price(self) -> float | None:
        return self.first.last_price

    @property
    def quotes(self) -> int:
        return self.first.quotes

    @property
    def closing(self) -> bool:
        return self._close_requested

    def session(self, fqsn: str) -> SymbolSession | None:
        return next((s for s in self.sessions if s.fqsn == fqsn.lower()), None)

    def show_info(self) -> None:
        """Account and connection on every tab's status bar and in the window title."""
        where = 'pikerd in this chart' if self.hosts_pikerd else 'pikerd'
        if self.background:
            where = 'pikerd in the background'
        for s in self.sessions:
            # the tab's dot says 'ok'; trouble is spelled out here too
            state = '' if s.state == 'ok' else f' · {s.state}'
            s.status.set_info(f'{self.opts.account} · {where}{state}')
        cur = self.window.page
        state = next((s.state for s in self.sessions if s.page is cur), '')
        self.window.setWindowTitle(
            f'piker chart {cur.fqsn} — {self.opts.account} · {where} · {state}')

    # -- symbols ----------------------------------------------------------------------------

    def add_symbol(self, fqsn: str) -> SymbolSession | None:
        """A new tab for ``fqsn`` (or show its tab if it has one), without restarting."""
        from ..symbols import parse_fqsn

        fqsn = fqsn.strip().lower()
        try:
            parse_fqsn(fqsn)
        except Exception as err:  # noqa: BLE001 - a typo in the field: say so, carry on
            self.window.status.show_error(f'{fqsn!r}: {_one_line(err)}')
            return None
        existing = self.session(fqsn)
        if existing is not None:
            self.window.show_page(fqsn)
            return existing
        session = self._new_session(fqsn)
        self.window.show_page(fqsn)
        if self.nursery is not None:
            self.spawn(session.run)
        return session

    # -- lifecycle ------------------------------------------------------------------------

    def resting(self) -> list:
        """Every tab's order lines that stop with this chart's pikerd."""
        return [ln for s in self.sessions for ln in s.resting()]

    def request_close(self) -> bool:
        """The window is closing (its close button, Ctrl+Q): True if it may close now.

        A chart that hosts pikerd with orders resting there asks first (:class:`CloseDialog`)
        instead of silently stopping them.
        """
        if self._close_requested or self.background:
            return True
        resting = self.resting() if self.hosts_pikerd else []
        if not resting:
            self.close()
            return True
        if self.close_dialog is not None:
            self.close_dialog.raise_()
            return False
        mine = [ln for ln in resting if not ln.foreign]
        theirs = len(resting) - len(mine)
        verb = 'rests' if len(resting) == 1 else 'rest'
        text = (f'{orders(len(resting))} {verb} in the pikerd this chart runs'
                + (f' ({theirs} of other clients)' if theirs else '') + '.')
        detail = ('Closing the chart stops pikerd: its dark orders and alerts (and paper orders) '
                  'would no longer be watched or filled.\n\nKeep pikerd running in the '
                  'background (stop it later with kill or Ctrl+C), cancel your orders and close, '
                  "or don't close.")
        self.close_dialog = CloseDialog(self.window, text, detail, self._on_close_choice)
        self.close_dialog.open()
        return False

    def _on_close_choice(self, choice: str) -> None:
        self.close_dialog = None
        if choice == 'keep':
            self.keep_in_background()
        elif choice == 'cancel':
            self.spawn(self._cancel_then_close)

    def keep_in_background(self) -> None:
        """Close the chart but keep this process serving as pikerd (its services and every
        client's orders) until SIGTERM/SIGINT; SIGHUP (a closed terminal) no longer stops it."""
        import os
        import sys

        self.background = True
        host, port = self.opts.registry or ('127.0.0.1', 0)
        line = (f'pikerd keeps running in the background (pid {os.getpid()}, registry '
                f'{host}:{port}): stop it with `kill {os.getpid()}`')
        log.info('%s', line)
        print(line, file=sys.stderr, flush=True)   # whatever the log level: the user must know
        self.window.hide()
        self.close()

    async def _cancel_then_close(self) -> None:
        """Cancel our resting orders on every tab, wait (bounded) for emsd to confirm, close."""
        import trio

        targets = []
        for s in self.sessions:
            oids = [ln.oid for ln in s.resting() if not ln.foreign]
            if oids and s.mode is not None:
                s.mode.cancel_oids(oids)
                targets.append((s, set(oids)))
        with trio.move_on_after(CANCEL_WAIT_S):
            for s, oids in targets:
                while any(s.chart.get_line(o) is not None for o in oids):
                    await s.msg_event.wait()
        left = sum(1 for s, oids in targets for o in oids if s.chart.get_line(o) is not None)
        if left:
            log.warning('closing with %s unconfirmed', orders(left))
        self.close()

    def close(self) -> None:
        """Stop the chart (window closed, --exit-after): cancels its trio work, thread-safe."""
        self._close_requested = True
        if self._token is not None:
            try:
                self._token.run_sync_soon(self._cancel)
            except RuntimeError:   # trio already finished
                pass

    def spawn(self, async_fn: Callable[..., Any], *args: Any) -> None:
        """Start ``async_fn(*args)`` in the app's nursery, from any code (thread-safe)."""
        if self._token is None or self.nursery is None:
            raise RuntimeError('the chart app is not running')
        self._token.run_sync_soon(lambda: self.nursery.start_soon(async_fn, *args))

    def stop_background(self) -> None:
        """End a pikerd kept in the background (what SIGTERM does)."""
        if self._stop_background is not None:
            self._token.run_sync_soon(self._stop_background.set)

    def _cancel(self) -> None:
        if self._cs is not None:
            self._cs.cancel()

    async def run(self) -> int:
        """pikerd (join or become), then a feed, EMS and order mode per tab, until the
        window closes (then, if asked, pikerd keeps serving in the background)."""
        import trio

        from ..service import maybe_open_pikerd

        opts = self.opts
        self._token = trio.lowlevel.current_trio_token()
        self.window.show()
        self.chart.setFocus()
        self.show_info()
        connecting = self.status.open_status('connecting to pikerd..')
        try:
            async with maybe_open_pikerd(
                opts.registry, loglevel=opts.loglevel, name='chart',
                tractor_loglevel=opts.tractor_loglevel,
            ) as services:
                connecting()
                self.hosts_pikerd = services is not None
                self.show_info()
                # the app's work lives in this scope, *inside* the actor tree: cancelling it
                # (window closed) lets tractor tear its actors down normally
                with trio.CancelScope() as cs:
                    self._cs = cs
                    if self._close_requested:
                        cs.cancel()
                    async with trio.open_nursery() as n:
                        self.nursery = n
                        n.start_soon(self._close_on_signal)
                        if opts.exit_after is not None:
                            n.start_soon(self._exit_after, opts.exit_after)
                        for s in list(self.sessions):
                            n.start_soon(s.run)
                        await trio.sleep_forever()
                self._cs = None
                self.nursery = None
                if self.background and services is not None:
                    await self._serve_in_background()
        finally:
            connecting()
        return 0

    async def _serve_in_background(self) -> None:
        """The window is gone; pikerd (this process) serves until SIGTERM/SIGINT or
        :meth:`stop_background`."""
        import signal

        import trio

        self._stop_background = stop = trio.Event()
        old_hup = None
        try:
            old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        except ValueError:   # not the main thread
            pass
        try:
            async with trio.open_nursery() as n:
                async def on_signal() -> None:
                    try:
                        receiver = trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT)
                    except (RuntimeError, ValueError):
                        return
                    with receiver as signals:
                        async for signum in signals:
                            log.warning('received %s: stopping the background pikerd',
                                        signal.Signals(signum).name)
                            stop.set()
                            return

                n.start_soon(on_signal)
                await stop.wait()
                n.cancel_scope.cancel()
        finally:
            if old_hup is not None:
                signal.signal(signal.SIGHUP, old_hup)

    async def _close_on_signal(self) -> None:
        """SIGTERM/SIGHUP close the chart like its window does (also when not pikerd), without
        asking: nobody may be there to answer."""
        import signal

        import trio

        try:
            receiver = trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP)
        except (RuntimeError, ValueError):   # not the main thread: nothing to do
            return
        with receiver as signals:
            async for signum in signals:
                log.warning('received %s: closing the chart', signal.Signals(signum).name)
                self._close_requested = True
                self._cancel()
                return

    async def _exit_after(self, seconds: float) -> None:
        import trio

        await trio.sleep(seconds)
        if self.opts.screenshot:
            self.screenshot_path = self.save_screenshot(self.opts.screenshot)
        self._close_requested = True
        self._cancel()

    def save_screenshot(self, path: str | Path) -> Path:
        """Grab the whole window into a PNG."""
        path = Path(path)
        pixmap = self.window.grab()
        if pixmap.isNull() or not pixmap.save(str(path), 'PNG'):
            raise ScreenshotError(f'could not write the screenshot to {path}')
        log.info('screenshot saved to %s', path)
        return path


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else type(err).__name__


def main(opts: ChartOptions) -> int:
    """Run the chart app until its window closes (or ``--exit-after``); returns 0."""
    from ._exec import run_qt

    async def trio_main() -> int:
        return await ChartApp(opts).run()

    return run_qt(trio_main, app_name='piker')
