"""The chart as a session a trader keeps open all day (issue 12 items 12 and 13, and the
extras): closing a chart that hosts pikerd with resting orders asks first (keep pikerd in the
background, cancel, or stay); Ctrl+Q takes the same path; `piker orders` says in one line that
the chart's pikerd went away; several symbols as tabs, each with its own order mode; the key
help overlay; a refused --control-others is one line.

The app runs for real (pikerd in this process, emsd, paper engine, brokerd.sim) as a trio guest
of pytest-qt's QApplication, offscreen; the close dialog is non-modal, so the tests click it.
"""
import os

os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
from pyqtgraph.Qt import QtCore, QtTest, QtWidgets  # noqa: E402

from _ems_helpers import SIM_CALM  # noqa: E402
from _proc import script, start_pikerd, stop_hard  # noqa: E402
from conftest import write_config  # noqa: E402
from test_chart_app import FQSN, Running, _env, sim_calm  # noqa: E402,F401 (fixture)
from piker_ems.clearing import Status  # noqa: E402
from piker_ems.testing import descendants  # noqa: E402
from piker_ems.ui._window import KEYS_TABLE, ChartWindow  # noqa: E402
from piker_ems.ui.app import ChartOptions  # noqa: E402

Qt = QtCore.Qt


def _statuses(r, oid) -> list[str]:
    return [m.resp for m in r.seen if isinstance(m, Status) and m.oid == oid]


def _rest_dark_buy(r) -> str:
    oid = r.place(Qt.Key_F, round(r.last() - 5, 2))
    r.wait(lambda: r.chart.get_line(oid).confirmed, msg='dark order not accepted')
    return oid


# -- item 12: closing a chart that hosts pikerd ---------------------------------------------------

def test_close_with_a_resting_dark_order_asks_then_cancels_it(qtbot, reg_addr, sim_calm):
    r = Running(qtbot, reg_addr)
    try:
        assert r.app.hosts_pikerd
        oid = _rest_dark_buy(r)
        r.app.window.close()
        dialog = r.app.close_dialog
        assert dialog is not None and dialog.isVisible()
        assert dialog.text() == '1 order rests in the pikerd this chart runs.'
        assert r.app.window.isVisible() and not r.guest.done      # nothing stopped yet
        dialog.button_for('cancel').click()
        r.qtbot.waitUntil(lambda: r.guest.done, timeout=20_000)
        r.guest.result()
        assert 'dark_cancelled' in _statuses(r, oid)               # cancelled, then closed
    finally:
        if not r.guest.done:
            r.close()


def test_stay_keeps_the_chart_and_its_order(qtbot, reg_addr, sim_calm):
    r = Running(qtbot, reg_addr)
    try:
        oid = _rest_dark_buy(r)
        r.app.window.close()
        r.app.close_dialog.button_for('stay').click()
        assert r.app.close_dialog is None and r.app.window.isVisible()
        QtTest.QTest.qWait(300)
        assert not r.guest.done and r.chart.get_line(oid) is not None
        assert _statuses(r, oid) == ['dark_submitted']
    finally:
        r.close()


def test_ctrl_q_keeps_pikerd_in_the_background(qtbot, reg_addr, sim_calm, tmp_path):
    """Ctrl+Q goes through the window's close path; 'keep' hides the chart and pikerd keeps
    serving: another process still finds the dark order there and cancels it."""
    r = Running(qtbot, reg_addr)
    try:
        oid = _rest_dark_buy(r)
        QtTest.QTest.keyClick(r.chart, Qt.Key_Q, Qt.ControlModifier)
        assert r.app.close_dialog is not None
        r.app.close_dialog.button_for('keep').click()
        r.wait(lambda: not r.app.window.isVisible() and r.app.nursery is None,
               msg='the chart did not close')
        assert r.app.background and not r.guest.done
        # the service tree outlived the chart: a CLI client cancels the order there
        proc = subprocess.Popen(
            [script('piker'), '--port', str(reg_addr[1]), 'cancel', oid[:8], '--name', 'chart'],
            env=_env(QT_QPA_PLATFORM='offscreen'), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            r.qtbot.waitUntil(lambda: proc.poll() is not None, timeout=30_000)
        finally:
            if proc.poll() is None:
                stop_hard(proc)
        out, err = proc.communicate()
        assert proc.returncode == 0, (out, err)
        assert 'dark_cancelled' in out and oid[:8] in out
        r.app.stop_background()                                   # what SIGTERM does
        r.qtbot.waitUntil(lambda: r.guest.done, timeout=20_000)
        r.guest.result()
    finally:
        if not r.guest.done:
            r.close()


def test_close_without_resting_orders_does_not_ask(qtbot, reg_addr, sim_calm):
    r = Running(qtbot, reg_addr)
    r.app.window.close()
    assert r.app.close_dialog is None
    r.qtbot.waitUntil(lambda: r.guest.done, timeout=20_000)
    r.guest.result()


# -- item 13 --------------------------------------------------------------------------------

def test_piker_orders_says_in_one_line_that_the_charts_pikerd_went_away(qtbot, reg_addr, sim_calm):
    r = Running(qtbot, reg_addr)
    proc = subprocess.Popen(
        [script('piker'), '--port', str(reg_addr[1]), 'orders', FQSN],
        env=_env(QT_QPA_PLATFORM='offscreen'), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r.wait(lambda: r.call(_clients) >= 2, 30_000, msg='piker orders did not connect')
        r.close()                                       # no resting orders: closes at once
        r.qtbot.waitUntil(lambda: proc.poll() is not None, timeout=20_000)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            stop_hard(proc)
    assert proc.returncode == 1, err
    assert 'Traceback' not in err and 'ContextCancelled' not in err, err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith('following orders')]
    assert len(lines) == 1 and lines[0].startswith('error: lost the EMS'), err


async def _clients() -> int:
    from _ems_helpers import ems_stats
    return (await ems_stats())['clients']


# -- extras: several symbols ----------------------------------------------------------------------

def test_two_symbols_as_tabs_each_with_its_own_order_mode(qtbot, reg_addr, sim_calm):
    r = Running(qtbot, reg_addr, more=['ethusd.sim'])
    try:
        btc, eth = r.app.sessions
        assert [s.fqsn for s in r.app.sessions] == [FQSN, 'ethusd.sim']
        assert r.app.window.tabs.count() == 2
        r.wait(lambda: eth.mode is not None and eth.last_price is not None, 20_000,
               msg='second tab never traded')
        assert eth.mode is not btc.mode and eth.book is not btc.book
        r.app.window.tabs.setCurrentIndex(1)
        oid = r.place(Qt.Key_D, round(eth.last_price + 5, 2), chart=eth.chart)
        r.wait(lambda: eth.chart.get_line(oid).confirmed)
        assert btc.chart.get_line(oid) is None                # drawn on its own tab only
        assert eth.book.orders[oid].symbol == 'ethusd.sim'
        # each tab says its symbol is live; the window title says where pikerd runs
        assert r.app.window.tabs.tabText(1) == '● ethusd.sim · paper'
        assert 'paper · pikerd in this chart · ok' in r.app.window.windowTitle()
        # a third symbol without restarting: typed in the tab bar's field
        field = r.app.window.add_field
        QtTest.QTest.keyClick(r.chart, Qt.Key_T, Qt.ControlModifier)
        assert QtWidgets.QApplication.focusWidget() is field
        field.setText('solusd.sim')
        QtTest.QTest.keyClick(field, Qt.Key_Return)
        assert [s.fqsn for s in r.app.sessions][-1] == 'solusd.sim'
        sol = r.app.sessions[-1]
        assert r.app.window.tabs.currentWidget() is sol.page
        r.wait(lambda: sol.mode is not None and sol.last_price is not None, 20_000,
               msg='added tab never traded')
        field.setText('nonsense')
        QtTest.QTest.keyClick(field, Qt.Key_Return)
        assert len(r.app.sessions) == 3 and 'nonsense' in r.app.window.status.text()
    finally:
        r.close()


# -- extras: help overlay -------------------------------------------------------------------

def test_question_mark_shows_every_key_and_esc_hides_it(qtbot):
    w = ChartWindow(ChartOptions(FQSN))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    assert not w.help.isVisible()
    QtTest.QTest.keyClick(w.chart, Qt.Key_Question, Qt.ShiftModifier)
    assert w.help.isVisible()
    texts = [lbl.text() for lbl in w.help.findChildren(QtWidgets.QLabel)]
    for keys, what in KEYS_TABLE:
        assert keys in texts and what in texts
    assert w.help.geometry().right() <= w.tabs.width()
    QtTest.QTest.keyClick(w.chart, Qt.Key_Escape)
    assert not w.help.isVisible()
    QtTest.QTest.keyClick(w.chart, Qt.Key_Question, Qt.ShiftModifier)
    QtTest.QTest.keyClick(w.chart, Qt.Key_Question, Qt.ShiftModifier)
    assert not w.help.isVisible()


# -- --control-others without the role ---------------------------------------------------------

def test_control_others_without_the_role_is_one_line(reg_addr, config_dir, tmp_path):
    write_config(config_dir, SIM_CALM)
    pikerd = start_pikerd(reg_addr[1], tmp_path / 'pikerd.log')
    try:
        token = subprocess.run(
            [script('piker'), 'participants', 'add', 'bob', '--roles', 'trade'],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        ).stdout.strip()
        shot = tmp_path / 'refused.png'
        res = subprocess.run(
            [script('piker'), '--port', str(reg_addr[1]), 'chart', FQSN, '--control-others',
             '--participant', 'bob', '--screenshot', str(shot), '--exit-after', '6'],
            env=_env(QT_QPA_PLATFORM='offscreen', PIKER_EMS_TOKEN=token),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
    finally:
        stop_hard(pikerd)
    assert res.returncode == 0, res.stderr
    assert 'Traceback' not in res.stderr, res.stderr
    refused = [ln for ln in res.stderr.splitlines() if 'order mode refused' in ln]
    assert len(refused) == 1 and "participant 'bob' may not" in refused[0], res.stderr
