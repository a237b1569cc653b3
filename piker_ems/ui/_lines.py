"""Order, alert and position lines plus fill/alert arrows for the chart.

These are the things a trader sees and touches in order mode: one
horizontal :class:`LevelLine` per order or alert (dragged to modify), a
:class:`PositionLine` for the current position, and small arrows marking
fills and triggered alerts. Pure drawing and geometry: nothing in here
talks to the EMS; the order mode drives these objects by method calls and
listens to :attr:`LevelLine.on_moved` / :attr:`LevelLine.sigMoved`.
"""
from __future__ import annotations

import math
from decimal import Decimal
from typing import Callable

import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui

__all__ = [
    'BUY_COLOR', 'SELL_COLOR', 'ALERT_COLOR', 'POSITION_COLOR',
    'action_color', 'tick_decimals', 'snap_to_tick', 'format_price', 'format_size',
    'LevelLine', 'PositionLine',
    'make_fill_arrow', 'make_alert_arrow',
]

# palette (tuned for a near-black background)
BUY_COLOR = QtGui.QColor(46, 204, 113)
SELL_COLOR = QtGui.QColor(239, 83, 80)
ALERT_COLOR = QtGui.QColor(241, 196, 15)
POSITION_COLOR = QtGui.QColor(100, 170, 255)
#: text drawn on top of a filled (bright) label tag
TAG_TEXT_COLOR = QtGui.QColor(14, 17, 22)

_ACTIONS = ('buy', 'sell', 'alert')
_EXEC_MODES = ('dark', 'live')


def action_color(action: str) -> QtGui.QColor:
    """Colour of an order kind: buy green, sell red, alert yellow (SPEC 8).

    One place for the mapping so lines, arrows and tags always agree.
    """
    try:
        return QtGui.QColor({
            'buy': BUY_COLOR, 'sell': SELL_COLOR, 'alert': ALERT_COLOR,
        }[action])
    except KeyError:
        raise ValueError(f'unknown action {action!r}, expected one of {_ACTIONS}') from None


def tick_decimals(tick_size: float) -> int:
    """Number of decimals needed to print prices on a ``tick_size`` grid."""
    if not tick_size or tick_size <= 0:
        return 2
    exp = Decimal(repr(float(tick_size))).normalize().as_tuple().exponent
    return max(0, -int(exp))


def snap_to_tick(price: float, tick_size: float | None) -> float:
    """Round ``price`` to the nearest multiple of ``tick_size``.

    Orders may only be placed on the instrument's tick grid; the result is
    also rounded to the tick's decimals so ``0.1 + 0.2`` style float noise
    never reaches the EMS.
    """
    price = float(price)
    if not tick_size or tick_size <= 0 or not math.isfinite(price):
        return price
    return round(round(price / tick_size) * tick_size, tick_decimals(tick_size))


def format_price(price: float, tick_size: float | None) -> str:
    """Format a price with exactly the tick size's decimals (for labels)."""
    return f'{price:.{tick_decimals(tick_size or 0.01)}f}'


def format_size(size: float) -> str:
    """Compact size for labels: ``3``, ``0.5``, ``12,500``, ``100k``, ``2.5M``.

    FX/crypto sizes get large; ``2e+06`` is unreadable on a chart.
    """
    size = float(size)
    a = abs(size)
    if a >= 1e6:
        return f'{size / 1e6:.4g}M'
    if a >= 1e5:
        return f'{size / 1e3:.4g}k'
    if a >= 1e3 and size == int(size):
        return f'{int(size):,}'
    return f'{size:.8g}'


def _with_alpha(color: QtGui.QColor, alpha: int) -> QtGui.QColor:
    c = QtGui.QColor(color)
    c.setAlpha(alpha)
    return c


def _dim(color: QtGui.QColor, factor: float = 0.55) -> QtGui.QColor:
    """Blend a colour towards the dark background (for foreign orders)."""
    bg = (14, 17, 22)
    return QtGui.QColor(
        int(color.red() * factor + bg[0] * (1 - factor)),
        int(color.green() * factor + bg[1] * (1 - factor)),
        int(color.blue() * factor + bg[2] * (1 - factor)),
    )


def _tag_font(point_size: float = 8.5, bold: bool = True) -> QtGui.QFont:
    f = QtGui.QFont()
    f.setPointSizeF(point_size)
    f.setBold(bold)
    return f


class LevelLine(pg.InfiniteLine):
    """A horizontal, draggable line for one order or alert.

    Exists so the order mode has one object per order carrying both the
    drawing (colour by ``action``, dashed for ``dark`` / solid for ``live``,
    dimmer for another client's order) and the order's identity (``oid``,
    ``size``, ``owner``). States:

    * *staged*: the thin, semi-transparent line following the cursor while
      f/d/a is held; not movable, never labelled.
    * *submitted*: normal style, label still hidden.
    * *confirmed*: :meth:`confirm` was called because the EMS acknowledged
      the order; only now the label (size, or the alert level) shows.

    Dragging snaps the price to ``tick_size`` on every move, so the line is
    always on the tick grid. When a drag ends on a new price,
    ``on_moved(line, price)`` is called and :attr:`sigMoved` emitted.
    :attr:`hovered` tracks whether the mouse is over the line so the order
    mode can cancel "orders under the cursor".
    """

    #: emitted with ``(line, new_price)`` when a drag ends on a new price
    sigMoved = QtCore.Signal(object, float)
    #: emitted when the label appears/disappears or its text changes (the chart re-stacks)
    sigLabelShown = QtCore.Signal()
    #: default position of the label along the line (right edge of the view)
    LABEL_POS = 0.985

    def __init__(
        self,
        price: float,
        action: str = 'buy',
        exec_mode: str = 'dark',
        size: float = 0.0,
        oid: str | None = None,
        owner: str | None = None,
        foreign: bool = False,
        tick_size: float = 0.01,
        staged: bool = False,
        movable: bool | None = None,
        on_moved: Callable[['LevelLine', float], None] | None = None,
        label_text: str | None = None,
    ) -> None:
        if action not in _ACTIONS:
            raise ValueError(f'unknown action {action!r}, expected one of {_ACTIONS}')
        if exec_mode not in _EXEC_MODES:
            raise ValueError(f'unknown exec_mode {exec_mode!r}, expected one of {_EXEC_MODES}')
        # must exist before InfiniteLine.__init__ calls our setPos()
        self.tick_size = float(tick_size)
        self.action = action
        self.exec_mode = exec_mode
        self.size = float(size)
        self.oid = oid
        self.owner = owner
        self.foreign = bool(foreign)
        self.on_moved = on_moved
        #: called with the line when a drag starts on it while it is not movable (another
        #: client's order): the order mode says why instead of panning the view silently
        self.on_drag_refused: Callable[['LevelLine'], None] | None = None
        #: called with the line when the mouse starts or stops hovering it
        self.on_hover: Callable[['LevelLine'], None] | None = None
        self._staged = bool(staged)
        self._confirmed = False
        self._hovered = False
        self._custom_text: str | None = label_text

        if movable is None:
            movable = not self._staged
        super().__init__(
            pos=snap_to_tick(price, self.tick_size), angle=0, movable=movable,
        )
        self._committed_price = self.price
        # hover is tracked for every line, movable or not (cancel-under-cursor
        # must work on foreign, non-draggable orders too)
        self.setAcceptHoverEvents(True)

        self.label = pg.InfLineLabel(
            self, text='', position=self.LABEL_POS, anchors=[(1, 0.5), (1, 0.5)],
        )
        self.label.setFont(_tag_font())
        self.label.setVisible(False)
        self.label.setZValue(1)

        self.sigPositionChangeFinished.connect(self._on_drag_finished)
        self.sigPositionChanged.connect(self._refresh_label)
        self._apply_style()

    # -- price / geometry ---------------------------------------------------
    @property
    def price(self) -> float:
        """The line's (tick-snapped) price."""
        return float(self.value())

    def snap(self, price: float) -> float:
        """Snap a price to this line's tick grid."""
        return snap_to_tick(price, self.tick_size)

    def set_price(self, price: float) -> None:
        """Move the line programmatically (EMS update, modify rejected...).

        Unlike a drag this never calls ``on_moved``.
        """
        self.setPos(price)
        self._committed_price = self.price

    def setPos(self, pos) -> None:  # noqa: N802 (Qt naming)
        """Snap the y value to the tick grid, then position the line.

        InfiniteLine's mouse drag calls this on every move, so snapping here
        keeps the line on the grid *during* the drag, not just at the end.
        """
        tick = getattr(self, 'tick_size', None)
        if tick:
            if isinstance(pos, QtCore.QPointF):
                pos = QtCore.QPointF(pos.x(), snap_to_tick(pos.y(), tick))
            elif isinstance(pos, (list, tuple)) or hasattr(pos, '__len__'):
                pos = [float(pos[0]), snap_to_tick(pos[1], tick)]
            else:
                pos = snap_to_tick(pos, tick)
        super().setPos(pos)

    def _on_drag_finished(self, _line=None) -> None:
        price = self.price
        if price == self._committed_price:
            return  # drag cancelled / ended where it started
        self._committed_price = price
        if self.on_moved is not None:
            self.on_moved(self, price)
        self.sigMoved.emit(self, price)

    # -- hover ---------------------------------------------------------------
    @property
    def hovered(self) -> bool:
        """True while the mouse is over the line (see cancel-under-cursor)."""
        return self._hovered

    def hoverEvent(self, ev) -> None:  # noqa: N802
        """Track hover for all lines; only movable ones accept drags."""
        hovering = not ev.isExit()
        if hovering and (self.movable or self.on_drag_refused is not None):
            ev.acceptDrags(QtCore.Qt.MouseButton.LeftButton)
        self.setMouseHover(hovering)

    def mouseDragEvent(self, ev) -> None:  # noqa: N802
        """Drag to modify; a drag on a line that may not move is refused visibly."""
        if not self.movable and self.on_drag_refused is not None \
                and ev.button() == QtCore.Qt.MouseButton.LeftButton:
            ev.accept()            # no silent pan of the view underneath either
            if ev.isStart():
                self.on_drag_refused(self)
            return
        super().mouseDragEvent(ev)

    def setMouseHover(self, hover: bool) -> None:  # noqa: N802
        """Record the hover state (also used by tests / keyboard code)."""
        changed = self._hovered != bool(hover)
        self._hovered = bool(hover)
        super().setMouseHover(hover)
        if changed and self.on_hover is not None:
            self.on_hover(self)

    # -- states --------------------------------------------------------------
    @property
    def staged(self) -> bool:
        """True for the cursor-following preview line."""
        return self._staged

    @property
    def confirmed(self) -> bool:
        """True once the EMS confirmed the order (label visible)."""
        return self._confirmed

    def set_staged(self, staged: bool) -> None:
        """Switch between the staged preview look and a real order line."""
        self._staged = bool(staged)
        self.setMovable(not self._staged)
        self.setAcceptHoverEvents(True)
        self._apply_style()

    def confirm(self, label_text: str | None = None) -> None:
        """Mark the order confirmed by the EMS and show its label.

        SPEC 8: labels appear only once the EMS confirms the submission, so
        an unlabelled line tells the trader the order is still in flight.
        """
        if label_text is not None:
            self._custom_text = label_text
        self._confirmed = True
        self._refresh_label()

    def unconfirm(self) -> None:
        """Hide the label again (e.g. while a modify is in flight)."""
        self._confirmed = False
        self._refresh_label()

    def set_label_text(self, text: str | None) -> None:
        """Override the label text; ``None`` goes back to the default text."""
        self._custom_text = text
        self._refresh_label()

    def label_text(self) -> str:
        """The text the label shows (or will show once confirmed)."""
        if self._custom_text is not None:
            return self._custom_text
        price = format_price(self.price, self.tick_size)
        if self.action == 'alert':
            text = price
        else:
            text = f'{format_size(self.size)} @ {price}'
        if self.foreign:
            text = f'{self.owner or "?"}: {text}'
        return text

    def set_style(
        self,
        action: str | None = None,
        exec_mode: str | None = None,
    ) -> None:
        """Restyle the line, e.g. a staged buy turning live when `s` is held."""
        if action is not None:
            if action not in _ACTIONS:
                raise ValueError(f'unknown action {action!r}')
            self.action = action
        if exec_mode is not None:
            if exec_mode not in _EXEC_MODES:
                raise ValueError(f'unknown exec_mode {exec_mode!r}')
            self.exec_mode = exec_mode
        self._apply_style()

    def set_size(self, size: float) -> None:
        """Update the order size (partial fills, modify) and its label."""
        self.size = float(size)
        self._refresh_label()

    # -- drawing -------------------------------------------------------------
    def pen_style(self) -> QtCore.Qt.PenStyle:
        """Dashed for dark orders (held by the EMS), solid for live (at the broker).

        Alerts are held by the EMS too, so by default they draw dashed.
        """
        if self.exec_mode == 'live':
            return QtCore.Qt.PenStyle.SolidLine
        return QtCore.Qt.PenStyle.DashLine

    def color(self) -> QtGui.QColor:
        """The line's current colour (dimmed when foreign)."""
        c = action_color(self.action)
        return _dim(c) if self.foreign else c

    def _apply_style(self) -> None:
        color = self.color()
        style = self.pen_style()
        if self._staged:
            width = 1.2
            color = _with_alpha(color, 215)
        elif self.foreign:
            width = 1.0
        else:
            width = 1.5
        pen = pg.mkPen(color, width=width, style=style)
        pen.setCosmetic(True)
        hover = pg.mkPen(color.lighter(135), width=width + 1.5, style=style)
        hover.setCosmetic(True)
        self.setPen(pen)
        self.setHoverPen(hover)
        self.setZValue(20 if self._staged else (15 if self.foreign else 18))

        lbl = self.label
        if self.foreign:
            lbl.fill = pg.mkBrush(_with_alpha(QtGui.QColor(30, 34, 42), 235))
            lbl.border = pg.mkPen(color, width=1)
            lbl.setColor(action_color(self.action).lighter(110))
        else:
            lbl.fill = pg.mkBrush(color)
            lbl.border = pg.mkPen(None)
            lbl.setColor(TAG_TEXT_COLOR)
        self._refresh_label()
        self.update()

    def _refresh_label(self, *_args) -> None:
        show = self._confirmed and not self._staged
        text = self.label_text().replace('{', '{{').replace('}', '}}')
        changed = self.label.isVisible() != show or self.label.format != text
        self.label.setFormat(text)
        if self.label.isVisible() != show:
            self.label.setVisible(show)
        self.label.update()
        if changed:
            self.sigLabelShown.emit()


class PositionLine(pg.InfiniteLine):
    """A fixed horizontal line at the position's average price.

    Exists so the trader always sees what is held and at what cost:
    label ``pos 3 @ 101.25``. Neutral blue so it never reads as an order;
    hidden entirely when flat (size 0).
    """

    def __init__(self, tick_size: float = 0.01) -> None:
        super().__init__(pos=0.0, angle=0, movable=False)
        self.tick_size = float(tick_size)
        self.size = 0.0
        self.avg_price = 0.0
        pen = pg.mkPen(POSITION_COLOR, width=1.2, style=QtCore.Qt.PenStyle.DotLine)
        pen.setCosmetic(True)
        self.setPen(pen)
        self.setZValue(12)
        self.label = pg.InfLineLabel(
            self, text='', position=0.015, anchors=[(0, 0.5), (0, 0.5)],
            fill=pg.mkBrush(POSITION_COLOR), color=TAG_TEXT_COLOR,
        )
        self.label.setFont(_tag_font())
        self.setVisible(False)

    def set_position(self, size: float, avg_price: float) -> None:
        """Show ``size`` at ``avg_price``; size 0 hides the line."""
        self.size = float(size)
        self.avg_price = float(avg_price)
        if not self.size or not math.isfinite(self.avg_price):
            self.setVisible(False)
            return
        self.setPos(self.avg_price)
        self.label.setFormat(self.label_text())
        self.setVisible(True)
        self.label.setVisible(True)

    def label_text(self) -> str:
        """``pos <size> @ <avg price>``, the average with the tick's decimals like every
        other price on the chart (an average of fills may fall between ticks)."""
        return f'pos {format_size(self.size)} @ {format_price(self.avg_price, self.tick_size)}'


def make_fill_arrow(action: str, x: float, price: float, foreign: bool = False) -> pg.ArrowItem:
    """Arrow marking a fill: tip at ``(x, price)``, up for buys, down for sells.

    A pixel-sized arrow (stays readable at any zoom) in the action's colour,
    outlined dark so it stands out over bars. Another client's fill
    (``foreign``) is smaller, hollow and dimmed: only the outline in the
    action's colour.
    """
    if action not in ('buy', 'sell'):
        raise ValueError(f'fill arrows are for buy/sell, got {action!r}')
    if foreign:
        arrow = pg.ArrowItem(
            pos=(x, price),
            angle=90 if action == 'buy' else -90,
            headLen=10, headWidth=6, tailLen=5, tailWidth=2,
            pen=pg.mkPen(_dim(action_color(action), 0.8), width=1.2),
            brush=pg.mkBrush(_with_alpha(QtGui.QColor(14, 17, 22), 200)),
        )
    else:
        arrow = pg.ArrowItem(
            pos=(x, price),
            angle=90 if action == 'buy' else -90,
            headLen=12, headWidth=7, tailLen=7, tailWidth=3,
            pen=pg.mkPen(TAG_TEXT_COLOR, width=1),
            brush=pg.mkBrush(action_color(action)),
        )
    arrow.setZValue(24 if foreign else 25)
    arrow.foreign = bool(foreign)  # type: ignore[attr-defined]
    arrow.action = action  # type: ignore[attr-defined]
    arrow.price = float(price)  # type: ignore[attr-defined]
    return arrow


def make_alert_arrow(x: float, price: float) -> pg.ArrowItem:
    """Right-pointing yellow arrow whose tip marks a triggered alert level."""
    arrow = pg.ArrowItem(
        pos=(x, price),
        angle=180,
        headLen=12, headWidth=7, tailLen=7, tailWidth=3,
        pen=pg.mkPen(TAG_TEXT_COLOR, width=1),
        brush=pg.mkBrush(ALERT_COLOR),
    )
    arrow.setZValue(25)
    arrow.action = 'alert'  # type: ignore[attr-defined]
    arrow.price = float(price)  # type: ignore[attr-defined]
    return arrow
