"""A fast OHLC bars graphics item.

Exists because one ``QGraphicsItem`` per bar does not scale to tens of
thousands of bars updated on every tick: here all bars are drawn from the
numpy array as a handful of ``QPainterPath`` objects built in bulk with
``pg.arrayToQPath``. Ticks that only change the forming (last) bar rebuild
just that bar's tiny path; a new bar appends to the history paths.

History paths are kept in chunks of :data:`CHUNK_BARS` bars so a repaint
strokes only the chunks overlapping the visible x range: drawing cost
follows what is on screen, not how much history was loaded.
"""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui

__all__ = ['UP_COLOR', 'DOWN_COLOR', 'OHLCBarsItem', 'VolumeItem', 'bars_path']

UP_COLOR = QtGui.QColor(38, 194, 140)
DOWN_COLOR = QtGui.QColor(232, 77, 87)

#: bars per history path chunk (paint skips chunks outside the view)
CHUNK_BARS = 512

#: fraction of the bar period used by each open/close tick (left/right)
_TICK_FRAC = 0.4


def bars_path(bars: np.ndarray, period: float) -> QtGui.QPainterPath:
    """One path for many OHLC bars: 3 segments per bar, drawn as pairs.

    Each bar is a vertical low-high line at the centre of its period, a
    left tick at the open and a right tick at the close.
    """
    n = len(bars)
    if n == 0:
        return QtGui.QPainterPath()
    c = bars['time'] + period / 2.0
    w = period * _TICK_FRAC
    x = np.empty((n, 6), dtype=float)
    y = np.empty((n, 6), dtype=float)
    x[:, 0] = x[:, 1] = c
    y[:, 0] = bars['low']
    y[:, 1] = bars['high']
    x[:, 2] = c - w
    x[:, 3] = c
    y[:, 2] = y[:, 3] = bars['open']
    x[:, 4] = c
    x[:, 5] = c + w
    y[:, 4] = y[:, 5] = bars['close']
    return pg.arrayToQPath(x.ravel(), y.ravel(), connect='pairs', finiteCheck=False)


class OHLCBarsItem(pg.GraphicsObject):
    """Draws an OHLC structured array (``time, open, high, low, close``).

    ``time`` is the bar start; each bar is centred in ``[time, time+period)``
    so fills at time ``t`` land inside their bar. Up bars (close >= open) in
    green, down bars in red. Call :meth:`set_data` with the aggregator's
    array after every tick; it figures out the cheapest redraw itself.
    """

    def __init__(
        self,
        period_s: float | None = None,
        up_color: QtGui.QColor = UP_COLOR,
        down_color: QtGui.QColor = DOWN_COLOR,
    ) -> None:
        super().__init__()
        self._period = float(period_s) if period_s else None
        self._up_color = QtGui.QColor(up_color)
        self._down_color = QtGui.QColor(down_color)
        self._array = np.zeros(0, dtype=[
            ('time', 'f8'), ('open', 'f8'), ('high', 'f8'), ('low', 'f8'), ('close', 'f8'),
        ])
        # history chunks: [x0, x1, n_bars, up_path, down_path]
        self._chunks: list[list] = []
        self._last_path = QtGui.QPainterPath()
        self._last_up = True
        self._hist_n = 0          # bars drawn in the history paths
        self._t0: float | None = None
        self._hist_lo = np.inf
        self._hist_hi = -np.inf
        self._rect = QtCore.QRectF()
        #: number of full (history) rebuilds, for tests / profiling
        self.full_rebuilds = 0

    # -- data -----------------------------------------------------------------
    @property
    def period(self) -> float:
        """Bar period in seconds (given, or inferred from the data)."""
        if self._period:
            return self._period
        a = self._array
        if len(a) >= 2:
            d = np.diff(a['time'][-min(len(a), 50):])
            d = d[d > 0]
            if len(d):
                return float(d.min())
        return 1.0

    def set_period(self, period_s: float) -> None:
        """Change the bar period (forces a full redraw)."""
        self._period = float(period_s)
        self._hist_n = 0
        self._t0 = None
        self.set_data(self._array)

    @property
    def array(self) -> np.ndarray:
        """The array last passed to :meth:`set_data`."""
        return self._array

    def set_data(self, array: np.ndarray, full: bool = False) -> None:
        """Draw ``array``; redraws only what changed since the last call.

        * same bar count and first bar -> only the last bar path is rebuilt;
        * more bars, same first bar -> new complete bars are appended;
        * anything else (or ``full=True``, e.g. history was rewritten) ->
          full rebuild.
        """
        n = len(array)
        self._array = array
        if full:
            self._t0 = None
        if n == 0:
            self._reset_paths()
            self._update_rect()
            return
        period = self.period
        t0 = float(array['time'][0])
        hist_n = n - 1
        if self._t0 != t0 or hist_n < self._hist_n:
            self._rebuild_history(array[:hist_n], period)
        elif hist_n > self._hist_n:
            new = array[self._hist_n:hist_n]
            self._append_history(new, period)
        self._t0 = t0
        self._hist_n = hist_n

        last = array[n - 1:n]
        self._last_up = bool(last['close'][0] >= last['open'][0])
        self._last_path = bars_path(last, period)
        self._update_rect()
        self.update()

    def _reset_paths(self) -> None:
        self._chunks = []
        self._last_path = QtGui.QPainterPath()
        self._hist_n = 0
        self._t0 = None
        self._hist_lo, self._hist_hi = np.inf, -np.inf
        self.update()

    def _rebuild_history(self, hist: np.ndarray, period: float) -> None:
        self.full_rebuilds += 1
        self._chunks = []
        self._hist_lo, self._hist_hi = np.inf, -np.inf
        self._append_history(hist, period)

    def _append_history(self, new: np.ndarray, period: float) -> None:
        if len(new) == 0:
            return
        self._hist_lo = min(self._hist_lo, float(new['low'].min()))
        self._hist_hi = max(self._hist_hi, float(new['high'].max()))
        i = 0
        while i < len(new):
            if not self._chunks or self._chunks[-1][2] >= CHUNK_BARS:
                self._chunks.append([
                    float(new['time'][i]), float(new['time'][i]), 0,
                    QtGui.QPainterPath(), QtGui.QPainterPath(),
                ])
            chunk = self._chunks[-1]
            part = new[i:i + CHUNK_BARS - chunk[2]]
            up = part['close'] >= part['open']
            if up.any():
                chunk[3].addPath(bars_path(part[up], period))
            if (~up).any():
                chunk[4].addPath(bars_path(part[~up], period))
            chunk[1] = float(part['time'][-1]) + period
            chunk[2] += len(part)
            i += len(part)

    def _update_rect(self) -> None:
        a = self._array
        if len(a) == 0:
            rect = QtCore.QRectF()
        else:
            period = self.period
            lo = min(self._hist_lo, float(a['low'][-1]))
            hi = max(self._hist_hi, float(a['high'][-1]))
            x0 = float(a['time'][0])
            x1 = float(a['time'][-1]) + period
            rect = QtCore.QRectF(x0, lo, x1 - x0, max(hi - lo, 1e-9))
        if rect != self._rect:
            self.prepareGeometryChange()
            self._rect = rect
            self.informViewBoundsChanged()

    # -- geometry ---------------------------------------------------------------
    def y_range(self, x0: float, x1: float) -> tuple[float, float] | None:
        """Low/high of the bars overlapping ``[x0, x1]`` (for y auto-range)."""
        a = self._array
        if len(a) == 0:
            return None
        t = a['time']
        i0 = max(int(np.searchsorted(t, x0 - self.period, side='left')), 0)
        i1 = int(np.searchsorted(t, x1, side='right'))
        if i1 <= i0:
            return None
        vis = a[i0:i1]
        return float(vis['low'].min()), float(vis['high'].max())

    def dataBounds(self, ax: int, frac: float = 1.0, orthoRange=None):  # noqa: N802
        """Let a ViewBox auto-range on the data (y limited to the visible x)."""
        a = self._array
        if len(a) == 0:
            return None
        if ax == 0:
            return float(a['time'][0]), float(a['time'][-1]) + self.period
        if orthoRange is not None:
            r = self.y_range(*orthoRange)
            return r if r is not None else (None, None)
        return self._rect.top(), self._rect.bottom()

    def boundingRect(self) -> QtCore.QRectF:  # noqa: N802
        """The data extent: first bar start to last bar end, low to high."""
        return QtCore.QRectF(self._rect)

    # -- painting ---------------------------------------------------------------
    def _pens(self, painter: QtGui.QPainter) -> tuple[QtGui.QPen, QtGui.QPen]:
        # thicker strokes once bars are wide enough on screen
        px_per_bar = abs(painter.transform().m11()) * self.period
        width = 1.0 if px_per_bar < 5 else (1.6 if px_per_bar < 12 else 2.2)
        up = QtGui.QPen(self._up_color, width)
        down = QtGui.QPen(self._down_color, width)
        for pen in (up, down):
            pen.setCosmetic(True)
            pen.setCapStyle(QtCore.Qt.PenCapStyle.FlatCap)
        return up, down

    def paint(self, painter: QtGui.QPainter, *args) -> None:
        """Stroke the up, down and last-bar paths (no per-bar work)."""
        if len(self._array) == 0:
            return
        painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing, False)
        up, down = self._pens(painter)
        vr = self.viewRect()
        if vr is None:
            x0, x1 = -np.inf, np.inf
        else:
            x0, x1 = vr.left(), vr.right()
        for cx0, cx1, _n, up_path, down_path in self._chunks:
            if cx1 < x0 or cx0 > x1:
                continue
            painter.setPen(up)
            painter.drawPath(up_path)
            painter.setPen(down)
            painter.drawPath(down_path)
        painter.setPen(up if self._last_up else down)
        painter.drawPath(self._last_path)


class VolumeItem(pg.GraphicsObject):
    """Volume bars (one column per OHLC bar, coloured like it) for the pane under the chart.

    Built like :class:`OHLCBarsItem`: all columns as two painter paths from the numpy array
    (``pg.arrayToQPath``), so a day of bars redraws in one call. :meth:`max_volume` gives the
    pane's y range for the visible x range.
    """

    def __init__(self, period_s: float, up_color: QtGui.QColor = UP_COLOR,
                 down_color: QtGui.QColor = DOWN_COLOR) -> None:
        super().__init__()
        self.period = float(period_s)
        self._up_brush = QtGui.QBrush(QtGui.QColor(up_color.red(), up_color.green(), up_color.blue(), 150))
        self._down_brush = QtGui.QBrush(QtGui.QColor(down_color.red(), down_color.green(), down_color.blue(), 150))
        self._array = np.zeros(0, dtype=[('time', 'f8'), ('open', 'f8'), ('close', 'f8'), ('volume', 'f8')])
        self._paths = (QtGui.QPainterPath(), QtGui.QPainterPath())
        self._rect = QtCore.QRectF()

    @property
    def array(self) -> np.ndarray:
        return self._array

    def set_data(self, array: np.ndarray) -> None:
        """Redraw from the aggregator's bars (``time, open, close, volume``)."""
        if 'volume' not in (array.dtype.names or ()):
            return
        self._array = array
        up = array['close'] >= array['open']
        self._paths = (self._path(array[up]), self._path(array[~up]))
        if len(array):
            top = float(np.nanmax(array['volume'])) or 1.0
            x0 = float(array['time'][0])
            self._rect = QtCore.QRectF(x0, 0.0, float(array['time'][-1]) + self.period - x0, top)
        else:
            self._rect = QtCore.QRectF()
        self.prepareGeometryChange()
        self.update()

    def _path(self, bars: np.ndarray) -> QtGui.QPainterPath:
        n = len(bars)
        if n == 0:
            return QtGui.QPainterPath()
        x0 = bars['time'] + self.period * 0.12
        x1 = bars['time'] + self.period * 0.88
        x = np.empty((n, 5))
        y = np.empty((n, 5))
        x[:, 0] = x[:, 1] = x[:, 4] = x0
        x[:, 2] = x[:, 3] = x1
        y[:, 0] = y[:, 3] = y[:, 4] = 0.0
        y[:, 1] = y[:, 2] = bars['volume']
        connect = np.ones((n, 5), dtype=bool)
        connect[:, 4] = False            # each column its own closed shape
        return pg.arrayToQPath(x.ravel(), y.ravel(), connect=connect.ravel(), finiteCheck=False)

    def max_volume(self, x0: float, x1: float) -> float:
        """The largest volume among the bars overlapping ``[x0, x1]`` (0 when none)."""
        a = self._array
        if not len(a):
            return 0.0
        i0 = int(np.searchsorted(a['time'], x0 - self.period, side='left'))
        i1 = int(np.searchsorted(a['time'], x1, side='right'))
        vis = a['volume'][i0:i1]
        return float(vis.max()) if len(vis) else 0.0

    def boundingRect(self) -> QtCore.QRectF:  # noqa: N802
        return self._rect

    def paint(self, painter: QtGui.QPainter, *args) -> None:
        painter.setPen(QtCore.Qt.PenStyle.NoPen)
        for path, brush in zip(self._paths, (self._up_brush, self._down_brush)):
            painter.setBrush(brush)
            painter.drawPath(path)
