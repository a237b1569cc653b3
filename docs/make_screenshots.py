"""Regenerate ``docs/chart.png``, ``docs/order-mode.png``, ``docs/chart-narrow.png``,
``docs/chart-tabs.png`` and ``docs/chart-help.png`` (headless, about 100 seconds).

    QT_QPA_PLATFORM=offscreen uv run python docs/make_screenshots.py [--port 6199] [--warmup 75]

Runs the real chart app (it becomes pikerd on ``--port``) against the ``sim`` market and the
paper engine, and drives order mode with the same key presses and clicks a trader would use.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')
os.environ.setdefault('PYTHONWARNINGS', 'ignore::FutureWarning')

DOCS = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--port', type=int, default=6199)
    parser.add_argument('--warmup', type=float, default=75.0, help='seconds of bars before trading')
    parser.add_argument('--out', type=Path, default=DOCS)
    args = parser.parse_args()

    cfg = Path(tempfile.mkdtemp(prefix='piker-shots-'))
    (cfg / 'piker_ems.toml').write_text('[sim]\nseed = 11\nrate = 20\nvolatility = 1.2\n')
    os.environ['PIKER_EMS_CONFIG_DIR'] = str(cfg)

    import trio
    from pyqtgraph.Qt import QtCore, QtTest

    from piker_ems.clearing import Status, open_ems
    from piker_ems.ui._exec import run_qt
    from piker_ems.ui.app import ChartApp, ChartOptions

    Qt = QtCore.Qt

    async def trio_main() -> None:
        app = ChartApp(ChartOptions('btcusd.sim', period=1.0, registry=('127.0.0.1', args.port),
                                    size=2, width=1280, height=720, more=['ethusd.sim']))

        async def drive() -> None:
            while app.mode is None or app.last_price is None:
                await trio.sleep(0.1)
            chart, mode = app.chart, app.mode
            seen: list = []
            on_msg = mode.on_msg
            mode.on_msg = lambda m: (seen.append(m), on_msg(m))
            await trio.sleep(args.warmup)

            def place(key, price, live=False):
                x = time.time()
                chart.set_cursor(x, price)
                if live:
                    QtTest.QTest.keyPress(chart, Qt.Key_S)
                QtTest.QTest.keyPress(chart, key)
                chart.sigClicked.emit(x, chart.cursor_price(), Qt.LeftButton)
                QtTest.QTest.keyRelease(chart, key)
                if live:
                    QtTest.QTest.keyRelease(chart, Qt.Key_S)

            async def settle(resp, n=1):
                while sum(isinstance(m, Status) and m.resp == resp for m in seen) < n:
                    await trio.sleep(0.05)

            y0, y1 = chart.vb.viewRange()[1]
            span = y1 - y0
            tick = chart.tick_size
            # a position: buy twice, sell once (marketable live orders fill at once)
            for i, (key, sign) in enumerate(((Qt.Key_F, 1), (Qt.Key_F, 1), (Qt.Key_D, -1))):
                place(key, app.last_price + sign * 0.2 * span, live=True)
                await settle('broker_executed', i + 1)
                await trio.sleep(6)
            # an alert one tick away triggers soon: right-pointing arrow
            place(Qt.Key_A, app.last_price + tick)
            with trio.move_on_after(15):
                await settle('alert_triggered')
            await trio.sleep(4)
            last = app.last_price
            place(Qt.Key_F, last - 0.30 * span)                        # dark buys below
            place(Qt.Key_F, last - 0.42 * span)
            place(Qt.Key_D, last + 0.30 * span)                        # dark sell above
            place(Qt.Key_D, last + 0.42 * span, live=True)             # resting live sell
            place(Qt.Key_A, last + 0.16 * span)                        # alert
            # two more dark buys a tick apart: their labels step aside instead of overlapping
            QtTest.QTest.keyClick(chart, Qt.Key_Plus)                 # size 2 -> 3
            place(Qt.Key_F, last - 0.30 * span + tick)
            QtTest.QTest.keyClick(chart, Qt.Key_Minus)
            await settle('broker_submitted', 4)
            await settle('dark_submitted', 4)
            await settle('alert_submitted')

            # another client's order far below the market: an edge marker, not a squashed plot
            async def bot_far_buy():
                async with open_ems('btcusd.sim', mode='dark', name='bot') as (book, trades, _):
                    oid = book.send('buy', round(last * 0.6, 2), 3)
                    async for m in trades:
                        if isinstance(m, Status) and m.oid == oid and m.resp == 'dark_submitted':
                            return

            await bot_far_buy()
            await trio.sleep(1.5)
            x = time.time() - 25
            chart.set_cursor(x, app.last_price - 0.08 * span)
            await trio.sleep(0.3)
            app.save_screenshot(args.out / 'chart.png')

            # order mode in action: cancel all (cc) -- the group status shows until the EMS
            # confirmed every cancel -- while holding s+d: a live sell staged at the cursor
            chart.set_cursor(time.time() - 8, app.last_price + 0.24 * span)
            QtTest.QTest.keyPress(chart, Qt.Key_C)
            QtTest.QTest.keyPress(chart, Qt.Key_C)
            QtTest.QTest.keyPress(chart, Qt.Key_S)
            QtTest.QTest.keyPress(chart, Qt.Key_D)
            app.save_screenshot(args.out / 'order-mode.png')
            QtTest.QTest.keyRelease(chart, Qt.Key_D)
            QtTest.QTest.keyRelease(chart, Qt.Key_S)
            await trio.sleep(1)

            # two charts side by side on a 1920 px screen: the window at 600 px
            app.window.resize(600, 620)
            await trio.sleep(1.5)
            chart.set_cursor(time.time() - 20, app.last_price - 0.1 * span)
            app.save_screenshot(args.out / 'chart-narrow.png')

            # the second symbol's tab, with its own order mode: a dark sell there
            app.window.resize(1280, 720)
            eth = app.sessions[1]
            app.window.tabs.setCurrentIndex(1)
            while eth.mode is None or eth.last_price is None:
                await trio.sleep(0.1)
            await trio.sleep(1.5)
            ey0, ey1 = eth.chart.vb.viewRange()[1]
            x = time.time()
            eth.chart.set_cursor(x, eth.last_price + 0.25 * (ey1 - ey0))
            QtTest.QTest.keyPress(eth.chart, Qt.Key_D)
            eth.chart.sigClicked.emit(x, eth.chart.cursor_price(), Qt.LeftButton)
            QtTest.QTest.keyRelease(eth.chart, Qt.Key_D)
            await trio.sleep(1.5)
            eth.chart.set_cursor(time.time() - 30, eth.last_price - 0.1 * (ey1 - ey0))
            app.save_screenshot(args.out / 'chart-tabs.png')
            # every key at a glance: ?
            QtTest.QTest.keyClick(eth.chart, Qt.Key_Question, Qt.ShiftModifier)
            await trio.sleep(0.3)
            app.save_screenshot(args.out / 'chart-help.png')
            app.close()

        async def both() -> None:
            async with trio.open_nursery() as n:
                n.start_soon(app.run)
                n.start_soon(drive)

        await both()

    run_qt(trio_main)


if __name__ == '__main__':
    main()
