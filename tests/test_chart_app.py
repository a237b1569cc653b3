"""The chart app end to end: trio in Qt guest mode against a real emsd + paper engine on sim.

Each test runs the real :class:`ChartApp` (it becomes pikerd in this process, or joins a pikerd
subprocess) as a trio guest of pytest-qt's QApplication; the test drives keys and clicks on the
chart and waits on conditions with ``qtbot.waitUntil``.
"""
import os

os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
from pyqtgraph.Qt import QtCore  # noqa: E402

from _ems_helpers import SIM_CALM, ems_stats  # noqa: E402
from _proc import script, start_pikerd, stop_hard, wait_gone  # noqa: E402
from conftest import write_config  # noqa: E402
from piker_ems.testing import descendants  # noqa: E402
from piker_ems.clearing import Status, open_ems  # noqa: E402
from piker_ems.ui._exec import start_guest  # noqa: E402
from piker_ems.ui.app import ChartApp, ChartOptions  # noqa: E402

Qt = QtCore.Qt
FQSN = 'btcusd.sim'
BOOT_MS = 20_000


class Running:
    """A ChartApp running as a trio guest, plus helpers to drive it."""

    def __init__(self, qtbot, reg_addr, name: str = 'chart', **opts) -> None:
        self.qtbot = qtbot
        self.app = ChartApp(ChartOptions(FQSN, period=1.0, registry=reg_addr, loglevel='error',
                                         name=name, **opts))
        qtbot.addWidget(self.app.window)
        self.guest = start_guest(self.app.run)
        self.seen: list = []
        self.wait(lambda: self.app.mode is not None and self.last() is not None, BOOT_MS,
                  'order mode did not start')
        mode = self.app.mode
        on_msg = mode.on_msg
        mode.on_msg = lambda msg: (self.seen.append(msg), on_msg(msg))  # record what arrives

    @property
    def chart(self):
        return self.app.chart

    def last(self) -> float | None:
        return self.app.last_price

    def wait(self, cond, timeout_ms: int = 10_000, msg: str = '') -> None:
        def check() -> bool:
            if self.guest.done:
                self.guest.result()      # raise the app's error instead of timing out
                raise AssertionError('the chart app ended')
            return bool(cond())
        try:
            self.qtbot.waitUntil(check, timeout=timeout_ms)
        except AssertionError as err:
            raise AssertionError(f'{msg or "condition not met"}; status bar: '
                                 f'{self.app.status.text()!r}') from err

    def call(self, async_fn, *args, timeout_ms: int = 10_000):
        """Run ``async_fn(*args)`` inside the app's trio run and return its result."""
        box: dict = {}

        async def task():
            try:
                box['value'] = await async_fn(*args)
            except BaseException as err:  # noqa: BLE001 - handed to the test
                box['error'] = err

        self.app.spawn(task)
        self.qtbot.waitUntil(lambda: bool(box), timeout=timeout_ms)
        if 'error' in box:
            raise box['error']
        return box['value']

    def place(self, key, price: float, live: bool = False, chart=None) -> str:
        """Hold the order key (and s), click at ``price``, release; returns the new line's oid."""
        chart, qtbot = chart or self.chart, self.qtbot
        before = {ln.oid for ln in chart.lines()}
        x = time.time()
        chart.set_cursor(x, price)
        if live:
            qtbot.keyPress(chart, Qt.Key_S)
        qtbot.keyPress(chart, key)
        chart.sigClicked.emit(x, chart.cursor_price(), Qt.LeftButton)
        qtbot.keyRelease(chart, key)
        if live:
            qtbot.keyRelease(chart, Qt.Key_S)
        [oid] = {ln.oid for ln in chart.lines()} - before
        return oid

    def close(self) -> None:
        if self.app.background:
            self.app.stop_background()
        else:
            self.app.window.close()                  # the real path: closeEvent -> cancel
            if self.app.close_dialog is not None:    # orders rest in our pikerd: it asks
                self.app.close_dialog.button_for('cancel').click()
        self.qtbot.waitUntil(lambda: self.guest.done, timeout=15_000)
        self.guest.result()


@pytest.fixture
def sim_calm(config_dir):
    write_config(config_dir, SIM_CALM)


@pytest.fixture
def running(qtbot, reg_addr, sim_calm):
    r = Running(qtbot, reg_addr)
    try:
        yield r
    finally:
        r.close()


def test_cc_cancels_three_dark_orders(running, qtbot):
    r = running
    chart, status = r.chart, r.app.status
    last = r.last()
    oids = []
    for i, off in enumerate((1.0, 1.5, 2.0)):
        oids.append(r.place(Qt.Key_F, round(last - off, 2)))
        if i == 0:
            assert status.text() == 'submitting dark-buy'
            assert not chart.get_line(oids[0]).label.isVisible()
            r.wait(lambda: 'submitted dark-buy' in status.text())
    r.wait(lambda: all(chart.get_line(o).confirmed for o in oids), msg='orders not confirmed')
    assert r.call(ems_stats)['dark'] == 3

    chart.set_cursor(time.time(), last + 3)          # nothing under the cursor
    qtbot.keyPress(chart, Qt.Key_C)
    qtbot.keyPress(chart, Qt.Key_C)                  # cc
    text = status.text()
    assert text.startswith('cancelling 3 orders'), text
    assert 'cancelling order ' in text
    r.wait(lambda: status.text() == 'cancelled 3 orders', msg='cancel group did not resolve')
    assert chart.lines() == []
    cancelled = [m.oid for m in r.seen if isinstance(m, Status) and m.resp == 'dark_cancelled']
    assert sorted(cancelled) == sorted(oids)
    assert r.call(ems_stats)['dark'] == 0


def test_live_buy_fills_with_up_arrow(running):
    r = running
    chart, status = r.chart, r.app.status
    ask = chart._ask if chart._ask is not None else r.last()
    oid = r.place(Qt.Key_F, round(ask + 0.5, 2), live=True)   # marketable
    assert status.text() == 'submitting live-buy'
    assert chart.get_line(oid).exec_mode == 'live'
    r.wait(lambda: 'submitted live-buy' in status.text(), msg='no broker_submitted')
    r.wait(lambda: chart.arrows() and chart.get_line(oid) is None, msg='no fill')
    [fill] = [m for m in r.seen if isinstance(m, Status) and m.resp == 'broker_filled']
    [arrow] = chart.arrows()
    assert arrow.action == 'buy'
    assert arrow.price == fill.brokerd_msg['price']
    r.wait(lambda: chart.position_line.isVisible(), msg='no position')
    assert chart.position_line.size == 1
    assert chart.position_line.avg_price == fill.brokerd_msg['price']
    # the fill notice and the position's PnL in the status bar (issue 12 item 3)
    price = f"{fill.brokerd_msg['price']:.2f}"
    assert f'filled buy 1 @ {price} ({oid[:6]})' in status.text()
    r.wait(lambda: status.pnl_text().startswith(f'pos 1 @ {price} · uPnL '),
           msg=f'no PnL: {status.pnl_text()!r}')


async def place_dark(name: str, action: str, price: float, size: float) -> str:
    """Another client ``name`` places a dark order and leaves once emsd took it; its oid."""
    async with open_ems(FQSN, mode='dark', name=name) as (book, trades, _):
        oid = book.send(action, price, size)
        async for msg in trades:
            if isinstance(msg, Status) and msg.oid == oid and msg.resp == 'dark_submitted':
                return oid


def test_other_clients_order_drawn_foreign(running, qtbot):
    r = running
    chart, status = r.chart, r.app.status
    price = round(r.last() + 2, 2)

    oid = r.call(place_dark, 'other', 'sell', price, 3)
    r.wait(lambda: chart.get_line(oid) is not None, msg='foreign order not drawn')
    line = chart.get_line(oid)
    assert line.foreign and line.owner == 'other' and not line.movable
    assert line.price == price and line.confirmed
    assert line.label.toPlainText() == f'other: 3 @ {price:.2f}'
    mine = r.place(Qt.Key_F, round(r.last() - 2, 2))
    r.wait(lambda: chart.get_line(mine).confirmed)
    chart.set_cursor(time.time(), r.last() + 5)
    qtbot.keyPress(chart, Qt.Key_C)
    qtbot.keyPress(chart, Qt.Key_C)
    assert status.text().startswith('cancelling 1 order')
    r.wait(lambda: status.text() == 'cancelled 1 order')
    assert chart.get_line(oid) is not None           # cc left the other client's order alone
    assert r.call(ems_stats)['dark'] == 1


def test_restarted_chart_redraws_its_orders(qtbot, reg_addr, sim_calm, tmp_path):
    """With a separate pikerd, orders outlive the chart; a new chart of the same name draws
    them as its own and can cancel them."""
    pikerd = start_pikerd(reg_addr[1], tmp_path / 'pikerd.log')
    try:
        first = Running(qtbot, reg_addr)
        try:
            oids = [first.place(Qt.Key_F, round(first.last() - d, 2)) for d in (1.0, 1.25)]
            aid = first.place(Qt.Key_A, round(first.last() + 1.5, 2))
            first.wait(lambda: all(first.chart.get_line(o).confirmed for o in [*oids, aid]))
        finally:
            first.close()

        second = Running(qtbot, reg_addr)
        try:
            chart = second.chart
            second.wait(lambda: len(chart.lines()) == 3, msg='orders not redrawn')
            for o in oids:
                line = chart.get_line(o)
                assert line.action == 'buy' and not line.foreign and line.confirmed
            assert chart.get_line(aid).action == 'alert'
            chart.set_cursor(time.time(), second.last() + 5)
            qtbot.keyPress(chart, Qt.Key_C)
            qtbot.keyPress(chart, Qt.Key_C)
            assert second.app.status.text().startswith('cancelling 3 orders')
            second.wait(lambda: second.app.status.text() == 'cancelled 3 orders')
            assert second.call(ems_stats)['dark'] == 0
        finally:
            second.close()
    finally:
        pids = descendants(pikerd.pid)
        pikerd.send_signal(signal.SIGTERM)
        try:
            pikerd.wait(timeout=10)
            wait_gone(pids)
        except (subprocess.TimeoutExpired, AssertionError):
            stop_hard(pikerd)
            raise


# -- the CLI ---------------------------------------------------------------------------------

def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ('DISPLAY', 'WAYLAND_DISPLAY', 'QT_QPA_PLATFORM')}
    env.update(extra)
    return env


def test_cli_screenshot(tmp_path, reg_addr, sim_calm):
    out = tmp_path / 'out.png'
    proc = subprocess.Popen(
        [script('piker'), '--port', str(reg_addr[1]), 'chart', FQSN,
         '--screenshot', str(out), '--exit-after', '5'],
        env=_env(QT_QPA_PLATFORM='offscreen'), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _, err = proc.communicate(timeout=25)
    except subprocess.TimeoutExpired:
        stop_hard(proc)
        raise
    assert proc.returncode == 0, err
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'abandoned' not in err and 'Traceback' not in err, err
    assert not descendants(proc.pid)


def test_cli_no_display_one_line(reg_addr):
    res = subprocess.run(
        [script('piker'), '--port', str(reg_addr[1]), 'chart', FQSN],
        env=_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
    )
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert '--screenshot' in lines[0] and 'QT_QPA_PLATFORM=offscreen' in lines[0]


def _plugin_missing_a_library(tmp_path) -> Path:
    """A copy of Qt's xcb platform plugin whose dependency ``libxcb-icccm.so.4`` is renamed
    to a library no system has: what a fresh Debian install looks like to Qt."""
    import PyQt5

    real = Path(PyQt5.__file__).parent / 'Qt5' / 'plugins' / 'platforms' / 'libqxcb.so'
    data = real.read_bytes()
    assert b'libxcb-icccm.so.4' in data
    plugins = tmp_path / 'platforms'
    plugins.mkdir()
    (plugins / 'libqxcb.so').write_bytes(data.replace(b'libxcb-icccm.so.4', b'libxcb-icczz.so.4'))
    return plugins


def test_cli_missing_xcb_libraries_one_line(tmp_path, reg_addr):
    """Issue 12 item 15: Qt would abort ('no Qt platform plugin could be initialized');
    the chart names what is missing and the package to install, in one line, exit 2."""
    env = _env(DISPLAY=':99', QT_QPA_PLATFORM='xcb',
               QT_QPA_PLATFORM_PLUGIN_PATH=str(_plugin_missing_a_library(tmp_path)))
    # what happens without the check: Qt itself aborts the process
    qt = subprocess.run(
        [sys.executable, '-c', 'from PyQt5 import QtWidgets; QtWidgets.QApplication([])'],
        env=env, capture_output=True, text=True, timeout=30)
    assert qt.returncode < 0 or qt.returncode == 134, qt
    assert 'platform plugin' in qt.stderr
    res = subprocess.run(
        [script('piker'), '--port', str(reg_addr[1]), 'chart', FQSN],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert 'libxcb-icczz.so.4' in lines[0] and 'apt-get install libxcb-icczz4' in lines[0]


def test_cli_unreachable_x_display_one_line(reg_addr):
    """A DISPLAY nobody serves: Qt would abort ('could not connect to display'); one line."""
    res = subprocess.run(
        [script('piker'), '--port', str(reg_addr[1]), 'chart', FQSN],
        env=_env(DISPLAY=':97'), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=30,
    )
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "X display ':97'" in lines[0], res.stderr


def test_debian_package_names():
    from piker_ems.ui._exec import debian_package
    assert [debian_package(n) for n in (
        'libxcb-icccm.so.4', 'libxcb-keysyms.so.1', 'libxcb-xinerama.so.0',
        'libxcb-render-util.so.0', 'libxkbcommon-x11.so.0', 'libX11-xcb.so.1', 'libdbus-1.so.3',
    )] == ['libxcb-icccm4', 'libxcb-keysyms1', 'libxcb-xinerama0', 'libxcb-render-util0',
           'libxkbcommon-x11-0', 'libx11-xcb1', 'libdbus-1-3']


@pytest.mark.parametrize('fqsn,needle', [('btcusd', 'broker suffix'), ('btcusd.nope', 'nope')])
def test_cli_bad_fqsn_one_line(fqsn, needle, reg_addr):
    res = subprocess.run(
        [script('piker'), '--port', str(reg_addr[1]), 'chart', fqsn],
        env=_env(QT_QPA_PLATFORM='offscreen'), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=20,
    )
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr



def test_chart_opens_with_backfilled_history(running):
    from piker_ems.ui.app import HISTORY_BARS

    bars = running.app.aggregator.array
    assert len(bars) >= HISTORY_BARS            # history loaded, then live bars appended
    assert abs(bars['close'][-1] - running.last()) < 1.0  # history joins the live market
    assert (bars['time'][1:] > bars['time'][:-1]).all()


def test_a_second_chart_of_the_symbol_gets_the_same_bars(running):
    """Issue 12 item 10 through the chart app: after the chart drew live bars, a second chart
    asking brokerd for the history gets exactly this chart's bars (same times, OHLC, volume)."""
    import numpy as np

    from piker_ems.data import fetch_history

    r = running
    agg = r.app.aggregator
    t_open = float(agg.array['time'][-1])
    r.wait(lambda: agg.array['time'][-1] >= t_open + 3, msg='no live bars')
    hist = r.call(fetch_history, FQSN, 1.0, 300)
    mine = agg.array.copy()
    closed = min(mine['time'][-1], hist.bars['time'][-1])
    ours, theirs = mine[mine['time'] < closed][-250:], hist.bars[hist.bars['time'] < closed]
    theirs = theirs[np.isin(theirs['time'], ours['time'])]
    assert len(theirs) == len(ours) == 250
    assert np.array_equal(ours, theirs)


def test_far_foreign_order_keeps_the_bars_tall(running, tmp_path):
    """Issue 12 item 1 on the real stack: another client's order far from the market shows
    as an edge marker; the bars keep most of the plot height (it was ~3 %)."""
    r = running
    chart = r.chart
    price = round(r.last() * 0.6, 2)

    oid = r.call(place_dark, 'bot', 'buy', price, 3)
    r.wait(lambda: chart.get_line(oid) is not None, msg='foreign order not drawn')
    r.wait(lambda: [m.textItem.toPlainText() for m in chart.edge_markers()]
           == [f'▼ bot: 3 @ {price:.2f}'], msg='no edge marker')
    (x0, x1), (y0, y1) = chart.vb.viewRange()
    lo, hi = chart.bars.y_range(x0, x1)
    assert (hi - lo) / (y1 - y0) >= 0.7
    assert y0 > price
    out = os.environ.get('PIKER_EMS_SHOTS') or str(tmp_path)
    os.makedirs(out, exist_ok=True)
    r.app.save_screenshot(os.path.join(out, 'app-far-order.png'))


def test_a_chart_without_the_watch_role_trades_its_own_orders(qtbot, reg_addr, sim_calm):
    """The chart asks to watch the symbol; for a participant without the watch role emsd
    refuses that, and the chart connects again without watching, saying so in one line."""
    from piker_ems.service._auth import add_participant, credential_for, use_credential

    token = add_participant('trader', ['trade'])
    with use_credential(credential_for('trader', token)):  # (the app's tasks inherit it)
        r = Running(qtbot, reg_addr, name='desk')
    try:
        assert 'order mode: your own orders only (no watch role)' in r.app.status.text()
        assert r.app.book.owner == 'trader/desk'
        oid = r.place(Qt.Key_F, round(r.last() - 2, 2))
        r.wait(lambda: r.chart.get_line(oid).confirmed, msg='own order not confirmed')
        assert not r.chart.get_line(oid).foreign
    finally:
        r.close()
