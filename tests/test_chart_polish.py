"""The chart's crosshair and small text (issue 12 items 11 and 14): the crosshair follows what
is under a still mouse when the view moves (zoom, pan, new bars), the time axis carries the
crosshair's time, the OHLC readout a date; prices everywhere use the tick's decimals and counts
read as English."""
import os

os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')

import time  # noqa: E402

from pyqtgraph.Qt import QtCore, QtWidgets  # noqa: E402

from _chart_helpers import make_bars  # noqa: E402
from test_chart_view import chart, plot_point, shot  # noqa: E402,F401 (fixture)
from test_order_mode import _three, cursor, env, st  # noqa: E402,F401 (fixture)
from piker_ems.data._bars import BarAggregator  # noqa: E402
from piker_ems.ui._chart import ChartWidget  # noqa: E402
from piker_ems.ui.order_mode import orders  # noqa: E402

Qt = QtCore.Qt


def _move_mouse(chart, fx: float, fy: float) -> QtCore.QPointF:
    """A real mouse move over the plot (through the scene), returns its scene position."""
    pos = plot_point(chart, fx, fy)
    scene = chart.plot.mapToScene(pos)
    chart.plot.scene().sigMouseMoved.emit(scene)
    return scene


def _under(chart, scene: QtCore.QPointF) -> tuple[float, float]:
    pt = chart.vb.mapSceneToView(scene)
    return pt.x(), chart.snap(pt.y())


# -- item 11 --------------------------------------------------------------------------------

def test_crosshair_follows_the_view_after_a_zoom(chart):
    scene = _move_mouse(chart, 0.5, 0.5)
    before = chart.cursor_price()
    assert (chart.cursor_x(), before) == _under(chart, scene)
    chart.scale_y(0.5)                      # zoom the prices in: the mouse did not move
    QtWidgets.QApplication.processEvents()
    now = _under(chart, scene)
    assert chart.cursor_price() == now[1] != before or abs(now[1] - before) < chart.tick_size
    assert chart._hline.value() == now[1]
    assert chart.cursor_label.text() == f'{now[1]:.2f}'


def test_crosshair_follows_new_bars_while_following(chart):
    scene = _move_mouse(chart, 0.4, 0.3)
    x_before = chart.cursor_x()
    bars = make_bars(230)                   # 30 new bars: the followed view moves left
    chart.update_bars(bars)
    QtWidgets.QApplication.processEvents()
    x_now, p_now = _under(chart, scene)
    assert x_now > x_before + 20 * chart.period
    assert chart.cursor_x() == x_now and chart.cursor_price() == p_now
    assert chart._vline.value() == x_now


def test_time_tag_on_the_time_axis_and_a_date_in_the_readout(chart, tmp_path):
    _move_mouse(chart, 0.5, 0.5)
    x = chart.cursor_x()
    bar_t = (x // chart.period) * chart.period
    assert chart.time_tag.isVisible()
    assert chart.time_tag.text() == time.strftime('%H:%M:%S', time.localtime(bar_t))
    bar = chart.bars.array[chart.bars.array['time'] <= x][-1]
    date = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(bar['time'])))
    assert date in chart.info_label.text()
    shot(chart, 'crosshair-time-tag', tmp_path)
    chart.clear_cursor()
    assert not chart.time_tag.isVisible()


def test_time_tag_says_the_day_when_the_view_spans_days(qtbot):
    w = ChartWidget('btcusd.sim', period_s=3600.0)
    qtbot.addWidget(w)
    w.resize(900, 500)
    w.show()
    agg = BarAggregator(3600.0)
    for i in range(24 * 8):
        agg.update(1_700_000_000 + i * 3600, 100 + (i % 7), 1)
    w.update_bars(agg.array)
    QtWidgets.QApplication.processEvents()
    _move_mouse(w, 0.3, 0.5)
    t = (w.cursor_x() // 3600) * 3600
    assert w.time_tag.text() == time.strftime('%a %d %b %H:%M', time.localtime(t))


# -- item 14 --------------------------------------------------------------------------------

def test_price_axis_labels_all_use_the_tick_decimals(chart):
    axis = chart.plot_item.getAxis('right')
    (lo, hi) = chart.vb.viewRange()[1]
    values = [lo + (hi - lo) * k / 5 for k in range(6)] + [170.0, 170.5]
    texts = axis.tickStrings(values, 1.0, 0.5)
    assert all(len(t.split('.')[1]) == 2 for t in texts), texts
    assert texts[-2:] == ['170.00', '170.50']
    chart.set_tick_size(0.25)
    assert axis.tickStrings([170.0, 171.0], 1.0, 1.0) == ['170.00', '171.00']
    chart.set_tick_size(1.0)
    assert axis.tickStrings([170.0, 171.0], 1.0, 1.0) == ['170', '171']


def test_counts_read_as_english(env, qtbot):
    assert (orders(1), orders(0), orders(3)) == ('1 order', '0 orders', '3 orders')
    e = env
    a, b, c = _three(e)
    cursor(e, 99.5)
    qtbot.keyPress(e.chart, Qt.Key_C)
    assert e.status.text().startswith('cancelling 1 order |')
    e.mode.on_msg(st(e.book, b, 'dark_cancelled'))
    assert e.status.text() == 'cancelled 1 order'


# -- extras: the volume pane ----------------------------------------------------------------------

def test_volume_pane_under_the_bars_follows_them(chart, qtbot):
    import numpy as np
    bars = make_bars(230)
    bars['volume'] = np.arange(len(bars)) % 7 + 1.0
    bars['volume'][-3] = 50.0
    chart.update_bars(bars)
    QtWidgets.QApplication.processEvents()
    vol = chart.volume
    assert np.array_equal(vol.array['volume'], bars['volume'])
    # under the price plot, the same x range, fitted to the visible columns
    assert chart.volume_plot.geometry().top() >= chart.plot.geometry().bottom()
    assert chart.volume_vb.viewRange()[0] == chart.vb.viewRange()[0]
    assert chart.volume_vb.viewRange()[1][1] == 50.0 * 1.12
    # panned back to where the big column is out of view: the pane rescales
    x0, x1 = chart.vb.viewRange()[0]
    chart.vb.setXRange(x0 - 60 * chart.period, x1 - 60 * chart.period, padding=0)
    QtWidgets.QApplication.processEvents()
    assert chart.volume_vb.viewRange()[0] == chart.vb.viewRange()[0]
    assert chart.volume_vb.viewRange()[1][1] == 7.0 * 1.12
