"""The chart widget the order mode trades from.

:class:`ChartWidget` bundles everything drawn for one symbol: OHLC bars, the
L1 (bid/ask) lines, the last price tag on the price axis, a tick-snapped
crosshair, order/alert lines, fill arrows and the position line. It is pure
drawing and geometry, driven by method calls from the app (quotes, bars)
and the order mode (lines, arrows); it holds no trading logic and never
touches trio, tractor or the network.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from ._bars import OHLCBarsItem, VolumeItem
from ._lines import (
    BUY_COLOR,
    SELL_COLOR,
    TAG_TEXT_COLOR,
    LevelLine,
    PositionLine,
    action_color,
    format_price,
    format_size,
    make_alert_arrow,
    make_fill_arrow,
    snap_to_tick,
)

__all__ = ['ChartWidget', 'AxisLabel', 'BG_COLOR']

BG_COLOR = QtGui.QColor(14, 17, 22)
_AXIS_COLOR = QtGui.QColor(90, 96, 110)
_AXIS_TEXT = QtGui.QColor(160, 166, 178)
_CROSSHAIR_COLOR = QtGui.QColor(150, 156, 170, 130)
_BID_COLOR = QtGui.QColor(88, 150, 220)
_ASK_COLOR = QtGui.QColor(220, 120, 150)
_CURSOR_TAG_BG = QtGui.QColor(58, 64, 78)
_CURSOR_TAG_FG = QtGui.QColor(235, 238, 244)
_PRICE_AXIS_WIDTH = 78
#: fraction of the x span kept empty right of the last bar (room for tags)
_RIGHT_MARGIN = 0.18
#: a young chart shows at least this many bar widths
_MIN_FOLLOW_BARS = 40


def _font(point_size: float, bold: bool = False) -> QtGui.QFont:
    f = QtGui.QFont()
    f.setPointSizeF(point_size)
    f.setBold(bold)
    return f


class _AxisTag(QtWidgets.QGraphicsObject):
    """A tag drawn on an axis at a view value, kept in place as the view moves."""

    def __init__(self, axis: pg.AxisItem, vb: pg.ViewBox, font: QtGui.QFont | None = None) -> None:
        super().__init__(axis)
        self._axis = axis
        self._vb = vb
        self._font = font or _font(8.5, bold=True)
        self._text = ''
        self._value: float | None = None
        self.setZValue(100)
        self.setVisible(False)
        vb.sigTransformChanged.connect(self._reposition)
        vb.sigResized.connect(self._reposition)
        axis.geometryChanged.connect(self._reposition)

    @property
    def value(self) -> float | None:
        """The view value the tag points at (None: hidden)."""
        return self._value

    def text(self) -> str:
        """The tag's text."""
        return self._text

    def _reposition(self, *_args) -> None:
        raise NotImplementedError


class AxisLabel(_AxisTag):
    """A filled price tag pinned to the (right) price axis at a view y value.

    Exists so values that matter at a glance -- the last price and the
    crosshair price -- sit on the axis itself, like on any trading screen,
    instead of covering the bars.
    """

    def __init__(
        self,
        axis: pg.AxisItem,
        vb: pg.ViewBox,
        bg: QtGui.QColor,
        fg: QtGui.QColor = QtGui.QColor(14, 17, 22),
        font: QtGui.QFont | None = None,
    ) -> None:
        self._bg = QtGui.QColor(bg)
        self._fg = QtGui.QColor(fg)
        #: another tag this one must not cover (the cursor tag avoids the last price tag)
        self.avoid: AxisLabel | None = None
        f = font or _font(8.5, bold=True)
        self._h = QtGui.QFontMetricsF(f).height() + 6
        super().__init__(axis, vb, f)

    def set_value(self, y: float | None, text: str | None = None) -> None:
        """Point the tag at ``y`` showing ``text``; ``None`` hides it."""
        self._value = y
        if text is not None and text != self._text:
            self._text = text
            self.update()
        self._reposition()

    def set_colors(self, bg: QtGui.QColor, fg: QtGui.QColor | None = None) -> None:
        """Recolour the tag (e.g. last price green on upticks, red on downticks)."""
        self._bg = QtGui.QColor(bg)
        if fg is not None:
            self._fg = QtGui.QColor(fg)
        self.update()

    def _reposition(self, *_args) -> None:
        if self._value is None or not math.isfinite(self._value):
            self.setVisible(False)
            return
        ay = self.axis_y(self._value)
        inside = 0 <= ay <= self._axis.height()
        other = self.avoid
        if other is not None and other.isVisible() and other.value is not None:
            # never cover the tag we must keep readable (the last price): sit just above or
            # below it, on the side the cursor is
            oy = other.axis_y(other.value)
            gap = (self._h + other._h) / 2
            if abs(ay - oy) < gap:
                ay = oy - gap if ay <= oy else oy + gap
        self.setPos(0, ay)
        self.setVisible(inside)

    def axis_y(self, value: float) -> float:
        """The axis-local y of a view value."""
        scene_pt = self._vb.mapViewToScene(QtCore.QPointF(0, value))
        return self._axis.mapFromScene(scene_pt).y()

    def boundingRect(self) -> QtCore.QRectF:  # noqa: N802
        """Full axis width, one text line high, centred on the value."""
        return QtCore.QRectF(0, -self._h / 2, max(self._axis.width(), 10), self._h)

    def paint(self, p: QtGui.QPainter, *args) -> None:
        """A tag with a small notch pointing at the plot."""
        r = self.boundingRect()
        notch = 5.0
        path = QtGui.QPainterPath()
        path.moveTo(0, 0)
        path.lineTo(notch, r.top())
        path.lineTo(r.right(), r.top())
        path.lineTo(r.right(), r.bottom())
        path.lineTo(notch, r.bottom())
        path.closeSubpath()
        p.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing, True)
        p.setPen(QtCore.Qt.PenStyle.NoPen)
        p.setBrush(self._bg)
        p.drawPath(path)
        p.setPen(self._fg)
        p.setFont(self._font)
        p.drawText(
            r.adjusted(notch + 3, 0, -2, 0),
            int(QtCore.Qt.AlignmentFlag.AlignVCenter | QtCore.Qt.AlignmentFlag.AlignLeft),
            self._text,
        )


class TimeTag(_AxisTag):
    """The crosshair's time on the time axis (``14:05:10``; with the date when the view
    spans more than a day), so a bar's time is read where the eye already is."""

    def set_value(self, x: float | None, text: str = '') -> None:
        """Point the tag at time ``x`` showing ``text``; ``None`` hides it."""
        self._value = x
        if text != self._text:
            self.prepareGeometryChange()
            self._text = text
            self.update()
        self._reposition()

    def _reposition(self, *_args) -> None:
        if self._value is None or not math.isfinite(self._value):
            self.setVisible(False)
            return
        scene_pt = self._vb.mapViewToScene(QtCore.QPointF(self._value, 0))
        ax = self._axis.mapFromScene(scene_pt).x()
        half = self.boundingRect().width() / 2
        # stay whole at the axis' ends
        x = min(max(ax, half), max(half, self._axis.width() - half))
        self.setPos(x, 0)
        self.setVisible(0 <= ax <= self._axis.width())

    def boundingRect(self) -> QtCore.QRectF:  # noqa: N802
        w = QtGui.QFontMetricsF(self._font).horizontalAdvance(self._text) + 10
        h = max(self._axis.height(), QtGui.QFontMetricsF(self._font).height() + 4)
        return QtCore.QRectF(-w / 2, 0, w, h)

    def paint(self, p: QtGui.QPainter, *args) -> None:
        r = self.boundingRect()
        p.setPen(QtCore.Qt.PenStyle.NoPen)
        p.setBrush(_CURSOR_TAG_BG)
        p.drawRect(r)
        p.setPen(_CURSOR_TAG_FG)
        p.setFont(self._font)
        p.drawText(r, int(QtCore.Qt.AlignmentFlag.AlignCenter), self._text)


class PriceAxis(pg.AxisItem):
    """The price axis: every label with the tick size's decimals (``170.00 170.50 171.00``,
    never ``170 170.5 171``), like the last price tag and the order labels."""

    def __init__(self, chart: 'ChartWidget', **kwargs) -> None:
        super().__init__(orientation='right', **kwargs)
        self._chart = chart

    def tickStrings(self, values, scale, spacing):  # noqa: N802 (pyqtgraph API)
        tick = self._chart.tick_size
        return [format_price(v * scale, tick) for v in values]


class VolumeAxis(pg.AxisItem):
    """The volume pane's axis: compact sizes (``12,500``, ``100k``, ``2.5M``)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(orientation='right', **kwargs)

    def tickStrings(self, values, scale, spacing):  # noqa: N802 (pyqtgraph API)
        return [format_size(v * scale) if v > 0 else '' for v in values]


class _ChartViewBox(pg.ViewBox):
    """The plot's view box: tells the chart when the *user* pans or zooms, and scales the
    price axis by hand (drag or wheel over the price axis).

    pyqtgraph forwards drags/wheels on an axis to its linked view box with ``axis=1`` (y);
    those never move x. A drag in the plot pans x (and y once the user scaled y by hand).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chart: 'ChartWidget | None' = None

    def mouseDragEvent(self, ev, axis=None) -> None:  # noqa: N802
        chart = self.chart
        if axis == 1 and chart is not None:
            ev.accept()
            if ev.button() != QtCore.Qt.MouseButton.LeftButton:
                return
            dy = ev.scenePos().y() - ev.lastScenePos().y()
            # drag down: zoom out (a wider price range), up: zoom in, like trading screens
            chart.scale_y(math.exp(0.01 * dy))
            return
        before = self.viewRange()[0]
        super().mouseDragEvent(ev, axis=axis)
        if chart is not None and self.viewRange()[0] != before:
            chart._on_user_pan()

    def wheelEvent(self, ev, axis=None) -> None:  # noqa: N802
        chart = self.chart
        if axis == 1 and chart is not None:
            delta = ev.delta() if hasattr(ev, 'delta') else ev.angleDelta().y()
            chart.scale_y(math.exp(-0.0015 * delta))
            ev.accept()
            return
        super().wheelEvent(ev, axis=axis)
        if chart is not None:
            chart._on_user_zoom()


class EdgeMarker(pg.TextItem):
    """A tag at the top or bottom edge of the plot for a line priced outside the view.

    Exists so an order (or the position) far from the market never squashes the price
    scale: the range follows the bars, and what lies beyond it is summarised here, with its
    price, pointing up or down to where it is.
    """

    def __init__(self, line, edge: str) -> None:
        super().__init__(text='', anchor=(1, 0) if edge == 'top' else (1, 1))
        self.line = line
        self.edge = edge
        self.setZValue(60)
        self.setFont(_font(8, bold=True))

    def refresh(self, text: str, color: QtGui.QColor, foreign: bool) -> None:
        arrow = '▲' if self.edge == 'top' else '▼'
        self.setText(f'{arrow} {text}')
        if foreign:
            self.fill = pg.mkBrush(QtGui.QColor(30, 34, 42, 235))
            self.border = pg.mkPen(color, width=1)
            self.setColor(color.lighter(120))
        else:
            self.fill = pg.mkBrush(color)
            self.border = pg.mkPen(None)
            self.setColor(TAG_TEXT_COLOR)
        self.update()


class ChartWidget(QtWidgets.QWidget):
    """One symbol's chart: bars, L1, last price, crosshair, orders, fills.

    Driven entirely by method calls:

    * the app feeds :meth:`update_bars`, :meth:`set_l1`, :meth:`set_last`;
    * the order mode manages lines (:meth:`add_order_line`,
      :meth:`remove_order_line`, :meth:`add_staged_line`, ...), arrows and
      :meth:`set_position`, and reads :meth:`cursor_price` /
      :meth:`lines_under_cursor`.

    The x axis follows the newest bars (keeping about ``follow_bars`` bars
    in view) until the user drags the plot; ``End``, the on-screen
    ``latest`` button or a double click follow again. A wheel zoom keeps
    following with the new span.

    y follows the visible bars plus the L1 (bid/ask/last) only; order,
    alert and position lines outside that range are drawn as
    :class:`EdgeMarker` tags at the top/bottom edge with their price. The
    price axis can be scaled by hand (drag it or turn the wheel over it);
    then a drag in the plot pans y too. ``R``, a double click on the price
    axis or a double click in the plot return to auto-range.

    Qt signals for the order mode: :attr:`sigCursorMoved` ``(x, price)``
    with the tick-snapped price, :attr:`sigClicked` ``(x, price, button)``
    for clicks on the plot not consumed by an item, :attr:`sigKeyPressed` /
    :attr:`sigKeyReleased` ``(QKeyEvent)`` for keys pressed over the chart.
    """

    sigCursorMoved = QtCore.Signal(float, float)
    sigClicked = QtCore.Signal(float, float, object)
    sigKeyPressed = QtCore.Signal(object)
    sigKeyReleased = QtCore.Signal(object)

    def __init__(
        self,
        fqsn: str = '',
        tick_size: float = 0.01,
        period_s: float = 5.0,
        follow_bars: int = 150,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.fqsn = fqsn
        self._tick = float(tick_size)
        self._period = float(period_s)
        self._follow = True
        self._follow_span = float(follow_bars) * self._period / (1 - _RIGHT_MARGIN)
        self._follow_bars = int(follow_bars)
        self._user_span = False   # the user zoomed: keep their span
        self._lines: dict[str, LevelLine] = {}
        self._staged: LevelLine | None = None
        self._arrows: list[pg.ArrowItem] = []
        self._bid: float | None = None
        self._ask: float | None = None
        self._last: float | None = None
        self._cursor: tuple[float, float] | None = None   # raw view (x, y)
        # where the mouse is on screen: when the view moves under a still mouse (zoom, pan,
        # new bars while following) the crosshair is re-derived from it, never left stale
        self._cursor_scene: QtCore.QPointF | None = None
        self._in_y_update = False

        self.setStyleSheet(
            f'background-color: {BG_COLOR.name()}; color: {_AXIS_TEXT.name()};'
        )
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)

        header = QtWidgets.QWidget(self)
        hl = QtWidgets.QHBoxLayout(header)
        hl.setContentsMargins(10, 4, 10, 2)
        hl.setSpacing(14)
        #: fqsn + bar period, top left
        self.title_label = QtWidgets.QLabel(header)
        self.title_label.setFont(_font(10.5, bold=True))
        self.title_label.setStyleSheet('color: #e6e9ef;')
        #: OHLCV of the bar under the cursor (or the latest bar)
        self.info_label = QtWidgets.QLabel(header)
        self.info_label.setFont(_font(9))
        self.info_label.setTextFormat(QtCore.Qt.TextFormat.RichText)
        hl.addWidget(self.title_label)
        hl.addWidget(self.info_label)
        hl.addStretch(1)
        layout.addWidget(header)

        self._vb = _ChartViewBox()
        self.plot = pg.PlotWidget(
            parent=self,
            background=BG_COLOR,
            viewBox=self._vb,
            axisItems={'bottom': pg.DateAxisItem(orientation='bottom'),
                        'right': PriceAxis(self)},
        )
        layout.addWidget(self.plot, 5)
        #: the volume pane under the price bars (time axis at its bottom), x linked
        self.volume_plot = pg.PlotWidget(
            parent=self, background=BG_COLOR,
            axisItems={'bottom': pg.DateAxisItem(orientation='bottom'), 'right': VolumeAxis()},
        )
        self.volume_plot.setMinimumHeight(48)
        layout.addWidget(self.volume_plot, 1)
        self.plot_item: pg.PlotItem = self.plot.getPlotItem()
        self.vb: pg.ViewBox = self.plot_item.getViewBox()
        self._vb.chart = self
        self._y_manual = False
        self._markers: dict[int, EdgeMarker] = {}
        self._setup_axes()

        self.vb.disableAutoRange()
        self.vb.setMouseEnabled(x=True, y=False)
        self.plot_item.hideButtons()
        self.plot_item.setMenuEnabled(False)
        self.plot_item.showGrid(x=True, y=True, alpha=0.07)

        #: the OHLC bars
        self.bars = OHLCBarsItem(period_s=self._period)
        self.plot_item.addItem(self.bars)

        vpi = self.volume_plot.getPlotItem()
        self.volume_vb: pg.ViewBox = vpi.getViewBox()
        vpi.hideButtons()
        vpi.setMenuEnabled(False)
        vpi.showAxis('right')
        vpi.hideAxis('left')
        vpi.showGrid(x=True, y=False, alpha=0.07)
        self.volume_vb.setMouseEnabled(x=False, y=False)
        self.volume_vb.disableAutoRange()
        self.volume_vb.setXLink(self.vb)
        #: volume columns, coloured like their bars
        self.volume = VolumeItem(self._period)
        vpi.addItem(self.volume)
        self._vvline = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen(
            _CROSSHAIR_COLOR, width=1, style=QtCore.Qt.PenStyle.DashLine, cosmetic=True))
        self._vvline.setVisible(False)
        vpi.addItem(self._vvline, ignoreBounds=True)

        # L1: bid and ask lines with small labels
        self._bid_line = self._make_l1_line(_BID_COLOR, anchor=(0, 0))
        self._ask_line = self._make_l1_line(_ASK_COLOR, anchor=(0, 1))

        #: position line (hidden when flat)
        self.position_line = PositionLine(tick_size=self._tick)
        self.plot_item.addItem(self.position_line, ignoreBounds=True)

        # crosshair
        ch_pen = pg.mkPen(_CROSSHAIR_COLOR, width=1, style=QtCore.Qt.PenStyle.DashLine)
        ch_pen.setCosmetic(True)
        self._vline = pg.InfiniteLine(angle=90, movable=False, pen=ch_pen)
        self._hline = pg.InfiniteLine(angle=0, movable=False, pen=ch_pen)
        for ln in (self._vline, self._hline):
            ln.setZValue(30)
            ln.setVisible(False)
            ln.setAcceptHoverEvents(False)
            self.plot_item.addItem(ln, ignoreBounds=True)

        axis = self.plot_item.getAxis('right')
        #: last price tag on the price axis
        self.last_label = AxisLabel(axis, self.vb, bg=QtGui.QColor(200, 205, 215))
        #: crosshair price tag on the price axis
        self.cursor_label = AxisLabel(axis, self.vb, bg=_CURSOR_TAG_BG, fg=_CURSOR_TAG_FG)
        self.cursor_label.setZValue(101)
        self.cursor_label.avoid = self.last_label
        #: crosshair time tag on the time axis (under the volume pane)
        self.time_tag = TimeTag(self.volume_plot.getPlotItem().getAxis('bottom'), self.volume_vb)

        scene = self.plot.scene()
        scene.sigMouseMoved.connect(self._on_scene_mouse_moved)
        scene.sigMouseClicked.connect(self._on_scene_clicked)
        self.vb.sigRangeChangedManually.connect(self._on_manual_range)
        self.vb.sigXRangeChanged.connect(self._on_x_range_changed)
        self.vb.sigResized.connect(lambda *_: self._update_y_range())
        self.vb.sigResized.connect(lambda *_: self._place_follow_button())
        self.vb.sigYRangeChanged.connect(lambda *_: self._update_edge_markers())
        self.vb.sigTransformChanged.connect(self._refresh_cursor)

        #: small on-screen control shown while not following: back to the newest bars
        self.follow_button = QtWidgets.QToolButton(self.plot)
        self.follow_button.setText('latest ⇥')
        self.follow_button.setToolTip('follow the newest bars again (End)')
        self.follow_button.setCursor(QtCore.Qt.CursorShape.PointingHandCursor)
        self.follow_button.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.follow_button.setStyleSheet(
            'QToolButton { color: #e6e9ef; background: rgba(58,64,78,220); border: 1px solid #5d6577;'
            ' border-radius: 3px; padding: 1px 6px; font-size: 8pt; }'
            ' QToolButton:hover { background: rgba(88,96,116,240); }')
        self.follow_button.clicked.connect(lambda: self.follow_latest(True))
        self.follow_button.hide()
        #: small on-screen control shown while y is scaled by hand: back to auto-range
        self.auto_y_button = QtWidgets.QToolButton(self.plot)
        self.auto_y_button.setText('auto y')
        self.auto_y_button.setToolTip('fit the price scale to the visible bars again (R, or double click the price axis)')
        self.auto_y_button.setCursor(QtCore.Qt.CursorShape.PointingHandCursor)
        self.auto_y_button.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.auto_y_button.setStyleSheet(self.follow_button.styleSheet())
        self.auto_y_button.clicked.connect(lambda: self.set_y_auto(True))
        self.auto_y_button.hide()
        self.plot.viewport().installEventFilter(self)
        # keyboard focus always lands on this widget (clicking the plot
        # focuses us via the proxy), so key events arrive exactly once in
        # keyPressEvent/keyReleaseEvent below
        self.setFocusPolicy(QtCore.Qt.FocusPolicy.StrongFocus)
        self.plot.setFocusPolicy(QtCore.Qt.FocusPolicy.StrongFocus)
        self.plot.setFocusProxy(self)
        self.setMouseTracking(True)

        self.set_title(fqsn)
        now = time.time()
        self._set_x_window(now - self._follow_span * (1 - _RIGHT_MARGIN))
        self._update_info(None)

    # ------------------------------------------------------------------ setup
    def _setup_axes(self) -> None:
        pi = self.plot_item
        vpi = self.volume_plot.getPlotItem()
        pi.showAxis('right')
        pi.hideAxis('left')
        tick_font = _font(8.5)
        for item in (pi, vpi):   # the price plot and the volume pane: the same look
            for name in ('right', 'bottom'):
                ax = item.getAxis(name)
                ax.setPen(pg.mkPen(_AXIS_COLOR))
                ax.setTextPen(pg.mkPen(_AXIS_TEXT))
                ax.setTickFont(tick_font)
                ax.setStyle(tickLength=-5, tickTextOffset=6)
            item.getAxis('right').setWidth(_PRICE_AXIS_WIDTH)   # same width: x lines up
        # the time axis is the volume pane's; here only its grid lines
        pi.getAxis('bottom').setStyle(showValues=False, tickLength=0)
        pi.getAxis('bottom').setHeight(1)
        vpi.getAxis('right').setStyle(maxTickLevel=0)
        vpi.getAxis('bottom').setHeight(26)

    def _make_l1_line(self, color: QtGui.QColor, anchor: tuple[float, float]) -> pg.InfiniteLine:
        pen = pg.mkPen(color, width=1, style=QtCore.Qt.PenStyle.DotLine)
        pen.setCosmetic(True)
        line = pg.InfiniteLine(angle=0, movable=False, pen=pen)
        line.setZValue(8)
        line.setVisible(False)
        line.label = pg.InfLineLabel(
            line, text='', position=0.86, anchors=[anchor, anchor], color=color,
        )
        line.label.setFont(_font(7.5))
        self.plot_item.addItem(line, ignoreBounds=True)
        return line

    # ------------------------------------------------------------- title/info
    def set_title(self, fqsn: str) -> None:
        """Show which symbol (fqsn) and bar period this chart is."""
        self.fqsn = fqsn
        self.title_label.setText(f'{fqsn}   <span style="color:#8a93a6; font-weight:normal;">'
                                 f'{self._period:g}s</span>' if fqsn else '')

    def _update_info(self, x: float | None) -> None:
        a = self.bars.array
        if len(a) == 0:
            self.info_label.setText('')
            return
        i = len(a) - 1
        if x is not None:
            j = int(np.searchsorted(a['time'], x, side='right')) - 1
            if 0 <= j < len(a):
                i = j
        b = a[i]
        fp = lambda v: format_price(float(v), self._tick)  # noqa: E731
        col = BUY_COLOR if b['close'] >= b['open'] else SELL_COLOR
        c = col.name()
        vol = float(b['volume']) if 'volume' in a.dtype.names else float('nan')
        # the date too: history spans days, and a time alone cannot say which
        when = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(b['time'])))
        self.info_label.setText(
            f'<span style="color:#8a93a6">{when}</span>&nbsp;&nbsp; '
            f'<span style="color:#8a93a6">O</span> <span style="color:{c}">{fp(b["open"])}</span>&nbsp; '
            f'<span style="color:#8a93a6">H</span> <span style="color:{c}">{fp(b["high"])}</span>&nbsp; '
            f'<span style="color:#8a93a6">L</span> <span style="color:{c}">{fp(b["low"])}</span>&nbsp; '
            f'<span style="color:#8a93a6">C</span> <span style="color:{c}">{fp(b["close"])}</span>&nbsp; '
            f'<span style="color:#8a93a6">V</span> <span style="color:#c0c6d2">{format_size(vol)}</span>'
        )

    # ------------------------------------------------------------- tick size
    @property
    def tick_size(self) -> float:
        """The symbol's price increment; crosshair and lines snap to it."""
        return self._tick

    def set_tick_size(self, tick_size: float) -> None:
        """Change the tick grid (symbol info arrived / switched symbol)."""
        self._tick = float(tick_size)
        self.position_line.tick_size = self._tick
        for line in self.lines():
            line.tick_size = self._tick
        if self._staged is not None:
            self._staged.tick_size = self._tick
        if self._cursor is not None:
            self.set_cursor(*self._cursor)

    def snap(self, price: float) -> float:
        """Snap a price to the chart's tick grid."""
        return snap_to_tick(price, self._tick)

    # ------------------------------------------------------------------ data
    @property
    def period(self) -> float:
        """Bar period in seconds."""
        return self._period

    def update_bars(self, array: np.ndarray) -> None:
        """Redraw the bars (and volume) from the aggregator's array (call on every tick)."""
        self.bars.set_data(array)
        self.volume.set_data(array)
        self._update_volume_range()
        if self._follow and len(array):
            self._apply_follow()
        self._place_l1_labels()
        self._update_y_range()
        self._update_info(self.cursor_x())

    def set_l1(
        self,
        bid: float | None,
        ask: float | None,
        bsize: float | None = None,
        asize: float | None = None,
    ) -> None:
        """Show the best bid/ask (and sizes) as two thin labelled lines."""
        self._bid, self._ask = bid, ask
        for line, price, size, name in (
            (self._bid_line, bid, bsize, 'bid'),
            (self._ask_line, ask, asize, 'ask'),
        ):
            if price is None or not math.isfinite(price):
                line.setVisible(False)
                continue
            line.setPos(price)
            txt = f'{name} {format_price(price, self._tick)}'
            if size is not None:
                txt += f' ×{format_size(size)}'
            line.label.setFormat(txt)
            line.setVisible(True)
            line.label.setVisible(True)
        self._update_y_range()

    def set_last(self, price: float | None) -> None:
        """Show the last traded price as a tag on the price axis.

        The tag is green after an uptick, red after a downtick.
        """
        if price is None:
            self._last = None
            self.last_label.set_value(None)
            return
        if self._last is not None and price != self._last:
            self.last_label.set_colors(BUY_COLOR if price > self._last else SELL_COLOR)
        self._last = float(price)
        self.last_label.set_value(self._last, format_price(self._last, self._tick))
        self.cursor_label._reposition()

    @property
    def last_price(self) -> float | None:
        """The last traded price shown on the axis (None before the first)."""
        return self._last

    # ---------------------------------------------------------------- cursor
    def cursor_price(self) -> float | None:
        """The crosshair's price snapped to the tick size (None: off chart)."""
        if self._cursor is None:
            return None
        return self.snap(self._cursor[1])

    def cursor_x(self) -> float | None:
        """The crosshair's x (epoch seconds), or None when off the chart."""
        return None if self._cursor is None else self._cursor[0]

    def set_cursor(self, x: float, price: float) -> None:
        """Place the crosshair at view coordinates (what a mouse move does).

        Public so tests and keyboard-driven code can position the cursor.
        """
        self._cursor = (float(x), float(price))
        self._cursor_scene = self.vb.mapViewToScene(QtCore.QPointF(float(x), float(price)))
        self._show_cursor(float(x), float(price))

    def _show_cursor(self, x: float, price: float) -> None:
        snapped = self.snap(price)
        self._vline.setPos(x)
        self._vvline.setPos(x)
        self._hline.setPos(snapped)
        self._vline.setVisible(True)
        self._vvline.setVisible(True)
        # while staging, the staged line *is* the horizontal crosshair
        self._hline.setVisible(self._staged is None)
        self.cursor_label.set_value(snapped, format_price(snapped, self._tick))
        self.time_tag.set_value(x, self.time_text(x))
        if self._staged is not None:
            self._staged.setPos(snapped)
        self._update_info(x)
        self.sigCursorMoved.emit(float(x), snapped)

    def _refresh_cursor(self, *_args) -> None:
        """The view moved under a still mouse: the crosshair (lines, price and time tags, the
        staged line, the OHLC readout) follows what is now under the mouse."""
        if self._cursor_scene is None or self._cursor is None:
            return
        pt = self.vb.mapSceneToView(self._cursor_scene)
        x, y = float(pt.x()), float(pt.y())
        if (x, y) == self._cursor:
            return
        self._cursor = (x, y)
        self._show_cursor(x, y)

    def time_text(self, x: float) -> str:
        """The crosshair's time tag: the bar's time, with the date when the view spans days."""
        t = math.floor(x / self._period) * self._period
        (x0, x1) = self.vb.viewRange()[0]
        fmt = '%H:%M:%S' if self._period < 60 else '%H:%M'
        if x1 - x0 > 86_400 or time.localtime(x0).tm_yday != time.localtime(x1).tm_yday:
            fmt = '%a %d %b ' + fmt
        try:
            return time.strftime(fmt, time.localtime(t))
        except (OverflowError, OSError, ValueError):
            return ''

    def clear_cursor(self) -> None:
        """Hide the crosshair (mouse left the chart)."""
        self._cursor = None
        self._cursor_scene = None
        self._vvline.setVisible(False)
        self.time_tag.set_value(None)
        self._vline.setVisible(False)
        self._hline.setVisible(False)
        self.cursor_label.set_value(None)
        self._update_info(None)

    def _on_scene_mouse_moved(self, scene_pos: QtCore.QPointF) -> None:
        if not self.vb.sceneBoundingRect().contains(scene_pos):
            self.clear_cursor()
            return
        pt = self.vb.mapSceneToView(scene_pos)
        self.set_cursor(pt.x(), pt.y())

    def _on_scene_clicked(self, ev) -> None:
        if not self.vb.sceneBoundingRect().contains(ev.scenePos()):
            if ev.double() and self.price_axis_rect().contains(ev.scenePos()):
                self.set_y_auto(True)
            return
        pt = self.vb.mapSceneToView(ev.scenePos())
        if ev.double() and ev.button() == QtCore.Qt.MouseButton.LeftButton:
            # back to the default view: newest bars, default zoom
            self._user_span = False
            self._follow_span = self._follow_bars * self._period / (1 - _RIGHT_MARGIN)
            self.follow_latest(True)
            self.set_y_auto(True)
            return
        if ev.isAccepted():
            return
        self.sigClicked.emit(float(pt.x()), self.snap(pt.y()), ev.button())

    def price_axis_rect(self) -> QtCore.QRectF:
        """The price axis' scene rectangle (its bounding rect also spans the grid lines)."""
        ax = self.plot_item.getAxis('right')
        return QtCore.QRectF(ax.scenePos(), QtCore.QSizeF(ax.width(), ax.height()))

    def eventFilter(self, obj, ev) -> bool:  # noqa: N802
        """Hide the crosshair when the mouse leaves the plot."""
        if ev.type() == QtCore.QEvent.Type.Leave and obj is self.plot.viewport():
            self.clear_cursor()
        return False

    def keyPressEvent(self, ev: QtGui.QKeyEvent) -> None:  # noqa: N802
        """View keys (``End`` follow, ``R`` auto y) act here; every key is also forwarded to
        :attr:`sigKeyPressed` (order mode ignores keys it does not use)."""
        if not ev.isAutoRepeat():
            if ev.key() == QtCore.Qt.Key.Key_End:
                self.follow_latest(True)
            elif ev.key() == QtCore.Qt.Key.Key_R and not ev.modifiers():
                self.set_y_auto(True)
        self.sigKeyPressed.emit(ev)

    def keyReleaseEvent(self, ev: QtGui.QKeyEvent) -> None:  # noqa: N802
        """Forward key releases on the chart to :attr:`sigKeyReleased`."""
        self.sigKeyReleased.emit(ev)

    # ----------------------------------------------------------------- lines
    def add_order_line(
        self,
        oid: str,
        price: float,
        action: str,
        exec_mode: str = 'dark',
        size: float = 0.0,
        owner: str | None = None,
        foreign: bool = False,
        confirmed: bool = False,
        label_text: str | None = None,
        movable: bool = True,
        on_moved: Callable[[LevelLine, float], None] | None = None,
    ) -> LevelLine:
        """Draw an order/alert line keyed by ``oid`` (replacing any old one).

        The label stays hidden until ``confirmed`` (or a later
        :meth:`LevelLine.confirm`).
        """
        self.remove_order_line(oid)
        line = LevelLine(
            price, action=action, exec_mode=exec_mode, size=size, oid=oid,
            owner=owner, foreign=foreign, tick_size=self._tick, movable=movable,
            on_moved=on_moved, label_text=label_text,
        )
        line.sigPositionChangeFinished.connect(lambda *_: self._update_y_range())
        line.sigLabelShown.connect(self.layout_labels)
        self._lines[oid] = line
        self.plot_item.addItem(line, ignoreBounds=True)
        if confirmed:
            line.confirm()
        self._update_y_range()
        return line

    def get_line(self, oid: str) -> LevelLine | None:
        """The line drawn for ``oid``, if any."""
        return self._lines.get(oid)

    def remove_order_line(self, oid: str) -> LevelLine | None:
        """Remove the line for ``oid`` (cancelled/filled); returns it or None."""
        line = self._lines.pop(oid, None)
        if line is not None:
            self.plot_item.removeItem(line)
            self._update_y_range()
        return line

    def clear_order_lines(self) -> None:
        """Remove every order line (e.g. on disconnect before a resync)."""
        for oid in list(self._lines):
            self.remove_order_line(oid)

    def lines(self) -> list[LevelLine]:
        """All order/alert lines (not the staged one), in insertion order."""
        return list(self._lines.values())

    def lines_under_cursor(self, pixels: float = 5.0) -> list[LevelLine]:
        """Order lines hovered or within ``pixels`` of the crosshair's y.

        What "cancel the orders under the cursor" acts on. Uses the raw
        (unsnapped) cursor y so lines a few ticks apart can be told apart.
        """
        hits = [ln for ln in self._lines.values() if ln.hovered]
        if self._cursor is not None:
            y = self._cursor[1]
            tol = pixels * self._y_units_per_pixel()
            for ln in self._lines.values():
                if ln not in hits and abs(ln.price - y) <= tol:
                    hits.append(ln)
        return hits

    def _y_units_per_pixel(self) -> float:
        (y0, y1) = self.vb.viewRange()[1]
        h = self.vb.height()
        if h and h > 1:
            return abs(y1 - y0) / h
        return self._tick  # not laid out yet: fall back to one tick

    def add_staged_line(
        self,
        action: str,
        exec_mode: str = 'dark',
        price: float | None = None,
        size: float = 0.0,
    ) -> LevelLine:
        """Show the preview line that follows the cursor while f/d/a is held.

        Replaces any previous staged line. It sits at ``price`` (default: the
        cursor price) and then tracks the crosshair until removed.
        """
        self.remove_staged_line()
        if price is None:
            price = self.cursor_price()
        if price is None:
            price = self._last if self._last is not None else 0.0
        line = LevelLine(
            price, action=action, exec_mode=exec_mode, size=size,
            tick_size=self._tick, staged=True,
        )
        self._staged = line
        self.plot_item.addItem(line, ignoreBounds=True)
        # the cursor's price tag takes the order's colour: "a click buys here"
        self._hline.setVisible(False)
        self.cursor_label.set_colors(action_color(action), TAG_TEXT_COLOR)
        return line

    @property
    def staged_line(self) -> LevelLine | None:
        """The current staged (preview) line, if a stage key is held."""
        return self._staged

    def remove_staged_line(self) -> LevelLine | None:
        """Remove the staged line (stage key released or order submitted)."""
        line, self._staged = self._staged, None
        if line is not None:
            self.plot_item.removeItem(line)
            self.cursor_label.set_colors(_CURSOR_TAG_BG, _CURSOR_TAG_FG)
            self._hline.setVisible(self._cursor is not None)
        return line

    # ---------------------------------------------------------------- arrows
    def _bar_center(self, t: float) -> float:
        return math.floor(t / self._period) * self._period + self._period / 2

    def add_fill_arrow(self, action: str, t: float, price: float,
                       foreign: bool = False) -> pg.ArrowItem:
        """Mark a fill: up arrow (buy) / down arrow (sell) at the fill price.

        ``t`` is the fill time (epoch s); the arrow is centred on its bar. Another client's
        fill (``foreign``) is drawn hollow and dimmed.
        """
        arrow = make_fill_arrow(action, self._bar_center(t), price, foreign=foreign)
        self._arrows.append(arrow)
        self.plot_item.addItem(arrow, ignoreBounds=True)
        return arrow

    def add_alert_arrow(self, t: float, price: float) -> pg.ArrowItem:
        """Mark a triggered alert with a right-pointing arrow at its level."""
        arrow = make_alert_arrow(self._bar_center(t), price)
        self._arrows.append(arrow)
        self.plot_item.addItem(arrow, ignoreBounds=True)
        return arrow

    def arrows(self) -> list[pg.ArrowItem]:
        """All fill/alert arrows drawn so far."""
        return list(self._arrows)

    def clear_arrows(self) -> None:
        """Remove all fill/alert arrows."""
        for a in self._arrows:
            self.plot_item.removeItem(a)
        self._arrows.clear()

    # -------------------------------------------------------------- position
    def set_position(self, size: float, avg_price: float) -> None:
        """Show the position (``pos 3 @ 101.25``); size 0 hides the line."""
        self.position_line.set_position(size, avg_price)
        self._update_y_range()

    # ------------------------------------------------------------- x follow
    @property
    def following(self) -> bool:
        """True while the x axis tracks the newest bar."""
        return self._follow

    def follow_latest(self, enable: bool = True) -> None:
        """Turn following the newest bars on/off (on: jump to them now)."""
        self._follow = bool(enable)
        self.follow_button.setVisible(not self._follow)
        self._place_follow_button()
        if self._follow and len(self.bars.array):
            self._apply_follow()

    def _place_follow_button(self) -> None:
        """Bottom left of the plot area (the right edge holds order tags and edge markers);
        ``auto y`` above it."""
        r = self.plot.mapFromScene(self.vb.sceneBoundingRect()).boundingRect()
        x = r.left() + 6
        y = r.bottom() - 6
        for btn in (self.follow_button, self.auto_y_button):
            if not btn.isVisible():
                continue
            btn.adjustSize()
            btn.move(x, y - btn.height())
            y -= btn.height() + 4

    def _on_user_pan(self) -> None:
        """The user dragged the plot: stop following at once (a pan must never snap back)."""
        if self._follow:
            self.follow_latest(False)

    def _on_user_zoom(self) -> None:
        """A wheel zoom: keep following (with the new span) if we were."""
        if not self._follow:
            return
        a = self.bars.array
        (x0, x1) = self.vb.viewRange()[0]
        if len(a) and x1 > x0:
            self._follow_span = x1 - x0
            self._user_span = True
            self._apply_follow()

    def _set_x_window(self, last_bar_start: float) -> None:
        span = self._span()
        right = last_bar_start + self._period + span * _RIGHT_MARGIN
        self.vb.setXRange(right - span, right, padding=0)

    def _span(self) -> float:
        """The followed x span: ``follow_bars`` bars, or (a young chart, built from live
        ticks) just the bars there are, at least :data:`_MIN_FOLLOW_BARS`, so the first
        minutes fill the view instead of a sliver at its right edge."""
        n = len(self.bars.array)
        if self._user_span or n >= self._follow_bars:
            return self._follow_span
        bars = max(n, min(_MIN_FOLLOW_BARS, self._follow_bars))
        return bars * self._period / (1 - _RIGHT_MARGIN)

    def _apply_follow(self) -> None:
        self._set_x_window(float(self.bars.array['time'][-1]))

    def _update_volume_range(self) -> None:
        """The volume pane fits the visible columns (0 at the bottom)."""
        (x0, x1) = self.vb.viewRange()[0]
        top = self.volume.max_volume(x0, x1)
        self.volume_vb.setYRange(0.0, (top or 1.0) * 1.12, padding=0)

    def _on_x_range_changed(self, *_args) -> None:
        self._update_volume_range()
        self._place_l1_labels()
        self._update_y_range()
        self._update_edge_markers()

    def _place_l1_labels(self) -> None:
        # L1 labels sit just right of the newest bar, left of the order tags
        # (which are right-aligned at the view's right edge)
        (x0, x1) = self.vb.viewRange()[0]
        a = self.bars.array
        if x1 <= x0:
            return
        if len(a):
            x = float(a['time'][-1]) + 1.5 * self._period
            rel = (x - x0) / (x1 - x0)
        else:
            rel = 1 - _RIGHT_MARGIN
        rel = min(max(rel, 0.005), 1 - _RIGHT_MARGIN)
        for line in (self._bid_line, self._ask_line):
            if line.label.orthoPos != rel:
                line.label.setPosition(rel)

    def _on_manual_range(self, *_args) -> None:
        """Range changes from code paths other than our view box's handlers (e.g. a
        programmatic emit in tools): panned so the newest bar is out of view stops following."""
        a = self.bars.array
        (x0, x1) = self.vb.viewRange()[0]
        if len(a) == 0 or not self._follow:
            return
        last_c = float(a['time'][-1]) + self._period / 2
        if not (x0 <= last_c <= x1):
            self.follow_latest(False)

    # ------------------------------------------------------------- y range
    def _y_items(self) -> Iterable[float]:
        # the L1 only: order/position lines far away must never squash the bars
        for p in (self._bid, self._ask, self._last):
            if p is not None:
                yield p

    @property
    def y_auto(self) -> bool:
        """True while y follows the visible bars + L1 (False once scaled by hand)."""
        return not self._y_manual

    def set_y_auto(self, enable: bool = True) -> None:
        """Back to auto-range (``R``, double click on the price axis) or freeze y."""
        self._y_manual = not enable
        self.vb.setMouseEnabled(x=True, y=self._y_manual)
        self.auto_y_button.setVisible(self._y_manual)
        self._place_follow_button()
        if enable:
            self._update_y_range()

    def scale_y(self, factor: float) -> None:
        """Scale the price range by ``factor`` around its middle (> 1: zoom out); manual y."""
        if not (math.isfinite(factor) and factor > 0):
            return
        (y0, y1) = self.vb.viewRange()[1]
        mid, half = (y0 + y1) / 2, (y1 - y0) / 2 * factor
        half = max(half, 2 * self._tick)
        if not self._y_manual:
            self.set_y_auto(False)
        self.vb.setYRange(mid - half, mid + half, padding=0)

    def edge_markers(self) -> list[EdgeMarker]:
        """The visible edge markers (lines priced outside the view), top first."""
        ms = [m for m in self._markers.values() if m.isVisible()]
        return sorted(ms, key=lambda m: (m.edge != 'top', -m.line_price))

    def _update_edge_markers(self) -> None:
        (x0, x1), (y0, y1) = self.vb.viewRange()
        upp = self._y_units_per_pixel()
        lines = list(self._lines.values())
        if self.position_line.isVisible():
            lines.append(self.position_line)
        wanted: dict[int, tuple] = {}
        for ln in lines:
            price = ln.avg_price if ln is self.position_line else ln.price
            if ln is not self.position_line and ln.moving:
                continue
            if price > y1:
                wanted[id(ln)] = (ln, 'top', price)
            elif price < y0:
                wanted[id(ln)] = (ln, 'bottom', price)
        for key in list(self._markers):
            m = self._markers[key]
            if key not in wanted or wanted[key][1] != m.edge:
                self.vb.removeItem(m)
                del self._markers[key]
        stack = {'top': 0, 'bottom': 0}
        # nearest to the view first, so the stack reads outward like the prices
        for ln, edge, price in sorted(wanted.values(), key=lambda w: abs(
                w[2] - (y1 if w[1] == 'top' else y0))):
            m = self._markers.get(id(ln))
            if m is None:
                m = EdgeMarker(ln, edge)
                self._markers[id(ln)] = m
                self.vb.addItem(m, ignoreBounds=True)
            m.line_price = price
            if ln is self.position_line:
                text, color, foreign = ln.label_text(), QtGui.QColor(100, 170, 255), False
            else:
                text, color, foreign = ln.label_text(), ln.color(), ln.foreign
                if not ln.confirmed and ln.action != 'alert':
                    text += ' …'
            m.refresh(text, color, foreign)
            h = m.boundingRect().height() or 16
            off = stack[edge] * (h + 2) * upp
            stack[edge] += 1
            m.setPos(x1, (y1 - off) if edge == 'top' else (y0 + off))
            m.setVisible(True)
        self.layout_labels()

    def layout_labels(self) -> None:
        """Keep order labels readable when lines are close: a label that would overlap one
        above it (or an edge marker) moves one column to the left.

        Labels are right-aligned at the view's right edge; in pixels, each label takes the
        first column whose occupants it does not overlap vertically.
        """
        vb_w = self.vb.width()
        if not vb_w or vb_w < 10:
            return
        (y0, y1) = self.vb.viewRange()[1]
        upp = self._y_units_per_pixel()
        placed: list[tuple[int, float, float]] = []   # (column, top px, bottom px)
        for m in self._markers.values():
            if m.isVisible():
                r = m.sceneBoundingRect()
                top = self.vb.mapSceneToView(r.topLeft()).y()
                placed.append((0, (y1 - top) / upp, (y1 - top) / upp + r.height()))
        labels = [ln for ln in self._lines.values()
                  if ln.label.isVisible() and y0 <= ln.price <= y1 and not ln.moving]
        col_w = max([ln.label.boundingRect().width() for ln in labels]
                    + [m.boundingRect().width() for m in self._markers.values() if m.isVisible()],
                    default=0) + 6
        for ln in sorted(labels, key=lambda ln: -ln.price):
            h = ln.label.boundingRect().height() or 16
            mid = (y1 - ln.price) / upp
            # near the top/bottom edge the label hangs below/above its line, never cut off
            vb_h = (y1 - y0) / upp
            if mid < h / 2:
                anchor, top = (1, 0), mid
            elif mid > vb_h - h / 2:
                anchor, top = (1, 1), mid - h
            else:
                anchor, top = (1, 0.5), mid - h / 2
            bottom = top + h
            if ln.label.anchors[0] != anchor:
                ln.label.anchors = [anchor, anchor]
                ln.label.updatePosition()
            col = 0
            while any(c == col and t < bottom and top < b for c, t, b in placed):
                col += 1
            placed.append((col, top, bottom))
            pos = LevelLine.LABEL_POS - col * col_w / vb_w
            if abs(ln.label.orthoPos - pos) > 1e-9:
                ln.label.setPosition(max(pos, 0.02))

    def _update_y_range(self) -> None:
        """Fit y to the visible bars + L1 (unless scaled by hand); lines outside get edge
        markers."""
        if self._in_y_update:
            return
        if self._y_manual:
            self._update_edge_markers()
            return
        if any(ln.moving for ln in self._lines.values()):
            return  # don't rescale under a line being dragged
        (x0, x1) = self.vb.viewRange()[0]
        lo, hi = math.inf, -math.inf
        r = self.bars.y_range(x0, x1)
        if r is not None:
            lo, hi = r
        for p in self._y_items():
            if math.isfinite(p):
                lo, hi = min(lo, p), max(hi, p)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return
        span = max(hi - lo, 10 * self._tick)
        mid = (hi + lo) / 2
        lo, hi = mid - span / 2, mid + span / 2
        pad = span * 0.07
        self._in_y_update = True
        try:
            self.vb.setYRange(lo - pad, hi + pad, padding=0)
        finally:
            self._in_y_update = False
        self._update_edge_markers()
