"""Chart widgets: order/level lines, position line, arrows, bars item and ChartWidget geometry."""
import os

os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from pyqtgraph.Qt import QtCore, QtGui, QtTest, QtWidgets  # noqa: E402

from _chart_helpers import T0, make_bars  # noqa: E402
from piker_ems.data._bars import BarAggregator  # noqa: E402
from piker_ems.ui._bars import OHLCBarsItem  # noqa: E402
from piker_ems.ui._chart import ChartWidget  # noqa: E402
from piker_ems.ui._lines import (  # noqa: E402
    ALERT_COLOR,
    BUY_COLOR,
    SELL_COLOR,
    LevelLine,
    PositionLine,
    format_size,
    make_alert_arrow,
    make_fill_arrow,
    snap_to_tick,
    tick_decimals,
)

Qt = QtCore.Qt



@pytest.fixture
def chart(qtbot):
    w = ChartWidget('btcusd.sim', tick_size=0.01, period_s=5.0)
    qtbot.addWidget(w)
    w.resize(1000, 600)
    w.show()
    qtbot.waitExposed(w)
    w.update_bars(make_bars())
    QtWidgets.QApplication.processEvents()
    return w


# -- helpers ------------------------------------------------------------------
def test_snap_to_tick_and_decimals():
    assert tick_decimals(0.01) == 2
    assert tick_decimals(0.25) == 2
    assert tick_decimals(1) == 0
    assert tick_decimals(0.0005) == 4
    assert snap_to_tick(101.237, 0.01) == 101.24
    assert snap_to_tick(100.13, 0.25) == 100.25
    assert snap_to_tick(100.12, 0.25) == 100.0
    assert snap_to_tick(0.1 + 0.2, 0.1) == 0.3


def test_format_size():
    assert format_size(3) == '3'
    assert format_size(0.5) == '0.5'
    assert format_size(12500) == '12,500'
    assert format_size(100000) == '100k'
    assert format_size(2_500_000) == '2.5M'
    assert format_size(-3) == '-3'


# -- LevelLine ----------------------------------------------------------------
def test_label_hidden_until_confirmed(qtbot):
    line = LevelLine(101.0, action='buy', size=3, oid='abc')
    assert not line.confirmed
    assert not line.label.isVisible()
    line.confirm()
    assert line.confirmed
    assert line.label.isVisible()
    assert line.label.toPlainText() == '3 @ 101.00'
    line.set_label_text('3 lots')
    assert line.label.toPlainText() == '3 lots'
    line.unconfirm()
    assert not line.label.isVisible()


def test_alert_label_is_the_level():
    line = LevelLine(99.5, action='alert')
    line.confirm()
    assert line.label.toPlainText() == '99.50'


def test_dark_dashed_live_solid():
    dark = LevelLine(100.0, action='buy', exec_mode='dark')
    live = LevelLine(100.0, action='buy', exec_mode='live')
    assert dark.pen.style() == Qt.PenStyle.DashLine
    assert live.pen.style() == Qt.PenStyle.SolidLine
    # restyling a staged line when `s` is pressed
    dark.set_style(exec_mode='live')
    assert dark.pen.style() == Qt.PenStyle.SolidLine


@pytest.mark.parametrize('action,color', [
    ('buy', BUY_COLOR), ('sell', SELL_COLOR), ('alert', ALERT_COLOR),
])
def test_colour_per_action(action, color):
    line = LevelLine(100.0, action=action)
    assert line.pen.color().rgb() == color.rgb()


def test_foreign_order_dimmer_with_owner_label():
    own = LevelLine(100.0, action='sell', size=5)
    other = LevelLine(100.0, action='sell', size=5, owner='bob', foreign=True)
    assert other.pen.color().lightness() < own.pen.color().lightness()
    assert other.pen.widthF() < own.pen.widthF()
    other.confirm()
    assert other.label.toPlainText().startswith('bob')


def test_staged_line_distinct_and_never_labelled():
    staged = LevelLine(100.0, action='buy', staged=True)
    normal = LevelLine(100.0, action='buy')
    assert staged.staged and not staged.movable
    assert staged.pen.color().alpha() < 255
    assert staged.pen.widthF() < normal.pen.widthF()
    staged.confirm()
    assert not staged.label.isVisible()
    staged.set_staged(False)
    assert staged.movable and staged.label.isVisible()


def test_invalid_action_rejected():
    with pytest.raises(ValueError):
        LevelLine(1.0, action='hold')
    with pytest.raises(ValueError):
        LevelLine(1.0, exec_mode='lit')


def test_drag_snaps_and_emits_snapped_price(qtbot):
    moved = []
    line = LevelLine(100.0, action='buy', tick_size=0.25,
                     on_moved=lambda ln, p: moved.append((ln, p)))
    assert line.price == 100.0
    # InfiniteLine's drag calls setPos with the raw mouse position
    line.setPos(QtCore.QPointF(3.0, 101.37))
    assert line.price == 101.25
    line.setPos([0.0, 101.4])
    assert line.price == 101.5
    with qtbot.waitSignal(line.sigMoved) as blocker:
        line.sigPositionChangeFinished.emit(line)   # end of the drag
    assert moved == [(line, 101.5)]
    assert blocker.args == [line, 101.5]
    # a drag ending where it started reports nothing
    line.sigPositionChangeFinished.emit(line)
    assert len(moved) == 1
    # programmatic moves never call back
    line.set_price(99.1)
    assert line.price == 99.0
    line.sigPositionChangeFinished.emit(line)
    assert len(moved) == 1


def _mouse(widget, kind, pos, button, buttons):
    ev = QtGui.QMouseEvent(kind, QtCore.QPointF(pos), button, buttons, Qt.KeyboardModifier.NoModifier)
    QtWidgets.QApplication.sendEvent(widget, ev)
    QtTest.QTest.qWait(15)   # pyqtgraph rate-limits mouse moves (100 Hz)


def test_real_mouse_drag_snaps_to_tick(chart, qtbot):
    """Drive an actual mouse drag through the scene: every position is on the grid."""
    chart.set_tick_size(0.05)
    ymin, ymax = chart.vb.viewRange()[1]
    start = snap_to_tick(ymin + 0.4 * (ymax - ymin), 0.05)
    moved = []
    line = chart.add_order_line('o1', start, 'buy', size=1, on_moved=lambda ln, p: moved.append(p))
    seen = []
    line.sigPositionChanged.connect(lambda ln: seen.append(ln.price))
    QtWidgets.QApplication.processEvents()

    vp = chart.plot.viewport()
    (x0, x1) = chart.vb.viewRange()[0]

    def to_vp(x, y):
        scene = chart.vb.mapViewToScene(QtCore.QPointF(x, y))
        return chart.plot.mapFromScene(scene)

    x = x0 + 0.5 * (x1 - x0)
    p0 = to_vp(x, start)
    L, NB = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    _mouse(vp, QtCore.QEvent.Type.MouseMove, p0, NB, Qt.MouseButtons(NB))
    assert line.hovered                          # real hover events reach the line
    assert chart.lines_under_cursor() == [line]
    _mouse(vp, QtCore.QEvent.Type.MouseButtonPress, p0, L, Qt.MouseButtons(L))
    target = start + 0.23 * (ymax - ymin)
    for k in range(1, 11):
        y = start + (target - start) * k / 10
        _mouse(vp, QtCore.QEvent.Type.MouseMove, to_vp(x, y), NB, Qt.MouseButtons(L))
    _mouse(vp, QtCore.QEvent.Type.MouseButtonRelease, to_vp(x, target), L, Qt.MouseButtons(NB))
    QtWidgets.QApplication.processEvents()

    assert seen, 'the drag never moved the line'
    for p in seen:
        assert abs(p / 0.05 - round(p / 0.05)) < 1e-9
    assert moved and moved[-1] == line.price
    assert abs(line.price - target) <= 0.05 + (ymax - ymin) / 100  # within a tick + a pixel or so


def test_hover_state(qtbot):
    line = LevelLine(100.0)
    assert not line.hovered
    line.setMouseHover(True)
    assert line.hovered
    assert line.currentPen is line.hoverPen
    line.setMouseHover(False)
    assert not line.hovered


# -- PositionLine / arrows -----------------------------------------------------
def test_position_line_hidden_when_flat():
    pos = PositionLine(tick_size=0.01)
    assert not pos.isVisible()
    pos.set_position(3, 101.25)
    assert pos.isVisible()
    assert pos.value() == 101.25
    assert pos.label.toPlainText() == 'pos 3 @ 101.25'
    # an average of fills falls between ticks: shown with the tick's decimals (issue 12 item 14)
    pos.set_position(3, 101.2566666667)
    assert pos.label.toPlainText() == 'pos 3 @ 101.26'
    pos.set_position(0, 101.25)
    assert not pos.isVisible()


def test_arrow_directions():
    up = make_fill_arrow('buy', 10.0, 100.0)
    down = make_fill_arrow('sell', 10.0, 100.0)
    right = make_alert_arrow(10.0, 100.0)
    # tip at the position; the body lies opposite to the pointing direction
    # (screen coords: y grows downwards)
    assert up.path.boundingRect().top() >= -1e-6          # body below the tip -> points up
    assert down.path.boundingRect().bottom() <= 1e-6      # body above the tip -> points down
    assert right.path.boundingRect().right() <= 1e-6      # body left of the tip -> points right
    assert up.brush().color().rgb() == BUY_COLOR.rgb()
    assert down.brush().color().rgb() == SELL_COLOR.rgb()
    assert right.brush().color().rgb() == ALERT_COLOR.rgb()
    assert (up.pos().x(), up.pos().y()) == (10.0, 100.0)
    with pytest.raises(ValueError):
        make_fill_arrow('alert', 0, 0)


# -- bars item -------------------------------------------------------------------
def test_bars_item_bounds_and_incremental_redraw(qtbot):
    item = OHLCBarsItem(period_s=5.0)
    agg = BarAggregator(5.0, capacity=8)
    agg.update(T0, 10.0, 1)
    agg.update(T0 + 1, 12.0, 1)
    item.set_data(agg.array)
    r = item.boundingRect()
    assert (r.left(), r.right()) == (T0, T0 + 5)
    assert (r.top(), r.bottom()) == (10.0, 12.0)
    rebuilds = item.full_rebuilds
    for i in range(2, 40):                          # many ticks + new bars
        agg.update(T0 + i, 10.0 + (i % 7), 1)
        item.set_data(agg.array)
    assert item.full_rebuilds == rebuilds           # only appends / last-bar redraws
    r = item.boundingRect()
    a = agg.array
    assert r.left() == a['time'][0] and r.right() == a['time'][-1] + 5
    assert r.top() == a['low'].min() and r.bottom() == a['high'].max()
    assert item.y_range(T0 + 10, T0 + 14) == (a[2]['low'], a[2]['high'])
    item.set_data(agg.array[:0])
    assert item.boundingRect().isNull() or item.boundingRect().isEmpty()


def test_bars_item_history_is_chunked(qtbot):
    from piker_ems.ui._bars import CHUNK_BARS

    item = OHLCBarsItem(period_s=1.0)
    agg = BarAggregator(1.0)
    n = CHUNK_BARS * 2 + 100
    for i in range(n):
        agg.update(T0 + i, 100.0 + (i % 5), 1)
        if i % 97 == 0:
            item.set_data(agg.array)
    item.set_data(agg.array)
    chunks = item._chunks
    assert [c[2] for c in chunks] == [CHUNK_BARS, CHUNK_BARS, n - 1 - 2 * CHUNK_BARS]
    assert chunks[0][0] == T0 and chunks[-1][1] == T0 + n - 1
    # chunk x ranges are contiguous, so paint can skip the invisible ones
    for a, b in zip(chunks, chunks[1:]):
        assert a[1] == b[0]


# -- ChartWidget -------------------------------------------------------------------
def test_crosshair_price_snapped(chart):
    assert chart.cursor_price() is None
    x = float(chart.bars.array['time'][-10])
    chart.set_tick_size(0.25)
    chart.set_cursor(x, 100.13)
    assert chart.cursor_price() == 100.25
    chart.set_cursor(x, 100.12)
    assert chart.cursor_price() == 100.0
    assert chart.cursor_label.isVisible() or not (
        chart.vb.viewRange()[1][0] <= 100.0 <= chart.vb.viewRange()[1][1])
    chart.set_tick_size(0.01)
    assert chart.cursor_price() == 100.12
    chart.clear_cursor()
    assert chart.cursor_price() is None


def test_crosshair_follows_real_mouse(chart, qtbot):
    (x0, x1), (y0, y1) = chart.vb.viewRange()
    x, y = (x0 + x1) / 2, y0 + 0.3 * (y1 - y0)
    pos = chart.plot.mapFromScene(chart.vb.mapViewToScene(QtCore.QPointF(x, y)))
    with qtbot.waitSignal(chart.sigCursorMoved) as blocker:
        QtTest.QTest.mouseMove(chart.plot.viewport(), pos)
    price = chart.cursor_price()
    assert price is not None
    assert abs(price * 100 - round(price * 100)) < 1e-9          # on the 0.01 grid
    assert abs(price - y) < 0.02 + (y1 - y0) / 100
    assert blocker.args[1] == price


def test_lines_under_cursor(chart):
    a = chart.bars.array
    mid = round(float(a['close'][-1]), 2)
    near = chart.add_order_line('near', mid, 'buy', size=1)
    far = chart.add_order_line('far', mid + 1.0, 'sell', size=1)
    x = float(a['time'][-5])
    chart.set_cursor(x, mid + 0.001)
    assert chart.lines_under_cursor() == [near]
    chart.set_cursor(x, mid + 0.5)
    assert chart.lines_under_cursor() == []
    far.setMouseHover(True)                     # hovered lines count too
    assert chart.lines_under_cursor() == [far]
    far.setMouseHover(False)
    assert set(chart.lines()) == {near, far}
    assert chart.remove_order_line('near') is near
    assert chart.lines() == [far]
    assert chart.remove_order_line('nope') is None


def test_staged_line_follows_cursor(chart):
    x = float(chart.bars.array['time'][-5])
    chart.set_cursor(x, 100.004)
    staged = chart.add_staged_line('sell', 'dark')
    assert staged.price == 100.0 and staged.staged
    chart.set_cursor(x, 100.236)
    assert staged.price == 100.24
    assert staged not in chart.lines()
    assert staged not in chart.lines_under_cursor()
    assert chart.remove_staged_line() is staged
    assert chart.staged_line is None


def test_add_order_line_confirm_and_y_range(chart):
    hi = float(chart.bars.array['high'].max())
    line = chart.add_order_line('a1', hi + 5, 'alert', confirmed=True)
    assert line.label.isVisible()
    assert line.oid == 'a1' and chart.get_line('a1') is line
    y0, y1 = chart.vb.viewRange()[1]
    assert y1 < hi + 5                      # y follows the bars, not far order lines...
    assert [m.edge for m in chart.edge_markers()] == ['top']   # ...which get an edge marker
    chart.remove_order_line('a1')
    assert chart.edge_markers() == []


def test_l1_and_last(chart):
    chart.set_l1(100.10, 100.12, 5, 7)
    assert chart._bid_line.value() == 100.10 and chart._ask_line.value() == 100.12
    assert chart._ask_line.label.toPlainText() == 'ask 100.12 ×7'
    chart.set_last(100.11)
    assert chart.last_label.text() == '100.11'
    chart.set_last(100.12)
    assert chart.last_label._bg.rgb() == BUY_COLOR.rgb()      # uptick
    chart.set_last(100.10)
    assert chart.last_label._bg.rgb() == SELL_COLOR.rgb()     # downtick


def test_position_and_arrows_on_chart(chart):
    chart.set_position(0, 100.0)
    assert not chart.position_line.isVisible()
    chart.set_position(-2, 100.5)
    assert chart.position_line.isVisible()
    assert chart.position_line.label.toPlainText() == 'pos -2 @ 100.50'
    t = float(chart.bars.array['time'][-3]) + 1.2
    arrow = chart.add_fill_arrow('buy', t, 100.0)
    assert arrow.pos().x() == float(chart.bars.array['time'][-3]) + 2.5   # bar centre
    chart.add_alert_arrow(t, 100.0)
    assert len(chart.arrows()) == 2
    chart.clear_arrows()
    assert chart.arrows() == []


def test_follows_latest_until_panned_away(chart):
    a = chart.bars.array
    x0, x1 = chart.vb.viewRange()[0]
    assert x0 < a['time'][-1] < x1
    assert 140 <= (a['time'][-1] - x0) / chart.period <= 160     # ~150 bars in view
    # user pans far to the left -> stop following
    chart.vb.setXRange(a['time'][0], a['time'][50], padding=0)
    chart.vb.sigRangeChangedManually.emit([True, False])
    assert not chart.following
    more = make_bars(260)
    chart.update_bars(more)
    assert chart.vb.viewRange()[0][1] < more['time'][-1]
    chart.follow_latest()
    assert chart.following
    x0, x1 = chart.vb.viewRange()[0]
    assert x0 < more['time'][-1] < x1


def test_keys_forwarded_once(chart, qtbot):
    pressed, released = [], []
    chart.sigKeyPressed.connect(lambda ev: pressed.append(ev.key()))
    chart.sigKeyReleased.connect(lambda ev: released.append(ev.key()))
    qtbot.keyPress(chart, Qt.Key.Key_F)
    qtbot.keyRelease(chart, Qt.Key.Key_F)
    assert pressed == [Qt.Key.Key_F] and released == [Qt.Key.Key_F]
    assert chart.plot.focusProxy() is chart


def test_clicks_emit_snapped_price(chart, qtbot):
    (x0, x1), (y0, y1) = chart.vb.viewRange()
    x, y = (x0 + x1) / 2, y0 + 0.25 * (y1 - y0)
    pos = chart.plot.mapFromScene(chart.vb.mapViewToScene(QtCore.QPointF(x, y)))
    with qtbot.waitSignal(chart.sigClicked) as blocker:
        qtbot.mouseClick(chart.plot.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    cx, price, button = blocker.args
    assert button == Qt.MouseButton.LeftButton
    assert price == snap_to_tick(price, 0.01)
    assert abs(price - y) < 0.02 + (y1 - y0) / 100


def test_title(chart):
    assert 'btcusd.sim' in chart.title_label.text()
