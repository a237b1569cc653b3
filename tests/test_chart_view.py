"""Chart view behaviour a trader relies on all day (issue 12 items 1 and 2): the price scale
follows the bars (far lines become edge markers), the price axis scales by hand, and panning
back through history leaves follow mode at once."""
import os

os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from pyqtgraph.Qt import QtCore, QtGui, QtTest, QtWidgets  # noqa: E402

from _chart_helpers import make_bars  # noqa: E402
from piker_ems.ui._chart import ChartWidget  # noqa: E402

Qt = QtCore.Qt
L, NB = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton


def shot(widget: QtWidgets.QWidget, name: str, tmp_path: Path) -> Path:
    """Save what the widget shows (into $PIKER_EMS_SHOTS if set, to look at)."""
    out = Path(os.environ.get('PIKER_EMS_SHOTS') or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f'{name}.png'
    assert widget.grab().save(str(path), 'PNG')
    return path


@pytest.fixture
def chart(qtbot):
    w = ChartWidget('btcusd.sim', tick_size=0.01, period_s=5.0)
    qtbot.addWidget(w)
    w.resize(1000, 600)
    w.show()
    qtbot.waitExposed(w)
    bars = make_bars()
    w.update_bars(bars)
    last = float(bars['close'][-1])
    w.set_l1(last - 0.01, last + 0.01)
    w.set_last(last)
    QtWidgets.QApplication.processEvents()
    return w


def bars_fraction(chart) -> float:
    """Share of the plot height the visible bars use."""
    (x0, x1), (y0, y1) = chart.vb.viewRange()
    lo, hi = chart.bars.y_range(x0, x1)
    return (hi - lo) / (y1 - y0)


def _mouse(widget, kind, pos, button, buttons, mods=Qt.KeyboardModifier.NoModifier):
    ev = QtGui.QMouseEvent(kind, QtCore.QPointF(pos), button, buttons, mods)
    QtWidgets.QApplication.sendEvent(widget, ev)
    QtTest.QTest.qWait(15)   # pyqtgraph rate-limits mouse moves (100 Hz)


def drag(widget, p0: QtCore.QPoint, p1: QtCore.QPoint, steps: int = 8) -> None:
    _mouse(widget, QtCore.QEvent.Type.MouseMove, p0, NB, Qt.MouseButtons(NB))
    _mouse(widget, QtCore.QEvent.Type.MouseButtonPress, p0, L, Qt.MouseButtons(L))
    for k in range(1, steps + 1):
        p = p0 + (p1 - p0) * k / steps
        _mouse(widget, QtCore.QEvent.Type.MouseMove, p, NB, Qt.MouseButtons(L))
    _mouse(widget, QtCore.QEvent.Type.MouseButtonRelease, p1, L, Qt.MouseButtons(NB))
    QtWidgets.QApplication.processEvents()


def double_click(widget, pos) -> None:
    """What a window system sends for a double click: press, release, dblclick, release."""
    T = QtCore.QEvent.Type
    for kind, buttons in ((T.MouseButtonPress, L), (T.MouseButtonRelease, NB),
                          (T.MouseButtonDblClick, L), (T.MouseButtonRelease, NB)):
        _mouse(widget, kind, pos, L, Qt.MouseButtons(buttons))


def plot_point(chart, fx: float, fy: float) -> QtCore.QPoint:
    """Viewport pixel at fractions (fx, fy) of the plot area."""
    r = chart.vb.sceneBoundingRect()
    return chart.plot.mapFromScene(QtCore.QPointF(r.left() + fx * r.width(), r.top() + fy * r.height()))


def axis_point(chart, fy: float) -> QtCore.QPoint:
    r = chart.price_axis_rect()
    return chart.plot.mapFromScene(QtCore.QPointF(r.center().x(), r.top() + fy * r.height()))


# -- item 1: y-range -------------------------------------------------------------------------

def test_far_foreign_order_does_not_squash_the_bars(chart, tmp_path):
    assert 0.75 <= bars_fraction(chart) <= 0.9
    assert chart.edge_markers() == []
    last = chart._last
    # another client's order far below the market, one of ours far above
    chart.add_order_line('far1', 50.0, 'buy', size=3, owner='bot', foreign=True, confirmed=True)
    chart.add_order_line('far2', last + 70, 'sell', size=2, confirmed=True)
    chart.set_position(2, 60.0)
    QtWidgets.QApplication.processEvents()
    path = shot(chart, 'far-order-markers', tmp_path)
    assert path.stat().st_size > 0
    assert 0.75 <= bars_fraction(chart) <= 0.9            # was ~3 % before
    texts = [(m.edge, m.textItem.toPlainText()) for m in chart.edge_markers()]
    assert ('top', f'▲ 2 @ {last + 70:.2f}') in texts
    assert ('bottom', '▼ bot: 3 @ 50.00') in texts
    assert ('bottom', '▼ pos 2 @ 60.00') in texts
    # the markers sit inside the plot, stacked, never on top of each other
    rects = [m.sceneBoundingRect() for m in chart.edge_markers()]
    vb = chart.vb.sceneBoundingRect()
    for r in rects:
        assert vb.adjusted(-1, -1, 1, 1).contains(r)
    bottoms = [r for r, m in zip(rects, chart.edge_markers()) if m.edge == 'bottom']
    assert not bottoms[0].intersects(bottoms[1])
    # a line back inside the view loses its marker
    chart.remove_order_line('far2')
    assert all(m.edge == 'bottom' for m in chart.edge_markers())


def test_near_order_line_visible_without_marker(chart):
    (y0, y1) = chart.vb.viewRange()[1]
    chart.add_order_line('near', (y0 + y1) / 2, 'buy', size=1, confirmed=True)
    assert chart.edge_markers() == []


def test_price_axis_scales_by_hand_and_r_returns_to_auto(chart, qtbot, tmp_path):
    y0, y1 = chart.vb.viewRange()[1]
    # drag the price axis down: a wider price range (zoom out)
    drag(chart.plot.viewport(), axis_point(chart, 0.4), axis_point(chart, 0.7))
    assert not chart.y_auto
    z0, z1 = chart.vb.viewRange()[1]
    assert (z1 - z0) > 1.5 * (y1 - y0)
    assert chart.auto_y_button.isVisible()
    shot(chart, 'manual-y', tmp_path)
    # new bars do not undo the user's scale
    chart.update_bars(make_bars(205))
    assert chart.vb.viewRange()[1] == [z0, z1]
    # a plot drag now pans y too
    drag(chart.plot.viewport(), plot_point(chart, 0.5, 0.5), plot_point(chart, 0.5, 0.3))
    p0, p1 = chart.vb.viewRange()[1]
    assert p0 < z0 and abs((p1 - p0) - (z1 - z0)) < 1e-6
    qtbot.keyClick(chart, Qt.Key.Key_R)
    assert chart.y_auto and not chart.auto_y_button.isVisible()
    assert 0.75 <= bars_fraction(chart) <= 0.9


def test_wheel_on_price_axis_and_double_click_back_to_auto(chart, qtbot):
    y0, y1 = chart.vb.viewRange()[1]
    vp = chart.plot.viewport()
    pos = axis_point(chart, 0.5)
    ev = QtGui.QWheelEvent(QtCore.QPointF(pos), QtCore.QPointF(vp.mapToGlobal(pos)),
                           QtCore.QPoint(0, 0), QtCore.QPoint(0, 120), Qt.MouseButtons(NB),
                           Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QtWidgets.QApplication.sendEvent(vp, ev)
    z0, z1 = chart.vb.viewRange()[1]
    assert not chart.y_auto and (z1 - z0) < (y1 - y0)          # wheel up zooms in
    double_click(vp, pos)
    qtbot.waitUntil(lambda: chart.y_auto, timeout=2000)
    assert 0.75 <= bars_fraction(chart) <= 0.9


# -- item 2: follow mode -----------------------------------------------------------------------

def test_small_drag_leaves_follow_mode_and_end_returns(chart, qtbot, tmp_path):
    assert chart.following and not chart.follow_button.isVisible()
    x_before = chart.vb.viewRange()[0]
    # a 60 px drag to the right (back in history): the newest bar stays in view
    drag(chart.plot.viewport(), plot_point(chart, 0.5, 0.5), plot_point(chart, 0.56, 0.5))
    assert not chart.following
    assert chart.follow_button.isVisible()
    panned = chart.vb.viewRange()[0]
    assert panned[0] < x_before[0]
    # quotes/new bars no longer snap the view back
    chart.update_bars(make_bars(202))
    assert chart.vb.viewRange()[0] == panned
    shot(chart, 'not-following', tmp_path)
    qtbot.keyClick(chart, Qt.Key.Key_End)
    assert chart.following and not chart.follow_button.isVisible()
    a = chart.bars.array
    x0, x1 = chart.vb.viewRange()[0]
    assert x0 < a['time'][-1] < x1 and x1 - a['time'][-1] < 0.25 * (x1 - x0)


def test_follow_button_returns_to_following(chart, qtbot):
    drag(chart.plot.viewport(), plot_point(chart, 0.5, 0.5), plot_point(chart, 0.9, 0.5))
    assert not chart.following
    btn = chart.follow_button
    assert btn.isVisible()
    # it sits inside the plot area (bottom left: the right edge holds tags and markers)
    vb = chart.plot.mapFromScene(chart.vb.sceneBoundingRect()).boundingRect()
    assert vb.contains(btn.geometry())
    qtbot.mouseClick(btn, L)
    assert chart.following and not btn.isVisible()


def test_wheel_zoom_keeps_following(chart):
    vp = chart.plot.viewport()
    pos = plot_point(chart, 0.5, 0.5)
    ev = QtGui.QWheelEvent(QtCore.QPointF(pos), QtCore.QPointF(vp.mapToGlobal(pos)),
                           QtCore.QPoint(0, 0), QtCore.QPoint(0, 120), Qt.MouseButtons(NB),
                           Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    span0 = chart.vb.viewRange()[0]
    QtWidgets.QApplication.sendEvent(vp, ev)
    x0, x1 = chart.vb.viewRange()[0]
    assert chart.following and (x1 - x0) < span0[1] - span0[0]
    more = make_bars(206)
    chart.update_bars(more)
    x0, x1 = chart.vb.viewRange()[0]
    assert x0 < more['time'][-1] < x1


# -- item 5: readable labels -----------------------------------------------------------------

def test_close_order_labels_do_not_overlap(chart, tmp_path):
    (y0, y1) = chart.vb.viewRange()[1]
    mid = round((y0 + y1) / 2, 2)
    lines = [chart.add_order_line(f'o{i}', mid + i * 0.01, 'buy' if i % 2 else 'sell',
                                  size=i + 1, confirmed=True) for i in range(4)]
    lines.append(chart.add_order_line('far', y1 + 50, 'sell', size=9, owner='a-long-name',
                                      foreign=True, confirmed=True))   # a wide marker
    lines.append(chart.add_order_line('top', y1 - 0.02, 'buy', size=5, owner='bot',
                                      foreign=True, confirmed=True))
    QtWidgets.QApplication.processEvents()
    shot(chart, 'close-labels', tmp_path)
    (y0, y1) = chart.vb.viewRange()[1]
    rects = [ln.label.sceneBoundingRect() for ln in lines if y0 <= ln.price <= y1]
    rects += [m.sceneBoundingRect() for m in chart.edge_markers()]
    assert len(rects) == 6
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            assert not a.intersects(b), (a, b)
    # every label is still inside the plot
    vb = chart.vb.sceneBoundingRect().adjusted(-1, -1, 1, 1)
    assert all(vb.contains(r) for r in rects)
    # lines moving apart go back to the right edge
    for i, ln in enumerate(lines[:4]):
        ln.set_price(y0 + (i + 1) * (y1 - y0) / 6)
    chart.layout_labels()
    assert all(ln.label.orthoPos == ln.LABEL_POS for ln in lines[:4])


def test_last_price_stays_visible_under_the_cursor_tag(chart, tmp_path):
    last = chart._last
    (x0, x1) = chart.vb.viewRange()[0]
    for dy in (0.0, 0.01, -0.01):
        chart.set_cursor((x0 + x1) / 2, last + dy)
        assert chart.last_label.isVisible() and chart.cursor_label.isVisible()
        a, b = chart.last_label.sceneBoundingRect(), chart.cursor_label.sceneBoundingRect()
        assert not a.adjusted(0, 1, 0, -1).intersects(b), dy
    shot(chart, 'cursor-on-last', tmp_path)
    # away from the last price the cursor tag points exactly at the cursor
    chart.set_cursor((x0 + x1) / 2, last - 0.5)
    r = chart.cursor_label.sceneBoundingRect()
    y = chart.vb.mapViewToScene(QtCore.QPointF(0, chart.cursor_price())).y()
    assert abs(r.center().y() - y) < 1.5
