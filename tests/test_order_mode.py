"""Order mode unit tests: a real ChartWidget and StatusBar, a fake book, hand-made statuses."""
import os

os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')

import uuid  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from pyqtgraph.Qt import QtCore, QtGui, QtTest, QtWidgets  # noqa: E402

from piker_ems.clearing._messages import BrokerdPosition, Order, Status  # noqa: E402
from piker_ems.ui._chart import ChartWidget  # noqa: E402
from piker_ems.ui._statusbar import StatusBar, StatusModel  # noqa: E402
from piker_ems.ui.order_mode import CC_WINDOW, Notifier, OrderMode, mode_name  # noqa: E402
from _chart_helpers import make_bars

Qt = QtCore.Qt
FQSN = 'btcusd.sim'


class FakeBook:
    """Records what order mode asks of the EMS; answers nothing by itself."""

    def __init__(self, name: str = 'chart') -> None:
        self.name = name
        self.account = 'paper'
        self.fqsn = FQSN
        self.orders: dict[str, Order] = {}
        self.sent: list[Order] = []
        self.updates: list[tuple[str, dict]] = []
        self.cancels: list[str] = []

    def send(self, action, price, size=0.0, *, exec_mode=None, **_):
        oid = uuid.uuid4().hex
        order = Order(action=action, oid=oid, symbol=self.fqsn, price=price, size=size,
                      exec_mode=exec_mode or 'dark', owner=self.name)
        self.orders[oid] = order
        self.sent.append(order)
        return oid

    def update(self, oid, **fields):
        self.orders[oid] = self.orders[oid].model_copy(update=fields)
        self.updates.append((oid, fields))

    def cancel(self, oid):
        self.cancels.append(oid)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def st(book: FakeBook, oid: str, resp: str, **kw) -> Status:
    req = kw.pop('req', None) or book.orders.get(oid)
    owner = kw.pop('owner', None) or (req.owner if req else None) or book.name
    return Status(oid=oid, resp=resp, req=req, owner=owner, **kw)



@pytest.fixture
def env(qtbot):
    window = QtWidgets.QMainWindow()
    chart = ChartWidget(FQSN, tick_size=0.01, period_s=5.0)
    clock = Clock()
    status = StatusBar(model=StatusModel(clock=clock))
    window.setCentralWidget(chart)
    window.setStatusBar(status)
    qtbot.addWidget(window)
    window.resize(1000, 600)
    window.show()
    qtbot.waitExposed(window)
    chart.update_bars(make_bars(120, seed=2))
    QtWidgets.QApplication.processEvents()
    book = FakeBook()
    notes = []
    mode = OrderMode(chart, status, book, size=2, clock=clock,
                     notify=lambda t, b='': notes.append((t, b))).connect()

    class Env:
        pass

    e = Env()
    e.window, e.chart, e.status, e.book, e.mode, e.clock, e.notes = (
        window, chart, status, book, mode, clock, notes)
    e.x = float(chart.bars.array['time'][-20])
    return e


def cursor(e, price: float) -> None:
    e.chart.set_cursor(e.x, price)


def click(e, price: float) -> None:
    """A real left click on the plot at ``price`` (through the scene)."""
    vp = e.chart.plot.viewport()
    pos = e.chart.plot.mapFromScene(e.chart.vb.mapViewToScene(QtCore.QPointF(e.x, price)))
    QtTest.QTest.mouseMove(vp, pos)
    QtTest.QTest.qWait(15)          # pyqtgraph rate-limits mouse moves
    QtTest.QTest.mouseClick(vp, Qt.LeftButton, Qt.NoModifier, pos)
    QtWidgets.QApplication.processEvents()


def place(e, key, price: float, live: bool = False) -> str:
    """Hold an order key (and `s` for live), click at ``price``, release: returns the oid."""
    n = len(e.book.sent)
    cursor(e, price)
    if live:
        QtTest.QTest.keyPress(e.chart, Qt.Key_S)
    QtTest.QTest.keyPress(e.chart, key)
    e.mode.on_click(e.x, e.chart.cursor_price(), Qt.LeftButton)
    QtTest.QTest.keyRelease(e.chart, key)
    if live:
        QtTest.QTest.keyRelease(e.chart, Qt.Key_S)
    assert len(e.book.sent) == n + 1
    return e.book.sent[-1].oid


# -- key state machine ---------------------------------------------------------------------

def test_mode_names():
    assert mode_name(None) == 'mode: view'
    assert mode_name('buy', 'dark') == 'mode: dark-buy'
    assert mode_name('sell', 'live') == 'mode: live-sell'
    assert mode_name('alert', 'live') == 'mode: alert'


def test_hold_keys_stage_lines(env, qtbot):
    e = env
    cursor(e, 100.004)
    assert e.status.mode_text() == 'mode: view'
    qtbot.keyPress(e.chart, Qt.Key_F)
    staged = e.chart.staged_line
    assert staged is not None and staged.action == 'buy' and staged.exec_mode == 'dark'
    assert staged.price == 100.0                     # snapped to the tick
    assert e.status.mode_text() == 'mode: dark-buy'
    cursor(e, 100.236)                               # follows the mouse, on the grid
    assert e.chart.staged_line.price == 100.24
    qtbot.keyPress(e.chart, Qt.Key_S)                # s makes it live
    assert e.status.mode_text() == 'mode: live-buy'
    assert e.chart.staged_line.exec_mode == 'live'
    assert e.chart.staged_line.pen.style() == Qt.SolidLine
    qtbot.keyRelease(e.chart, Qt.Key_S)
    assert e.status.mode_text() == 'mode: dark-buy'
    assert e.chart.staged_line.pen.style() == Qt.DashLine
    qtbot.keyRelease(e.chart, Qt.Key_F)              # release removes the staged line
    assert e.chart.staged_line is None
    assert e.status.mode_text() == 'mode: view'
    assert e.book.sent == []

    qtbot.keyPress(e.chart, Qt.Key_D, Qt.ControlModifier)   # ctrl also makes it live
    assert e.status.mode_text() == 'mode: live-sell'
    assert e.chart.staged_line.action == 'sell'
    qtbot.keyRelease(e.chart, Qt.Key_D)
    assert e.status.mode_text() == 'mode: view'

    qtbot.keyPress(e.chart, Qt.Key_Control)
    qtbot.keyPress(e.chart, Qt.Key_D, Qt.ControlModifier)
    assert e.status.mode_text() == 'mode: live-sell'
    qtbot.keyRelease(e.chart, Qt.Key_Control)
    assert e.status.mode_text() == 'mode: dark-sell'
    qtbot.keyRelease(e.chart, Qt.Key_D)

    qtbot.keyPress(e.chart, Qt.Key_A)
    assert e.status.mode_text() == 'mode: alert'
    assert e.chart.staged_line.action == 'alert'
    qtbot.keyPress(e.chart, Qt.Key_S)                # alerts stay alerts
    assert e.status.mode_text() == 'mode: alert'
    qtbot.keyRelease(e.chart, Qt.Key_S)
    qtbot.keyRelease(e.chart, Qt.Key_A)
    assert e.chart.staged_line is None


def test_two_order_keys_last_wins_and_auto_repeat_ignored(env, qtbot):
    e = env
    cursor(e, 100.0)
    qtbot.keyPress(e.chart, Qt.Key_F)
    qtbot.keyPress(e.chart, Qt.Key_D)
    assert e.mode.action == 'sell'
    qtbot.keyRelease(e.chart, Qt.Key_D)
    assert e.mode.action == 'buy' and e.chart.staged_line.action == 'buy'
    # X11 auto-repeat: release+press pairs flagged auto-repeat must not drop the mode
    ev = QtGui.QKeyEvent(QtCore.QEvent.KeyRelease, Qt.Key_F, Qt.NoModifier, 'f', True)
    QtWidgets.QApplication.sendEvent(e.chart, ev)
    assert e.mode.action == 'buy'
    qtbot.keyRelease(e.chart, Qt.Key_F)
    assert e.mode.action is None


def test_escape_and_focus_loss_reset(env, qtbot):
    e = env
    qtbot.keyPress(e.chart, Qt.Key_F)
    qtbot.keyPress(e.chart, Qt.Key_Escape)
    assert e.mode.action is None and e.chart.staged_line is None
    qtbot.keyPress(e.chart, Qt.Key_D)
    QtWidgets.QApplication.sendEvent(e.chart, QtGui.QFocusEvent(QtCore.QEvent.FocusOut))
    assert e.mode.action is None and e.status.mode_text() == 'mode: view'


# -- submit ------------------------------------------------------------------------------

def test_click_submits_label_only_after_confirmation(env, qtbot):
    e = env
    y0, y1 = e.chart.vb.viewRange()[1]
    target = round(y0 + 0.3 * (y1 - y0), 2) + 0.003
    qtbot.keyPress(e.chart, Qt.Key_F)
    click(e, target)                                 # a real click through the scene
    assert len(e.book.sent) == 1
    order = e.book.sent[0]
    assert (order.action, order.exec_mode, order.size) == ('buy', 'dark', 2)
    assert abs(order.price * 100 - round(order.price * 100)) < 1e-9     # snapped
    assert abs(order.price - target) < 0.02 + (y1 - y0) / 200
    line = e.chart.get_line(order.oid)
    assert line is not None and line.price == order.price
    assert not line.confirmed and not line.label.isVisible()
    assert e.status.text() == 'submitting dark-buy'
    assert e.chart.staged_line is not None           # still holding f: can place another

    e.mode.on_msg(st(e.book, order.oid, 'dark_submitted'))
    assert line.confirmed and line.label.isVisible()
    assert line.label.toPlainText() == f'2 @ {order.price:.2f}'
    assert e.status.text() == 'submitted dark-buy'
    qtbot.keyRelease(e.chart, Qt.Key_F)
    assert e.chart.get_line(order.oid) is line       # the order stays


def test_live_sell_and_alert_submissions(env):
    e = env
    oid = place(e, Qt.Key_D, 101.0, live=True)
    order = e.book.orders[oid]
    assert (order.action, order.exec_mode, order.price) == ('sell', 'live', 101.0)
    assert e.status.text() == 'submitting live-sell'
    assert e.chart.get_line(oid).pen.style() == Qt.SolidLine
    e.mode.on_msg(st(e.book, oid, 'broker_submitted'))
    assert e.status.text() == 'submitted live-sell'

    aid = place(e, Qt.Key_A, 99.5)
    alert = e.book.orders[aid]
    assert (alert.action, alert.exec_mode, alert.size) == ('alert', 'dark', 0)
    assert e.status.text() == 'submitting alert'
    e.mode.on_msg(st(e.book, aid, 'alert_submitted'))
    assert e.chart.get_line(aid).label.toPlainText() == '99.50'
    assert 'submitted alert' in e.status.text()


def test_refused_submission_removes_line(env):
    e = env
    oid = place(e, Qt.Key_F, 100.0)
    e.mode.on_msg(st(e.book, oid, 'error', reason='unknown symbol'))
    assert e.chart.get_line(oid) is None
    assert 'unknown symbol' in e.status.text()


def test_submit_timeout_is_visible(env):
    e = env
    place(e, Qt.Key_F, 100.0)
    e.clock.t += 10
    e.status.model.expire()
    assert 'no confirmation' in e.status.text()


# -- modify --------------------------------------------------------------------------------

def test_drag_modifies_same_oid_snapped(env):
    e = env
    oid = place(e, Qt.Key_F, 100.0)
    e.mode.on_msg(st(e.book, oid, 'dark_submitted'))
    line = e.chart.get_line(oid)
    line.setPos(QtCore.QPointF(0, 100.537))          # what a mouse drag does
    line.sigPositionChangeFinished.emit(line)        # drag ends
    assert e.book.updates == [(oid, {'price': 100.54})]
    assert len(e.book.sent) == 1                     # no new order
    assert not line.confirmed                        # pending until the EMS re-confirms
    assert e.status.text().startswith('modifying dark-buy')
    e.mode.on_msg(st(e.book, oid, 'dark_submitted'))
    assert line.confirmed and line.price == 100.54
    assert e.status.text() == 'modified dark-buy -> 100.54'


def test_refused_modify_reverts_line(env):
    e = env
    oid = place(e, Qt.Key_F, 100.0)
    e.mode.on_msg(st(e.book, oid, 'dark_submitted'))
    line = e.chart.get_line(oid)
    line.setPos(100.5)
    line.sigPositionChangeFinished.emit(line)
    e.mode.on_msg(st(e.book, oid, 'error', reason='order is closed'))
    assert line.price == 100.0 and line.confirmed
    assert e.book.orders[oid].price == 100.0
    assert 'order is closed' in e.status.text()


# -- cancel --------------------------------------------------------------------------------

def _three(e) -> list[str]:
    oids = [place(e, Qt.Key_F, p) for p in (99.0, 99.5, 100.0)]
    for oid in oids:
        e.mode.on_msg(st(e.book, oid, 'dark_submitted'))
    return oids


def test_c_cancels_under_cursor(env, qtbot):
    e = env
    a, b, c = _three(e)
    cursor(e, 99.5)
    qtbot.keyPress(e.chart, Qt.Key_C)
    assert e.book.cancels == [b]
    assert e.status.text() == f'cancelling 1 order | cancelling order {b[:6]}'
    assert e.chart.get_line(b) is not None           # until confirmed
    e.mode.on_msg(st(e.book, b, 'dark_cancelled'))
    assert e.chart.get_line(b) is None
    assert e.status.text() == 'cancelled 1 order'
    assert {ln.oid for ln in e.chart.lines()} == {a, c}

    e.clock.t += 1
    cursor(e, 99.25)                                 # nothing there
    qtbot.keyPress(e.chart, Qt.Key_Delete)
    assert e.book.cancels == [b]
    assert e.status.text() == 'no order under the cursor'


def test_cc_cancels_all_and_resolves_after_n_confirmations(env, qtbot):
    e = env
    oids = _three(e)
    cursor(e, 98.0)                                  # no line under the cursor
    qtbot.keyPress(e.chart, Qt.Key_C)
    e.clock.t += CC_WINDOW / 2
    qtbot.keyPress(e.chart, Qt.Key_C)
    assert sorted(e.book.cancels) == sorted(oids)
    text = e.status.text()
    assert text.startswith('cancelling 3 orders')
    for oid in oids:
        assert f'cancelling order {oid[:6]}' in text
    for i, oid in enumerate(oids):
        assert e.status.text().startswith('cancelling 3 orders')
        e.mode.on_msg(st(e.book, oid, 'dark_cancelled'))
        assert e.chart.get_line(oid) is None
    assert e.status.text() == 'cancelled 3 orders'
    assert e.chart.lines() == []


def test_cc_with_cursor_on_a_line_counts_it_once(env, qtbot):
    e = env
    oids = _three(e)
    cursor(e, 99.5)
    qtbot.keyPress(e.chart, Qt.Key_C)                # cancels the line under the cursor now
    e.mode.on_msg(st(e.book, oids[1], 'dark_cancelled'))   # ... and it is confirmed fast
    e.clock.t += CC_WINDOW / 2
    qtbot.keyPress(e.chart, Qt.Key_C)
    assert sorted(e.book.cancels) == sorted(oids)    # each cancelled exactly once
    assert e.status.text().startswith('cancelling 3 orders')
    for oid in (oids[0], oids[2]):
        e.mode.on_msg(st(e.book, oid, 'dark_cancelled'))
    assert e.status.text() == 'cancelled 3 orders'


def test_slow_c_pair_is_two_under_cursor_cancels(env, qtbot):
    e = env
    oids = _three(e)
    cursor(e, 98.0)
    qtbot.keyPress(e.chart, Qt.Key_C)
    e.clock.t += CC_WINDOW * 2
    qtbot.keyPress(e.chart, Qt.Key_C)
    assert e.book.cancels == []
    assert len(e.chart.lines()) == len(oids)


def test_cancel_timeout_message(env, qtbot):
    e = env
    a, b, c = _three(e)
    e.mode.cancel_all()
    e.mode.on_msg(st(e.book, a, 'dark_cancelled'))
    e.clock.t += 10
    e.status.model.expire()
    text = e.status.text()
    assert 'timed out' in text and '2 of 3' in text
    assert not text.startswith('cancelling 3 orders |')
    # a late confirmation is harmless
    e.mode.on_msg(st(e.book, b, 'dark_cancelled'))
    assert e.chart.get_line(b) is None


def test_cancel_error_resolves_member(env):
    e = env
    oid = place(e, Qt.Key_F, 100.0)
    e.mode.on_msg(st(e.book, oid, 'dark_submitted'))
    e.mode.cancel_all()
    e.mode.on_msg(st(e.book, oid, 'error', reason=f'order {oid} is already closed'))
    assert e.chart.get_line(oid) is None
    assert 'already closed' in e.status.text()
    assert not e.status.model.open_groups


# -- fills, alerts, positions ------------------------------------------------------------

def test_fill_arrows_and_execution(env):
    e = env
    oid = place(e, Qt.Key_F, 101.0, live=True)
    e.mode.on_msg(st(e.book, oid, 'broker_submitted'))
    t = float(e.chart.bars.array['time'][-3]) + 1
    e.mode.on_msg(st(e.book, oid, 'broker_filled',
                     brokerd_msg={'action': 'buy', 'price': 100.37, 'size': 2, 'broker_time': t}))
    [arrow] = e.chart.arrows()
    assert arrow.action == 'buy' and arrow.price == 100.37
    assert arrow.pos().y() == 100.37
    assert e.notes and 'buy filled' in e.notes[-1][0]
    e.mode.on_msg(st(e.book, oid, 'broker_executed'))
    assert e.chart.get_line(oid) is None

    sid = place(e, Qt.Key_D, 99.0, live=True)
    e.mode.on_msg(st(e.book, sid, 'broker_filled', brokerd_msg={'price': 99.12, 'size': 2}))
    down = e.chart.arrows()[-1]
    assert down.action == 'sell' and down.price == 99.12


def test_alert_triggered_draws_right_arrow(env):
    e = env
    aid = place(e, Qt.Key_A, 100.5)
    e.mode.on_msg(st(e.book, aid, 'alert_submitted'))
    e.mode.on_msg(st(e.book, aid, 'alert_triggered', trigger_price=100.51))
    assert e.chart.get_line(aid) is None
    [arrow] = e.chart.arrows()
    assert arrow.action == 'alert' and arrow.price == 100.51
    assert 'alert 100.50 triggered' in e.status.text()


def test_dark_triggered_turns_live(env):
    e = env
    oid = place(e, Qt.Key_F, 100.0)
    e.mode.on_msg(st(e.book, oid, 'dark_submitted'))
    req = e.book.orders[oid].model_copy(update={'price': 100.05})
    e.mode.on_msg(st(e.book, oid, 'dark_triggered', req=req, trigger_price=100.0))
    line = e.chart.get_line(oid)
    assert line.exec_mode == 'live' and line.price == 100.05


def test_errors_shown(env):
    e = env
    oid = place(e, Qt.Key_F, 101.0, live=True)
    e.mode.on_msg(st(e.book, oid, 'broker_errored', reason='insufficient funds'))
    assert 'insufficient funds' in e.status.text()
    assert e.chart.get_line(oid) is None             # never reached the broker
    e.mode.on_msg(Status(oid='?', resp='error', reason='invalid client message'))
    assert 'invalid client message' in e.status.text()


def test_position_line(env):
    e = env
    e.mode.on_msg(BrokerdPosition(broker='sim', account='paper', symbol='btcusd', size=3, avg_price=100.25))
    assert e.chart.position_line.isVisible()
    assert e.chart.position_line.label.toPlainText() == 'pos 3 @ 100.25'
    # other symbols / accounts are not this chart's position
    e.mode.on_msg(BrokerdPosition(broker='sim', account='paper', symbol='ethusd', size=9, avg_price=5))
    e.mode.on_msg(BrokerdPosition(broker='sim', account='live', symbol='btcusd', size=9, avg_price=5))
    assert e.chart.position_line.size == 3
    e.mode.on_msg(BrokerdPosition(broker='sim', account='paper', symbol='btcusd', size=0, avg_price=0))
    assert not e.chart.position_line.isVisible()


# -- start-up snapshot and other clients ---------------------------------------------------

def test_snapshot_and_foreign_orders(env, qtbot):
    e = env
    mine = Order(action='buy', oid='m' * 32, symbol=FQSN, price=99.0, size=1, owner='chart')
    theirs = Order(action='sell', oid='t' * 32, symbol=FQSN, price=101.0, size=4,
                   exec_mode='live', owner='bob')
    other_sym = Order(action='buy', oid='o' * 32, symbol='ethusd.sim', price=5, size=1, owner='bob')
    snaps = [
        Status(oid=mine.oid, resp='dark_submitted', req=mine, owner='chart').model_dump(mode='json'),
        Status(oid=theirs.oid, resp='broker_submitted', req=theirs, owner='bob',
               brokerd_msg={'phase': 'live'}).model_dump(mode='json'),
        Status(oid=other_sym.oid, resp='dark_submitted', req=other_sym, owner='bob').model_dump(mode='json'),
    ]
    e.book.orders.update({o.oid: o for o in (mine, theirs, other_sym)})
    e.mode.load(snaps, [BrokerdPosition(broker='sim', symbol='btcusd', size=1, avg_price=99.5)])
    own_line = e.chart.get_line(mine.oid)
    foreign = e.chart.get_line(theirs.oid)
    assert own_line.confirmed and not own_line.foreign and own_line.movable
    assert foreign.foreign and foreign.owner == 'bob' and not foreign.movable
    assert foreign.exec_mode == 'live'
    assert foreign.label.toPlainText() == 'bob: 4 @ 101.00'
    assert e.chart.get_line(other_sym.oid) is None
    assert e.chart.position_line.isVisible()

    # a status for a new order of another client draws it too
    bob2 = Order(action='buy', oid='b' * 32, symbol=FQSN, price=98.0, size=1, owner='bob')
    e.mode.on_msg(Status(oid=bob2.oid, resp='dark_submitted', req=bob2, owner='bob'))
    assert e.chart.get_line(bob2.oid).foreign

    # cc cancels only our own order; c over a foreign line cancels nothing
    cursor(e, 101.0)
    qtbot.keyPress(e.chart, Qt.Key_C)
    assert e.book.cancels == []
    e.clock.t += CC_WINDOW / 3
    qtbot.keyPress(e.chart, Qt.Key_C)
    assert e.book.cancels == [mine.oid]
    assert e.status.text().startswith('cancelling 1 order')
    # another client's order being cancelled removes its line
    e.mode.on_msg(Status(oid=bob2.oid, resp='dark_cancelled', req=bob2, owner='bob'))
    assert e.chart.get_line(bob2.oid) is None


def test_redelivered_snapshot_is_idempotent(env):
    e = env
    oid = place(e, Qt.Key_F, 100.0)
    e.mode.on_msg(st(e.book, oid, 'dark_submitted'))
    e.mode.on_msg(st(e.book, oid, 'dark_submitted'))
    assert len(e.chart.lines()) == 1


def test_notifier_never_fatal(monkeypatch):
    n = Notifier(enabled=False)
    assert not n.enabled
    n('title', 'body')                               # a no-op
    n = Notifier(enabled=True)
    n.binary = '/nonexistent/notify-send'
    n('title', 'body')                               # OSError: logged, then disabled
    assert not n.enabled


def test_shift_cc_cancels_everyone_only_with_control_others(env, qtbot):
    e = env
    mine = Order(action='buy', oid='m' * 32, symbol=FQSN, price=99.0, size=1, owner='chart')
    theirs = Order(action='sell', oid='t' * 32, symbol=FQSN, price=101.0, size=4, owner='bob')
    e.book.orders.update({o.oid: o for o in (mine, theirs)})
    e.mode.load([Status(oid=o.oid, resp='dark_submitted', req=o, owner=o.owner).model_dump(mode='json')
                  for o in (mine, theirs)], [])
    cursor(e, 50.0)  # nothing under the cursor
    for _ in range(2):
        qtbot.keyPress(e.chart, Qt.Key_C, Qt.ShiftModifier)
        e.clock.t += CC_WINDOW / 3
    assert e.book.cancels == []                  # refused outright, no side effects ...
    assert '--control-others' in e.status.text()  # ... visibly
    assert 'nothing was cancelled' in e.status.text()

    e.mode.control_others = True
    e.clock.t += 1.0
    for _ in range(2):
        qtbot.keyPress(e.chart, Qt.Key_C, Qt.ShiftModifier)
        e.clock.t += CC_WINDOW / 3
    assert sorted(e.book.cancels) == sorted([mine.oid, theirs.oid])
    assert e.status.text().startswith('cancelling 2 orders')


# -- issue 8: the order mode reads statuses through the one vocabulary ----------------------

@pytest.mark.parametrize('resp', ['broker_expired', 'broker_closed', 'broker_inactive'])
def test_venue_ended_orders_are_removed_and_shown(env, resp):
    e = env
    oid = place(e, Qt.Key_F, 101.0, live=True)
    e.mode.on_msg(st(e.book, oid, 'broker_submitted'))
    assert e.chart.get_line(oid) is not None
    e.mode.on_msg(st(e.book, oid, resp, reason='end of day'))
    assert e.chart.get_line(oid) is None
    assert resp.removeprefix('broker_') in e.status.text() and 'end of day' in e.status.text()


def test_broker_errored_after_ack_is_final(env):
    """broker_errored is always final: a live order that errored at its venue after the ack
    (or was lost with it) must not stay drawn as if it were working."""
    e = env
    oid = place(e, Qt.Key_F, 101.0, live=True)
    e.mode.on_msg(st(e.book, oid, 'broker_submitted'))
    e.mode.on_msg(st(e.book, oid, 'broker_errored', reason='venue lost'))
    assert e.chart.get_line(oid) is None
    assert 'venue lost' in e.status.text()


def test_unknown_venue_status_keeps_the_order_working(env):
    """The open-set rule: an unknown broker_<x> is a working, non-final, non-error notice."""
    e = env
    oid = place(e, Qt.Key_F, 101.0)
    e.mode.on_msg(st(e.book, oid, 'dark_submitted'))
    e.mode.on_msg(st(e.book, oid, 'broker_pending_review'))
    line = e.chart.get_line(oid)
    assert line is not None and line.confirmed and line.exec_mode == 'live'
    assert 'pending_review' not in e.status.text()


def test_order_mode_keeps_no_private_status_lists():
    import piker_ems.ui.order_mode as om

    for name in ('SUBMITTED', 'CANCELLED', 'ENDED', 'DONE', 'ERRORS'):
        assert not hasattr(om, name), name
