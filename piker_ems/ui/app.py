"""The chart app: live bars, L1 and order mode for one symbol (``piker chart FQSN``).

:class:`ChartApp` is the trio side (pikerd, feed, EMS, order mode) and :class:`ChartWindow`
the Qt side (the chart and the status bar). Both run on the Qt main thread: trio is a guest of
Qt's event loop (:mod:`._exec`). Closing the window cancels the app's trio work *inside* the
actor tree, trio then tears the actors down and finishes, and only then does Qt quit.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from ..data._bars import BarAggregator
from ..log import get_logger
from ._chart import ChartWidget
from ._exec import ScreenshotError
from ._statusbar import FitLabel, StatusBar
from .order_mode import Notifier, OrderMode

HISTORY_BARS = 600  # backfilled bars a chart opens with (when the backend has history)

log = get_logger(__name__)

__all__ = ['ChartApp', 'ChartOptions', 'ChartWindow', 'main']

TRADE_TICKS = ('trade', 'last')
KEYS_HELP = ('f buy · d sell · a alert · +s/ctrl live · click submit · drag modify · c/del cancel'
             ' · cc all · +/- size · End follow · R auto y')


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

    def __post_init__(self) -> None:
        self.fqsn = self.fqsn.lower()
        if not self.period > 0:
            raise ValueError(f'period must be > 0 seconds, got {self.period!r}')
        if not self.size > 0:
            raise ValueError(f'size must be > 0, got {self.size!r}')
        if self.screenshot and self.exit_after is None:
            self.exit_after = 5.0


class ChartWindow(QtWidgets.QMainWindow):
    """Main window: the chart with the status bar under it.

    Closing it never quits Qt directly: it calls :attr:`on_close` (the app cancels its trio
    work; Qt quits once trio is done).
    """

    def __init__(self, opts: ChartOptions) -> None:
        super().__init__()
        self.setWindowTitle(f'piker chart {opts.fqsn}')
        self.chart = ChartWidget(opts.fqsn, period_s=opts.period)
        self.status = StatusBar(self)
        self.setCentralWidget(self.chart)
        self.setStatusBar(self.status)
        self.chart.info_label.setToolTip(KEYS_HELP)
        # the key hints elide (whole text in the tooltip): they must never hold the window wide
        self.help_label = FitLabel(self.chart, min_width=0)
        self.help_label.setStyleSheet('color: #5d6577; background: transparent;')
        font = QtGui.QFont()
        font.setPointSizeF(8.5)
        self.help_label.setFont(font)
        self.help_label.setAlignment(QtCore.Qt.AlignRight | QtCore.Qt.AlignVCenter)
        self.help_label.set_parts([(t, '#5d6577') for t in KEYS_HELP.split(' · ')])
        header = self.chart.layout().itemAt(0).widget()
        header.layout().addWidget(self.help_label)
        self.on_close: Callable[[], None] | None = None
        self.resize(opts.width, opts.height)

    def closeEvent(self, ev: QtGui.QCloseEvent) -> None:  # noqa: N802
        """Route the close through trio (see module docstring)."""
        if self.on_close is not None:
            self.on_close()
        ev.accept()


class ChartApp:
    """The running chart: call :meth:`run` as the trio guest's main function.

    Public state for tests and tools: :attr:`mode` (the :class:`OrderMode` once the EMS is
    connected), :attr:`book`, :attr:`nursery` (for extra tasks while the app runs) and
    :attr:`aggregator` (the bars).
    """

    def __init__(self, opts: ChartOptions, window: ChartWindow | None = None) -> None:
        self.opts = opts
        self.window = window or ChartWindow(opts)
        self.chart: ChartWidget = self.window.chart
        self.status: StatusBar = self.window.status
        self.aggregator = BarAggregator(opts.period)
        self.mode: OrderMode | None = None
        self.book: Any = None
        self.feed: Any = None
        self.nursery: Any = None
        self.screenshot_path: Path | None = None
        self.quotes = 0
        self._l1: tuple | None = None
        self._last: float | None = None
        self._cs: Any = None
        self._token: Any = None
        self._close_requested = False
        self.window.on_close = self.close

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the app (window closed, --exit-after): cancels its trio work, thread-safe."""
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

    def _cancel(self) -> None:
        if self._cs is not None:
            self._cs.cancel()

    async def run(self) -> int:
        """pikerd (join or become), feed, EMS and order mode, until the window closes."""
        import trio

        from ..service import maybe_open_pikerd

        opts = self.opts
        self._token = trio.lowlevel.current_trio_token()
        self.window.show()
        self.chart.setFocus()
        self.status.set_info(f'{opts.account}')
        connecting = self.status.open_status('connecting to pikerd..')
        try:
            async with maybe_open_pikerd(
                opts.registry, loglevel=opts.loglevel, name='chart',
                tractor_loglevel=opts.tractor_loglevel,
            ) as services:
                connecting()
                if services is not None:
                    self.status.set_info(f'{opts.account} · pikerd in this chart')
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
                        await self._run_chart(n)
                self._cs = None
        finally:
            connecting()
        return 0

    async def _close_on_signal(self) -> None:
        """SIGTERM/SIGHUP close the chart like its window does (also when not pikerd)."""
        import signal

        import trio

        try:
            receiver = trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP)
        except (RuntimeError, ValueError):   # not the main thread: nothing to do
            return
        with receiver as signals:
            async for signum in signals:
                log.warning('received %s: closing the chart', signal.Signals(signum).name)
                self._cancel()
                return

    async def _exit_after(self, seconds: float) -> None:
        import trio

        await trio.sleep(seconds)
        if self.opts.screenshot:
            self.screenshot_path = self.save_screenshot(self.opts.screenshot)
        self._cancel()

    def save_screenshot(self, path: str | Path) -> Path:
        """Grab the whole window into a PNG."""
        path = Path(path)
        pixmap = self.window.grab()
        if pixmap.isNull() or not pixmap.save(str(path), 'PNG'):
            raise ScreenshotError(f'could not write the screenshot to {path}')
        log.info('screenshot saved to %s', path)
        return path

    # -- feed -------------------------------------------------------------------------------

    async def _run_chart(self, nursery) -> None:
        import trio

        from ..data.feed import open_feed

        fqsn = self.opts.fqsn
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
                nursery.start_soon(self._feed_loop, feed)
                await self._order_mode_loop()
                await trio.sleep_forever()
        finally:
            loading()

    async def _load_history(self) -> None:
        """Open with the backend's backfill (if it has one) instead of an empty plot."""
        import trio

        from ..data.feed import fetch_history

        try:
            with trio.move_on_after(5):
                hist = await fetch_history(
                    self.opts.fqsn, self.opts.period, HISTORY_BARS, loglevel=self.opts.loglevel)
                if len(hist):
                    self.aggregator.load(hist)
        except Exception as err:  # history is a nicety: the live chart works without it
            log.warning('no history for %s: %r', self.opts.fqsn, err)

    async def _feed_loop(self, feed) -> None:
        import trio

        from ..data.feed import FeedLost

        fqsn = self.opts.fqsn
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
            self.status.show_error(f'quotes stopped: {err}', sticky=True)

    def on_quote(self, quote: dict) -> None:
        """Fold one quote (its ticks) into the bars, L1 and last price."""
        self.quotes += 1
        ts = quote.get('time') or time.time()
        traded = False
        for tick in quote.get('ticks') or ():
            if tick.get('type') in TRADE_TICKS and tick.get('price') is not None:
                self.aggregator.update(ts, tick['price'], tick.get('size') or 0.0, is_trade=True)
                traded = True
        bid, ask = quote.get('bid'), quote.get('ask')
        if not traded and _finite(bid) and _finite(ask):
            self.aggregator.update(ts, (bid + ask) / 2, is_trade=False)
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
        if self._close_requested:
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
        from ..clearing import EmsLost, open_ems_watching

        opts = self.opts
        starting = self.status.open_status('starting order mode..')
        try:
            async with open_ems_watching(
                opts.fqsn, 'symbol', lambda _: self.status.open_status(
                    'order mode: your own orders only (no watch role)', clear_on_next=True),
                mode='paper' if opts.account == 'paper' else 'live',
                account=opts.account, name=opts.name, loglevel=opts.loglevel,
                control_others=opts.control_others,
            ) as (book, trades, positions):
                self.book = book
                symbol = self.feed.symbols.get(opts.fqsn) if self.feed is not None else None
                mode = OrderMode(
                    self.chart, self.status, book, size=opts.size,
                    lot_size=getattr(symbol, 'lot_size', None),
                    notify=Notifier(opts.notify), fqsn=opts.fqsn,
                    control_others=opts.control_others,
                )
                mode.load(book.open_orders, positions)
                mode.connect()
                self.mode = mode
                starting()
                try:
                    async for msg in trades:
                        if self._close_requested:
                            break  # don't draw into a window that is closing
                        mode.on_msg(msg)
                    self.status.show_error('emsd closed the connection: order mode off', sticky=True)
                except EmsLost as err:
                    log.error('%s', err)
                    self.status.show_error(f'order mode off: lost the EMS: {err}', sticky=True)
                finally:
                    mode.disconnect()
                    self.mode = None
        except Exception as err:  # the chart stays useful without order mode
            log.exception('order mode failed')
            self.status.show_error(f'order mode unavailable: {_one_line(err)}', sticky=True)
        finally:
            starting()


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
