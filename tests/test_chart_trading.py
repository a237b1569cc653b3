"""Order-mode behaviour from issue 12 (items 3-9): PnL and fill notices, size control,
cancel-all counts, errors that clear, other clients' orders, narrow windows. A real
ChartWidget and StatusBar, a fake book and hand-made statuses (see test_order_mode)."""
import os

os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')

from pathlib import Path  # noqa: E402

from pyqtgraph.Qt import QtCore, QtWidgets  # noqa: E402

from piker_ems.clearing._messages import BrokerdPosition, Order  # noqa: E402
from test_order_mode import FQSN, _three, cursor, env, place, st  # noqa: E402,F401

Qt = QtCore.Qt


def shot(widget, name: str, tmp_path: Path) -> Path:
    out = Path(os.environ.get('PIKER_EMS_SHOTS') or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f'{name}.png'
    assert widget.grab().save(str(path), 'PNG')
    return path


def pos(size, avg, realized=0.0, fees=0.0, account='paper'):
    return BrokerdPosition(broker='sim', account=account, symbol='btcusd', size=size,
                           avg_price=avg, realized_pnl=realized, fees=fees)


def foreign_order(owner='bot', price=100.0, action='buy', size=3.0) -> Order:
    import uuid
    return Order(action=action, oid=uuid.uuid4().hex, symbol=FQSN, price=price, size=size,
                 exec_mode='dark', owner=owner)


# -- item 3: PnL and fill notices -------------------------------------------------------------

def test_position_pnl_in_status_bar(env, tmp_path):
    e = env
    assert e.status.pnl_text() == ''
    e.chart.set_last(101.0)
    e.mode.on_msg(pos(2, 100.0, realized=-0.5, fees=0.1))
    assert e.status.pnl_text() == 'pos 2 @ 100.00 · uPnL +2.00 · rPnL -0.50 · fees 0.10'
    # quotes move the unrealized PnL
    e.chart.set_last(99.5)
    e.mode.update_pnl()
    assert e.status.pnl_text() == 'pos 2 @ 100.00 · uPnL -1.00 · rPnL -0.50 · fees 0.10'
    # short: gains when the price falls
    e.mode.on_msg(pos(-1, 100.0))
    assert e.status.pnl_text() == 'pos -1 @ 100.00 · uPnL +0.50'
    shot(e.window, 'pnl', tmp_path)
    # a loss under a cent reads 0.00 (not -0.00) and is not coloured as a loss
    e.chart.set_last(100.003)
    e.mode.update_pnl()
    assert e.status.pnl_text() == 'pos -1 @ 100.00 · uPnL +0.00'
    # flat: what was made
    e.mode.on_msg(pos(0, 0, realized=3.25, fees=0.2))
    assert e.status.pnl_text() == 'flat · rPnL +3.25 · fees 0.20'
    # another account's position is not ours
    e.mode.on_msg(pos(9, 1.0, account='live'))
    assert e.status.pnl_text() == 'flat · rPnL +3.25 · fees 0.20'


def test_own_and_other_fills_look_different(env, tmp_path):
    e = env
    oid = place(e, Qt.Key_F, 101.0, live=True)
    e.mode.on_msg(st(e.book, oid, 'broker_submitted'))
    assert e.status.text() == 'submitted live-buy'
    e.mode.on_msg(st(e.book, oid, 'broker_filled',
                     brokerd_msg={'action': 'buy', 'price': 100.37, 'size': 2}))
    assert e.status.text() == f'submitted live-buy  ·  filled buy 2 @ 100.37 ({oid[:6]})'
    [mine] = e.chart.arrows()
    assert not mine.foreign
    theirs = foreign_order('bot', 100.2, 'sell', 1)
    e.mode.on_msg(st(e.book, theirs.oid, 'broker_submitted', req=theirs, owner='bot'))
    e.mode.on_msg(st(e.book, theirs.oid, 'broker_filled', req=theirs, owner='bot',
                     brokerd_msg={'action': 'sell', 'price': 100.21, 'size': 1}))
    assert e.status.text().endswith('bot filled sell 1 @ 100.21')
    segs = [s for entry in e.status.model.segments() for s in entry]
    assert {s.text: s.level for s in segs}[f'filled buy 2 @ 100.37 ({oid[:6]})'] == 'fill'
    assert {s.text: s.level for s in segs}['bot filled sell 1 @ 100.21'] == 'other'
    other = e.chart.arrows()[-1]
    assert other.foreign and other.action == 'sell'
    assert other.opts['brush'].color().rgb() != mine.opts['brush'].color().rgb()
    assert len(e.notes) == 1                     # desktop notice for our fill only
    shot(e.window, 'fills', tmp_path)


# -- item 4: size control ---------------------------------------------------------------------

def test_size_keys_and_field(env, qtbot, tmp_path):
    e = env
    assert e.status.size_text() == 'size 2'           # the launch size (lot: 1)
    e.mode.lot_size = 0.5                             # e.g. the symbol's lot size
    e.mode.set_size(2)
    assert e.status.size_text() == 'size 2.0'
    # the field sits next to the mode label
    box, mode = e.status.size_box.geometry(), e.status._mode_label.geometry()
    assert box.right() <= mode.left() and mode.left() - box.right() < 30
    for key in (Qt.Key_Plus, Qt.Key_Equal):
        e.chart.setFocus()
        qtbot.keyClick(e.chart, key)
    assert e.mode.size == 3.0 and e.status.size_text() == 'size 3.0'
    qtbot.keyClick(e.chart, Qt.Key_Minus)
    assert e.mode.size == 2.5
    # staging shows the new size, the order goes out with it
    cursor(e, 99.5)
    qtbot.keyPress(e.chart, Qt.Key_F)
    assert e.chart.staged_line.size == 2.5
    qtbot.keyClick(e.chart, Qt.Key_Plus)
    assert e.chart.staged_line.size == 3.0
    shot(e.window, 'size-control', tmp_path)
    e.mode.on_click(e.x, 99.5, Qt.LeftButton)
    qtbot.keyRelease(e.chart, Qt.Key_F)
    assert e.book.sent[-1].size == 3.0
    # never below one lot
    for _ in range(10):
        qtbot.keyClick(e.chart, Qt.Key_Minus)
    assert e.mode.size == 0.5
    # typing a size in the field (snapped to the lot), then trading keys work again
    e.status.size_box.setFocus()
    e.status.size_box.lineEdit().selectAll()
    qtbot.keyClicks(e.status.size_box, '7.3')
    qtbot.keyClick(e.status.size_box, Qt.Key_Return)
    assert e.mode.size == 7.5
    assert e.status.size_text() == 'size 7.5'
    qtbot.waitUntil(lambda: e.chart.hasFocus(), timeout=1000)


# -- item 6: cancel-all says what happened -----------------------------------------------------

def test_cancel_all_counts_a_fill_during_the_cancel(env, tmp_path):
    e = env
    a, b, c = _three(e)
    e.mode.cancel_all()
    assert e.status.text().startswith('cancelling 3 orders')
    e.mode.on_msg(st(e.book, a, 'dark_cancelled'))
    # b triggered and filled at the venue while its cancel was in flight
    e.mode.on_msg(st(e.book, b, 'broker_filled', brokerd_msg={'action': 'buy', 'price': 99.5,
                                                              'size': 2}))
    e.mode.on_msg(st(e.book, b, 'broker_executed'))
    assert e.status.text().startswith('cancelling 3 orders')
    e.mode.on_msg(st(e.book, c, 'dark_cancelled'))
    assert e.status.text() == f'cancelled 2, 1 filled  ·  filled buy 2 @ 99.50 ({b[:6]})'
    assert 'cancelled 3' not in e.status.text()
    shot(e.window, 'cancel-counts', tmp_path)


def test_cancel_all_counts_refusals_and_all_cancelled_keeps_spec_wording(env):
    e = env
    a, b, c = _three(e)
    e.mode.cancel_all()
    e.mode.on_msg(st(e.book, a, 'dark_cancelled'))
    e.mode.on_msg(st(e.book, b, 'error', reason=f'cancel refused: {b} not yours'))
    e.mode.on_msg(st(e.book, c, 'dark_cancelled'))
    assert 'cancelled 2, 1 refused' in e.status.text()
    x, y, z = _three(e)
    e.mode.cancel_all()
    for oid in (x, y, z):
        e.mode.on_msg(st(e.book, oid, 'dark_cancelled'))
    assert e.status.text() == 'cancelled 3 orders'


def test_oids_are_short_everywhere(env):
    import re
    e = env
    oid = place(e, Qt.Key_F, 100.0)
    e.mode.on_msg(st(e.book, oid, 'dark_submitted'))
    e.mode.cancel_all()
    e.mode.on_msg(st(e.book, oid, 'error', reason=f'order {oid} is already closed'))
    text = e.status.text()
    assert f'order {oid[:6]} is already closed' in text
    assert not re.search(r'[0-9a-f]{7,}', text), text
    e.mode.on_msg(st(e.book, oid, 'broker_expired', reason=f'{oid} ran out of time'))
    assert not re.search(r'[0-9a-f]{7,}', e.status.text()), e.status.text()


# -- item 7: errors clear ---------------------------------------------------------------------

def test_error_clears_on_next_status_after_a_moment(env):
    e = env
    a = place(e, Qt.Key_F, 99.0)
    e.mode.on_msg(st(e.book, a, 'error', reason='price outside the band'))
    assert 'price outside the band' in e.status.text()
    b = place(e, Qt.Key_D, 101.0)          # opening a status clears it anyway (as before)
    assert 'outside the band' not in e.status.text()
    e.mode.on_msg(st(e.book, b, 'error', reason='no margin'))
    e.clock.t += 1
    e.mode.on_msg(st(e.book, b, 'dark_cancelled'))      # too soon: still readable
    assert 'no margin' in e.status.text()
    e.clock.t += 3
    c = foreign_order('bot', 99.9)
    e.mode.on_msg(st(e.book, c.oid, 'dark_submitted', req=c, owner='bot'))
    assert 'no margin' not in e.status.text()


def test_error_times_out_visibly(env, qtbot, tmp_path):
    e = env
    e.mode.on_msg(st(e.book, 'f' * 32, 'error', reason='venue refused the cancel'))
    assert e.status.countdowns() == ['clears in 30s']
    assert 'clears in 30s' in e.status._msg_label.text()       # shown in the bar
    e.clock.t += 12.2
    assert e.status.countdowns() == ['clears in 18s']
    qtbot.waitUntil(lambda: 'clears in 18s' in e.status._msg_label.text(), timeout=2500)
    shot(e.window, 'error-countdown', tmp_path)
    e.clock.t += 18
    e.status.model.expire()
    assert e.status.text() == '' and e.status.countdowns() == []
    # and the bar's own timer does it without help
    e.status.model.clock = __import__('time').monotonic
    e.status.model.error_ttl = 0.3
    e.status.show_error('short-lived')
    qtbot.waitUntil(lambda: e.status.text() == '', timeout=2000)


def test_lasting_errors_do_not_time_out(env):
    e = env
    e.status.show_error('order mode off: lost the EMS', sticky=True)
    assert e.status.countdowns() == []
    e.clock.t += 600
    e.status.model.expire()
    e.status.clear_errors(0)
    assert e.status.text() == 'order mode off: lost the EMS'


# -- item 8: other clients' orders -------------------------------------------------------------

def _load_foreign(e, owner='bot', price=100.0, size=3.0) -> Order:
    from piker_ems.clearing._messages import Status
    o = foreign_order(owner, price, 'buy', size)
    e.mode.load([Status(oid=o.oid, resp='dark_submitted', req=o, owner=owner)], [])
    return o


def _hover(e, line) -> None:
    """A real mouse move over the line (through the viewport)."""
    from pyqtgraph.Qt import QtTest
    vp = e.chart.plot.viewport()
    pos = e.chart.plot.mapFromScene(e.chart.vb.mapViewToScene(QtCore.QPointF(e.x, line.price)))
    QtTest.QTest.mouseMove(vp, pos)
    QtTest.QTest.qWait(20)
    QtWidgets.QApplication.processEvents()


def test_hover_says_whose_order_and_what_you_may_do(env, qtbot, tmp_path):
    e = env
    o = _load_foreign(e, 'bot', 99.8)
    line = e.chart.get_line(o.oid)
    mine = place(e, Qt.Key_F, 99.3)
    e.mode.on_msg(st(e.book, mine, 'dark_submitted'))
    _hover(e, line)
    qtbot.waitUntil(lambda: e.status.hint_text() != '', timeout=2000)
    import html
    assert e.status.hint_text() == "bot's dark buy 3 @ 99.80: view only"
    assert e.status.hint_text() in html.unescape(e.status._msg_label.text())   # shown whole
    assert line.toolTip() == (f"bot's dark buy 3 @ 99.80 ({o.oid[:6]}): view only; start the "
                              "chart with --control-others to cancel or drag it")
    shot(e.window, 'foreign-hover', tmp_path)
    _hover(e, e.chart.get_line(mine))
    qtbot.waitUntil(lambda: e.status.hint_text() == '', timeout=2000)   # ours: no hint


def test_c_on_a_foreign_order_is_refused_explicitly(env, qtbot):
    e = env
    o = _load_foreign(e, 'bot', 99.8)
    mine = place(e, Qt.Key_F, 99.3)
    e.mode.on_msg(st(e.book, mine, 'dark_submitted'))
    cursor(e, 99.8)
    qtbot.keyPress(e.chart, Qt.Key_C)
    assert e.book.cancels == []
    assert e.status.text() == f"bot's order {o.oid[:6]}: not yours to cancel (--control-others)"
    import html
    assert e.status.hint_text()                                  # hovering it...
    assert e.status.text() in html.unescape(e.status._msg_label.text())   # ...the refusal shows
    assert 'no order under the cursor' not in e.status.text()


def test_dragging_a_foreign_order_is_refused_visibly_without_panning(env, qtbot):
    from test_chart_view import drag
    e = env
    o = _load_foreign(e, 'bot', 99.8)
    line = e.chart.get_line(o.oid)
    assert not line.movable
    x_before = e.chart.vb.viewRange()[0]

    def at(y):
        return e.chart.plot.mapFromScene(e.chart.vb.mapViewToScene(QtCore.QPointF(e.x, y)))
    drag(e.chart.plot.viewport(), at(99.8), at(99.5))
    assert line.price == 99.8 and e.book.updates == []
    assert e.chart.vb.viewRange()[0] == x_before         # the view did not pan either
    assert e.status.text() == f"bot's order {o.oid[:6]}: not yours to drag (--control-others)"


# -- item 9: narrow windows ---------------------------------------------------------------------

def test_window_works_at_600_px(qtbot, tmp_path):
    from _chart_helpers import make_bars
    from piker_ems.ui.app import KEYS_HELP, ChartOptions, ChartWindow
    w = ChartWindow(ChartOptions(FQSN))
    qtbot.addWidget(w)
    w.status.set_info('paper · pikerd in this chart')
    w.status.set_pnl([('pos 2 @ 172.07', None), ('uPnL +0.02', 0.02), ('rPnL -1.20', -1.2),
                      ('fees 0.12', None)])
    w.status.set_size(2, 1)
    w.status.set_mode('mode: live-sell')
    w.status.show_error('dark-buy @ 0.00 refused: price must be > 0')
    w.chart.update_bars(make_bars())
    w.resize(1280, 760)                         # from a wide window (a trader's resize)
    w.show()
    qtbot.waitExposed(w)
    assert w.minimumSizeHint().width() <= 600
    w.resize(600, 480)
    qtbot.waitUntil(lambda: w.width() == 600, timeout=2000)
    QtWidgets.QApplication.processEvents()
    shot(w, 'narrow-600', tmp_path)
    bar = w.status
    # what must stay whole: the mode, the size field, the position
    assert bar._mode_label.isVisible() and bar._mode_label.width() >= bar._mode_label.sizeHint().width()
    assert bar.size_box.isVisible() and bar.size_box.text() == 'size 2'
    # an error takes the position summary's room while it shows...
    assert not bar._pnl_label.isVisible()
    qtbot.waitUntil(lambda: bar._msg_label.width() >= 250, timeout=2000)
    assert 'dark-buy @ 0.00 refuse' in bar._msg_label.text()
    assert bar._msg_label.toolTip() == 'dark-buy @ 0.00 refused: price must be > 0'
    # ...then it is back, the PnL numbers outlasting the rest
    bar.clear_errors()
    qtbot.waitUntil(lambda: bar._pnl_label.isVisible(), timeout=2000)
    QtWidgets.QApplication.processEvents()
    shot(w, 'narrow-600-pnl', tmp_path)
    assert 'uPnL +0.02' in bar._pnl_label.shown()
    assert bar._pnl_label.toolTip() == 'pos 2 @ 172.07 · uPnL +0.02 · rPnL -1.20 · fees 0.12'
    # what gives way: key hints and info elide, whole in their tooltips
    assert w.help_label.shown() != KEYS_HELP and w.help_label.toolTip() == KEYS_HELP
    assert w.help_label.geometry().right() <= w.chart.width()
    # the account/connection info gives way, still in the mode label's tooltip
    assert not bar._info_label.isVisible()
    assert bar._mode_label.toolTip() == 'paper · pikerd in this chart'
    # nothing spills past the window
    for wid in (bar._mode_label, bar.size_box, bar._pnl_label, bar._msg_label):
        assert wid.geometry().right() <= bar.width()
    # two charts tile a 1920 px screen and then some
    w.resize(960, 600)
    qtbot.waitUntil(lambda: w.width() == 960, timeout=2000)
