"""Order mode: trade from the chart with the keyboard and mouse (SPEC §8).

:class:`OrderMode` is a small state machine between the chart (key, click and drag events from
:class:`~piker_ems.ui._chart.ChartWidget`), the EMS client (``book.send/update/cancel``) and the
status bar. It never awaits anything: Qt callbacks call it synchronously, and the app's trio
task feeds it every EMS message through :meth:`OrderMode.on_msg`. That makes it testable with a
fake book and hand-made :class:`Status` messages, no actors needed.

Keys (held, not toggled):

- ``f`` buy, ``d`` sell, ``a`` alert: stage a line at the cursor (snapped to the tick) that
  follows the mouse; ``s`` or Ctrl held as well makes buy/sell *live* (sent to the broker),
  otherwise *dark* (held by the EMS until the market crosses it). Left click submits, releasing
  the key removes the staged line.
- drag an order line: modify it (same oid, new tick-snapped price).
- ``c`` or Delete: cancel the orders under the cursor; ``c`` twice within :data:`CC_WINDOW`
  (``cc``): cancel all of this client's orders. Cancels show a status group that resolves to
  ``cancelled N orders`` once the EMS confirmed every one, or times out visibly.
- Esc: leave order mode (drop every held key), e.g. after a key release got lost.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from pyqtgraph.Qt import QtCore

from ..clearing import _statuses as st
from ..clearing._messages import BrokerdPosition, Order, Status, TradingState
from ..log import get_logger
from ._lines import LevelLine, format_price, format_size, snap_to_tick

log = get_logger(__name__)

Qt = QtCore.Qt

__all__ = [
    'CC_WINDOW', 'CANCEL_TIMEOUT', 'SUBMIT_TIMEOUT', 'Notifier', 'OrderMode', 'mode_name',
]

#: Two ``c`` presses closer than this (seconds) are ``cc``: cancel all.
CC_WINDOW = 1 / 6
#: A cancel group still waiting after this many seconds shows a timeout message.
CANCEL_TIMEOUT = 5.0
#: A submission/modify still unconfirmed after this many seconds shows a timeout message.
SUBMIT_TIMEOUT = 5.0
#: An error shown at least this long clears on the next EMS status (time to read it).
ERROR_MIN_S = 3.0

ORDER_KEYS: dict[int, str] = {Qt.Key_F: 'buy', Qt.Key_D: 'sell', Qt.Key_A: 'alert'}
LIVE_KEYS = {Qt.Key_S, Qt.Key_Control}
CANCEL_KEY = Qt.Key_C
#: step the order size up / down by one lot
SIZE_UP_KEYS = {Qt.Key_Plus, Qt.Key_Equal, Qt.Key_BracketRight}
SIZE_DOWN_KEYS = {Qt.Key_Minus, Qt.Key_Underscore, Qt.Key_BracketLeft}
DELETE_KEYS = {Qt.Key_Delete, Qt.Key_Backspace}

#: cancelled on request (the cancel group's answer); the other cancel-like final statuses
#: (expired, closed, inactive) are the venue ending the order: shown to the trader
_CANCEL_CONFIRMS = frozenset({st.DARK_CANCELLED, st.BROKER_CANCELLED})


def mode_name(action: str | None, exec_mode: str = 'dark') -> str:
    """The status bar's mode label: ``mode: view``, ``mode: dark-buy``, ``mode: alert``..."""
    if action is None:
        return 'mode: view'
    if action == 'alert':
        return 'mode: alert'
    return f'mode: {exec_mode}-{action}'


def _describe(action: str, exec_mode: str) -> str:
    return 'alert' if action == 'alert' else f'{exec_mode}-{action}'


class Book(Protocol):
    """What order mode needs from the EMS client (``open_ems``'s :class:`OrderBook`)."""

    name: str
    account: str
    orders: dict[str, Order]

    def send(self, action: str, price: float, size: float = 0.0, *,
             exec_mode: str | None = None) -> str: ...

    def update(self, oid: str, **fields: Any) -> None: ...

    def cancel(self, oid: str) -> None: ...


class StatusSink(Protocol):
    """What order mode needs from the status bar (:class:`~._statusbar.StatusBar`)."""

    def open_status(self, msg: str, final_msg: str | None = None, clear_on_next: bool = False,
                    group_key: str | bool | None = None, timeout: float | None = None,
                    timeout_msg: str | None = None, *, level: str = 'info',
                    keep_transient: bool = False) -> Any: ...

    def show_error(self, msg: str) -> Any: ...

    def close_group(self, key: str) -> bool: ...

    def set_final(self, key: str, final_msg: str | None) -> bool: ...

    def set_mode(self, text: str) -> None: ...


class Notifier:
    """Optional desktop notifications through ``notify-send``; never fatal, never blocking.

    Disabled unless asked for and ``notify-send`` is on the ``PATH``. Each notification is a
    detached child process; finished ones are reaped on the next call.
    """

    def __init__(self, enabled: bool = False, app_name: str = 'piker') -> None:
        self.binary = shutil.which('notify-send') if enabled else None
        self.app_name = app_name
        self._procs: list[subprocess.Popen] = []

    @property
    def enabled(self) -> bool:
        return self.binary is not None

    def __call__(self, title: str, body: str = '') -> None:
        if self.binary is None:
            return
        self._procs = [p for p in self._procs if p.poll() is None]
        try:
            self._procs.append(subprocess.Popen(
                [self.binary, '-a', self.app_name, '-u', 'normal', '-t', '8000', title, body],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        except OSError as err:
            log.warning('desktop notification failed (%s); disabling notifications', err)
            self.binary = None


@dataclass
class _CancelBatch:
    """One ``c`` / Delete / ``cc`` request: its status group and the orders it covers.

    ``outcomes`` records how each order ended (``cancelled``, ``filled``, ``refused``...) so
    the group's final message says what happened: ``cancelled 2, 1 filled``.
    """

    key: str | None
    oids: list[str]
    t: float
    outcomes: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for oid in self.oids:
            what = self.outcomes.get(oid, 'cancelled')
            counts[what] = counts.get(what, 0) + 1
        cancelled = counts.pop('cancelled', 0)
        if not counts:
            return f'cancelled {orders(cancelled)}'      # SPEC §8 wording
        return ', '.join([f'cancelled {cancelled}'] + [f'{n} {w}' for w, n in counts.items()])


@dataclass
class _Pending:
    """Status-bar closers waiting on the EMS for one oid."""

    submit: list[Callable[[], Any]] = field(default_factory=list)
    cancel: list[Callable[[], Any]] = field(default_factory=list)
    modify_from: float | None = None   # price before a drag, to revert on refusal


class OrderMode:
    """The chart's order mode: key/mouse events in, EMS requests and drawing out.

    ``chart`` is a :class:`~piker_ems.ui._chart.ChartWidget`, ``status`` a
    :class:`~piker_ems.ui._statusbar.StatusBar`, ``book`` the :class:`OrderBook` from
    :func:`~piker_ems.clearing.open_ems` (or any object with the same ``send/update/cancel``,
    ``orders`` and ``name``). ``size`` is the size of new buy/sell orders. ``clock`` (monotonic
    seconds) times ``cc``; inject one in tests. ``control_others`` allows cancelling/dragging
    other clients' (foreign) orders under the cursor; ``cc`` only ever cancels our own.
    """

    def __init__(
        self,
        chart,
        status: StatusSink,
        book: Book,
        size: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        notify: Callable[[str, str], None] | None = None,
        control_others: bool = False,
        cancel_timeout: float = CANCEL_TIMEOUT,
        submit_timeout: float = SUBMIT_TIMEOUT,
        fqsn: str | None = None,
        lot_size: float | None = None,
    ) -> None:
        if not size > 0:
            raise ValueError(f'order size must be > 0, got {size!r}')
        #: sizes step by (and snap to) this; default: the launch size's own precision
        self.lot_size = float(lot_size) if lot_size and lot_size > 0 else _default_lot(size)
        self.chart = chart
        self.status = status
        self.book = book
        self.size = float(size)
        self.clock = clock
        self.notify = notify or (lambda title, body='': None)
        self.control_others = control_others
        self.cancel_timeout = cancel_timeout
        self.submit_timeout = submit_timeout
        self.fqsn = (fqsn or getattr(book, 'fqsn', None) or chart.fqsn).lower()
        #: order keys currently held, in press order (the last one wins)
        self.held: list[str] = []
        self._live_keys: set[int] = set()
        self._ctrl = False
        self._last_c: _CancelBatch | None = None
        self._pending: dict[str, _Pending] = {}
        #: cancel batches still waiting on an oid, and how recently ended oids ended
        self._batches: dict[str, list[_CancelBatch]] = {}
        self._outcomes: dict[str, str] = {}
        self._filter: _FocusFilter | None = None
        #: this chart's position (symbol + account) as last reported, None before any
        self.position: BrokerdPosition | None = None
        #: emsd's trading state for this account (None: unknown, order mode is off)
        self.trading_state: str | None = None
        self.enabled = True
        self._apply_mode()
        self._show_size()

    # -- size -------------------------------------------------------------------------------

    def set_size(self, size: float) -> float:
        """Set the size of new buy/sell orders (snapped to the lot size, at least one lot);
        updates the staged line and the status bar's size field. Returns the size set."""
        lot = self.lot_size
        try:
            size = float(size)
        except (TypeError, ValueError):
            size = self.size
        if not (size == size) or size <= 0:   # NaN / non-positive: keep one lot
            size = lot
        size = max(lot, snap_to_tick(size, lot))
        self.size = size
        staged = self.chart.staged_line
        if staged is not None and staged.action != 'alert':
            staged.set_size(size)
        self._show_size()
        return size

    def step_size(self, lots: int) -> float:
        """Step the size by ``lots`` lots (``+``/``-`` keys); never below one lot."""
        return self.set_size(self.size + lots * self.lot_size)

    def _show_size(self) -> None:
        show = getattr(self.status, 'set_size', None)
        if show is not None:
            show(self.size, self.lot_size)

    def _on_size_field(self, value: float) -> None:
        if snap_to_tick(value, self.lot_size) != self.size:
            self.set_size(value)
        self.chart.setFocus()   # back to trading keys after typing a size

    # -- wiring ---------------------------------------------------------------------------

    def connect(self) -> 'OrderMode':
        """Listen to the chart's key, click and focus events."""
        self.chart.sigKeyPressed.connect(self.on_key_press)
        self.chart.sigKeyReleased.connect(self.on_key_release)
        self.chart.sigClicked.connect(self.on_click)
        self.chart.sigCursorMoved.connect(self._on_cursor)
        self._filter = _FocusFilter(self.reset_keys)
        self.chart.installEventFilter(self._filter)
        box = getattr(self.status, 'size_box', None)
        if box is not None:
            box.valueChanged.connect(self._on_size_field)
        return self

    def disconnect(self) -> None:
        """Stop listening (the EMS connection is gone); drops the staged line."""
        for sig, slot in (
            (self.chart.sigKeyPressed, self.on_key_press),
            (self.chart.sigKeyReleased, self.on_key_release),
            (self.chart.sigClicked, self.on_click),
            (self.chart.sigCursorMoved, self._on_cursor),
            *(((box.valueChanged, self._on_size_field),)
              if (box := getattr(self.status, 'size_box', None)) is not None else ()),
        ):
            try:
                sig.disconnect(slot)
            except (TypeError, RuntimeError):
                pass
        self.on_trading_state(None)   # unknown without the EMS (its loss is shown as an error)
        if self._filter is not None:
            self.chart.removeEventFilter(self._filter)
            self._filter = None
        self.reset_keys()

    # -- mode state -----------------------------------------------------------------------

    @property
    def action(self) -> str | None:
        """The staged action (``buy``/``sell``/``alert``) or None in view mode."""
        return self.held[-1] if self.held else None

    @property
    def exec_mode(self) -> str:
        """``live`` while ``s`` or Ctrl is held, else ``dark`` (alerts are always dark)."""
        if self.action == 'alert':
            return 'dark'
        return 'live' if (self._live_keys or self._ctrl) else 'dark'

    @property
    def mode(self) -> str:
        """The mode label's text."""
        return mode_name(self.action, self.exec_mode)

    def _apply_mode(self) -> None:
        action, exec_mode = self.action, self.exec_mode
        staged = self.chart.staged_line
        if action is None:
            if staged is not None:
                self.chart.remove_staged_line()
        elif staged is None or staged.action != action:
            self.chart.add_staged_line(action, exec_mode, size=self._size_for(action))
        elif staged.exec_mode != exec_mode:
            staged.set_style(exec_mode=exec_mode)
        self.status.set_mode(self.mode)

    def reset_keys(self) -> None:
        """Forget every held key (focus lost, Esc): back to view mode."""
        self.held.clear()
        self._live_keys.clear()
        self._ctrl = False
        self._apply_mode()

    def _size_for(self, action: str) -> float:
        return 0.0 if action == 'alert' else self.size

    # -- key and mouse events ---------------------------------------------------------------

    def on_key_press(self, ev) -> None:
        """Qt key press on the chart (auto-repeats are ignored)."""
        if ev.isAutoRepeat():
            return
        self.press(ev.key(), ev.modifiers())

    def on_key_release(self, ev) -> None:
        """Qt key release on the chart (auto-repeats are ignored)."""
        if ev.isAutoRepeat():
            return
        self.release(ev.key(), ev.modifiers())

    def press(self, key: int, modifiers=Qt.NoModifier) -> None:
        """A key went down (the testable core of :meth:`on_key_press`)."""
        if not self.enabled:
            return
        self._ctrl = bool(int(modifiers) & int(Qt.ControlModifier)) or key == Qt.Key_Control
        if key in ORDER_KEYS:
            action = ORDER_KEYS[key]
            if action in self.held:
                self.held.remove(action)
            self.held.append(action)
        elif key in LIVE_KEYS:
            self._live_keys.add(key)
        elif key == CANCEL_KEY:
            self._on_c(everyone=bool(int(modifiers) & int(Qt.ShiftModifier)))
            return
        elif key in DELETE_KEYS:
            self.cancel_under_cursor()
            return
        elif key in SIZE_UP_KEYS:
            self.step_size(+1)
            return
        elif key in SIZE_DOWN_KEYS:
            self.step_size(-1)
            return
        elif key == Qt.Key_Escape:
            self.reset_keys()
            return
        else:
            return
        self._apply_mode()

    def release(self, key: int, modifiers=Qt.NoModifier) -> None:
        """A key went up (the testable core of :meth:`on_key_release`)."""
        if key == Qt.Key_Control:
            self._ctrl = False
        else:
            self._ctrl = bool(int(modifiers) & int(Qt.ControlModifier))
        if key in ORDER_KEYS:
            action = ORDER_KEYS[key]
            if action in self.held:
                self.held.remove(action)
        elif key in LIVE_KEYS:
            self._live_keys.discard(key)
        else:
            return
        self._apply_mode()

    def on_click(self, x: float, price: float, button) -> str | None:
        """A click on the plot: a left click while an order key is held submits there."""
        if button != Qt.LeftButton or self.action is None or not self.enabled:
            return None
        return self.submit(price)

    # -- submit / modify ------------------------------------------------------------------

    def submit(self, price: float | None = None) -> str | None:
        """Send the staged order at ``price`` (default: the cursor) and draw its line.

        The line has no label until the EMS confirms the order (``*_submitted``); the status
        bar shows ``submitting dark-buy`` until then, ``submitted dark-buy`` after.
        """
        action = self.action
        if action is None:
            return None
        exec_mode = self.exec_mode
        if price is None:
            price = self.chart.cursor_price()
        if price is None and self.chart.staged_line is not None:
            price = self.chart.staged_line.price
        if price is None:
            return None
        price = snap_to_tick(price, self.chart.tick_size)
        size = self._size_for(action)
        desc = _describe(action, exec_mode)
        try:
            oid = self.book.send(action, price, size, exec_mode=exec_mode)
        except Exception as err:  # e.g. a price <= 0 refused by validation
            log.warning('could not submit %s @ %s: %s', desc, price, err)
            self.status.show_error(f'{desc} @ {format_price(price, self.chart.tick_size)} refused: '
                                   f'{_short(err)}')
            return None
        self.chart.add_order_line(
            oid, price, action, exec_mode, size, owner=self.book.name,
            on_moved=self._on_line_moved,
        )
        closer = self.status.open_status(
            f'submitting {desc}', final_msg=f'submitted {desc}', clear_on_next=True,
            timeout=self.submit_timeout,
            timeout_msg=f'{desc} {oid[:6]}: no confirmation from the EMS yet',
        )
        self._pending.setdefault(oid, _Pending()).submit.append(closer)
        return oid

    def _on_line_moved(self, line: LevelLine, price: float) -> None:
        """A drag ended on a new price: modify the order (same oid)."""
        oid = line.oid
        order = self.book.orders.get(oid) if oid else None
        if order is None or (line.foreign and not self.control_others):
            if order is not None:
                line.set_price(order.price)
            return
        price = snap_to_tick(price, self.chart.tick_size)
        old = order.price
        try:
            self.book.update(oid, price=price)
        except Exception as err:
            self.status.show_error(f'modify {oid[:6]} refused: {_short(err)}')
            line.set_price(old)
            return
        desc = _describe(line.action, line.exec_mode)
        pend = self._pending.setdefault(oid, _Pending())
        if pend.modify_from is None:
            pend.modify_from = old
        line.unconfirm()
        pend.submit.append(self.status.open_status(
            f'modifying {desc} {oid[:6]}',
            final_msg=f'modified {desc} -> {format_price(price, self.chart.tick_size)}',
            clear_on_next=True, timeout=self.submit_timeout,
            timeout_msg=f'modify {desc} {oid[:6]}: no confirmation from the EMS yet',
        ))

    # -- cancel ---------------------------------------------------------------------------

    # -- other clients' orders ------------------------------------------------------------

    def describe_foreign(self, line: LevelLine, long: bool = False) -> str:
        """Whose order ``line`` is and what this chart may do with it (the hover hint; the
        ``long`` form, for the tooltip, says how to get permission)."""
        tick = self.chart.tick_size
        what = 'alert' if line.action == 'alert' else f'{line.exec_mode} {line.action}'
        size = '' if line.action == 'alert' else f' {format_size(line.size)}'
        head = f"{line.owner or '?'}'s {what}{size} @ {format_price(line.price, tick)}"
        if self.control_others:
            return f'{head}: c cancels, drag modifies'
        if long:
            return (f'{head} ({(line.oid or "?")[:6]}): view only; start the chart with '
                    f'--control-others to cancel or drag it')
        return f'{head}: view only'

    def _refusal(self, line: LevelLine, action: str) -> str:
        return (f"{line.owner or '?'}'s order {(line.oid or '?')[:6]}: not yours to {action} "
                f"(--control-others)")

    def _on_cursor(self, _x: float = 0.0, _price: float = 0.0) -> None:
        set_hint = getattr(self.status, 'set_hint', None)
        if set_hint is None:
            return
        foreign = [ln for ln in self.chart.lines_under_cursor() if ln.foreign]
        set_hint(self.describe_foreign(foreign[0]) if foreign else None)

    def _on_drag_refused(self, line: LevelLine) -> None:
        self.status.show_error(self._refusal(line, 'drag'))

    def _on_c(self, everyone: bool = False) -> None:
        now = self.clock()
        if everyone and not self.control_others:
            # refused outright: Shift+c / Shift+cc never cancels anything without permission
            self._last_c = None
            self.status.show_error("Shift+cc refused: needs --control-others (nothing was "
                                   "cancelled)")
            return
        last = self._last_c
        if last is not None and now - last.t <= CC_WINDOW:
            self._last_c = None
            self.cancel_all(absorb=last, everyone=everyone)
            return
        batch = self.cancel_under_cursor()
        self._last_c = batch or _CancelBatch(None, [], now)
        self._last_c.t = now

    def _controllable(self, line: LevelLine) -> bool:
        return bool(line.oid) and (not line.foreign or self.control_others)

    def cancel_under_cursor(self) -> _CancelBatch | None:
        """Cancel the orders whose lines are under the cursor (``c`` / Delete)."""
        under = self.chart.lines_under_cursor()
        lines = [ln for ln in under if self._controllable(ln)]
        if not lines:
            theirs = [ln for ln in under if ln.foreign]
            if theirs:
                self.status.show_error(self._refusal(theirs[0], 'cancel'))
            else:
                self.status.open_status('no order under the cursor', clear_on_next=True)
            return None
        return self.cancel_oids([ln.oid for ln in lines])

    def cancel_all(self, absorb: _CancelBatch | None = None, everyone: bool = False) -> _CancelBatch | None:
        """Cancel every order of ours on this chart (``cc``); foreign orders are left alone.

        ``everyone`` (Shift+``cc``) also cancels other clients' orders on the symbol, when this
        session was opened with ``control_others``; without it the request is refused visibly.
        ``absorb``: the batch of the first ``c`` of a ``cc`` (orders it already cancelled
        count in this batch's ``N`` instead of showing a second group).
        """
        if everyone and not self.control_others:   # refused: no side effects at all
            self.status.show_error("Shift+cc refused: needs --control-others (nothing was "
                                   "cancelled)")
            return None
        oids = [ln.oid for ln in self.chart.lines() if ln.oid and (everyone or not ln.foreign)]
        return self.cancel_oids(oids, absorb=absorb)

    def cancel_oids(self, oids: Iterable[str], absorb: _CancelBatch | None = None) -> _CancelBatch | None:
        """Cancel ``oids`` under one status group ``cancelling N orders``.

        Each order gets a member ``cancelling order <oid[:6]>`` closed by its
        ``*_cancelled`` (or a fill/error that ends it); the group then becomes ``cancelled N
        orders``, or after :attr:`cancel_timeout` a visible timeout message.
        """
        todo = list(dict.fromkeys(oids))
        absorbed = [o for o in (absorb.oids if absorb else []) if o not in todo]
        everything = absorbed + todo
        if absorb is not None and absorb.key is not None:
            # its final/transient text is dropped by the group opened below
            self.status.close_group(absorb.key)
        if not everything:
            self.status.open_status('no orders to cancel', clear_on_next=True)
            return None
        n = len(everything)
        # SPEC §8 wording ('1 order', not '1 orders')
        key = self.status.open_status(
            f'cancelling {orders(n)}', final_msg=f'cancelled {orders(n)}', group_key=True,
            timeout=self.cancel_timeout,
        )
        members = {
            oid: self.status.open_status(f'cancelling order {oid[:6]}', group_key=key)
            for oid in everything
        }
        batch = _CancelBatch(key, everything, self.clock())
        for oid in everything:
            if oid in self._outcomes:
                batch.outcomes[oid] = self._outcomes[oid]
            else:
                self._batches.setdefault(oid, []).append(batch)
        self.status.set_final(key, batch.summary())
        todo_set = set(todo)
        to_send, done_already = [], []
        for oid in everything:
            pend = self._pending.get(oid)
            if pend is not None and pend.cancel:
                pend.cancel.append(members[oid])     # already in flight: wait for it
            elif oid in todo_set and self.chart.get_line(oid) is not None:
                self._pending.setdefault(oid, _Pending()).cancel.append(members[oid])
                to_send.append(oid)
            else:
                done_already.append(oid)             # absorbed and already confirmed
        for oid in done_already:
            members[oid]()
        for oid in to_send:
            try:
                self.book.cancel(oid)
            except Exception as err:
                log.warning('cancel %s failed: %s', oid, err)
                self._resolve_cancel(oid, 'failed')
                self.status.show_error(f'cancel {oid[:6]} failed: {_short(err)}')
        return batch

    def _record_outcome(self, oid: str, outcome: str) -> None:
        """How ``oid`` ended (or why its cancel did not happen): every cancel batch waiting on
        it updates its final message before its member closes."""
        if outcome != 'refused':
            self._outcomes[oid] = outcome
            if len(self._outcomes) > 2000:          # a day of orders: keep the newest
                for old in list(self._outcomes)[:1000]:
                    del self._outcomes[old]
        for batch in self._batches.pop(oid, []):
            batch.outcomes[oid] = outcome
            if batch.key is not None:
                self.status.set_final(batch.key, batch.summary())

    def _resolve_cancel(self, oid: str, outcome: str | None = None) -> None:
        if outcome is not None:
            self._record_outcome(oid, outcome)
        pend = self._pending.get(oid)
        if pend is None:
            return
        closers, pend.cancel = pend.cancel, []
        for close in closers:
            close()

    def _resolve_submit(self, oid: str) -> None:
        pend = self._pending.get(oid)
        if pend is None:
            return
        closers, pend.submit = pend.submit, []
        pend.modify_from = None
        for close in closers:
            close()

    def _forget(self, oid: str, outcome: str | None = None) -> None:
        """The order is over: resolve whatever waits on it, remove its line."""
        self._resolve_submit(oid)
        self._resolve_cancel(oid, outcome)
        self._pending.pop(oid, None)
        self.chart.remove_order_line(oid)

    # -- EMS messages ---------------------------------------------------------------------

    def load(self, open_orders: Iterable[Any] = (), positions: Iterable[Any] = ()) -> None:
        """Draw the EMS's start-up snapshot: open orders (any owner we watch) and positions."""
        for snap in open_orders:
            self.on_msg(snap if isinstance(snap, Status) else Status.model_validate(snap))
        for pos in positions:
            self.on_msg(pos if isinstance(pos, BrokerdPosition) else BrokerdPosition.model_validate(pos))
        self.on_trading_state(getattr(self.book, 'trading_state', None))

    def on_msg(self, msg: Status | BrokerdPosition) -> None:
        """Handle one message from the trades stream; never raises."""
        try:
            if isinstance(msg, BrokerdPosition):
                self.on_position(msg)
            elif isinstance(msg, Status):
                self.on_status(msg)
            elif isinstance(msg, TradingState):
                self.on_trading_state(msg.state, msg.scope)
        except Exception:
            log.exception('order mode failed on %r', msg)

    def on_trading_state(self, state: str | None, scope: str = '*') -> None:
        """emsd's trading state for this account (pushed when halt/reduce/resume change it):
        the bar's permanent label, and a message when it changes while we are connected."""
        before, self.trading_state = self.trading_state, state
        if before is not None and state is not None and state != before:
            who = 'cluster' if scope == '*' else f'account {scope}'
            self.status.open_status(f'trading {state} ({who})', clear_on_next=True)
        show = getattr(self.status, 'set_trading', None)
        if show is not None:
            show(state, scope)

    def on_position(self, pos: BrokerdPosition) -> None:
        """Update the position line for this chart's symbol and account."""
        if f'{pos.symbol}.{pos.broker}'.lower() != self.fqsn:
            return
        if pos.account != getattr(self.book, 'account', pos.account):
            return
        self.position = pos
        self.chart.set_position(pos.size, pos.avg_price)
        self.update_pnl()

    def pnl(self) -> tuple[float | None, float, float] | None:
        """``(unrealized, realized, fees)`` of this chart's position (unrealized is None
        without a last price or when flat); None before any position was reported."""
        pos = self.position
        if pos is None:
            return None
        last = getattr(self.chart, 'last_price', None)
        upnl = None
        if pos.size and last is not None:
            upnl = pos.size * (last - pos.avg_price)
        return upnl, pos.realized_pnl, pos.fees

    def update_pnl(self) -> None:
        """Refresh the status bar's position summary (called on positions and quotes)."""
        set_pnl = getattr(self.status, 'set_pnl', None)
        if set_pnl is None:
            return
        res = self.pnl()
        if res is None:
            return
        pos = self.position
        upnl, rpnl, fees = res
        tick = self.chart.tick_size
        cents = lambda v: round(v, 2) + 0.0  # noqa: E731  (a loss under a cent is 0.00, not -0.00)
        money = lambda v: f'{cents(v):+,.2f}'  # noqa: E731
        if pos.size:
            parts = [(f'pos {format_size(pos.size)} @ {format_price(pos.avg_price, tick)}', None)]
            if upnl is not None:
                parts.append((f'uPnL {money(upnl)}', cents(upnl)))
        else:
            parts = [('flat', None)]
        if rpnl or not pos.size:
            parts.append((f'rPnL {money(rpnl)}', cents(rpnl)))
        if fees:
            parts.append((f'fees {fees:,.2f}', None))
        set_pnl(parts)

    def _draw(self, msg: Status) -> LevelLine | None:
        """Draw a line for an order we learned about from a status (snapshot, other client)."""
        req = msg.req
        if req is None or req.symbol.lower() != self.fqsn:
            return None
        owner = msg.owner or req.owner
        foreign = owner is not None and owner != self.book.name
        live = (
            req.exec_mode == 'live'
            or st.book_side(msg.resp) == 'venue'
            or (msg.brokerd_msg or {}).get('phase') in ('pending', 'live')
        ) and req.action != 'alert'
        line = self.chart.add_order_line(
            msg.oid, req.price, req.action, 'live' if live else 'dark', req.size,
            owner=owner, foreign=foreign, movable=not foreign or self.control_others,
            on_moved=self._on_line_moved,
        )
        if foreign:
            line.on_drag_refused = self._on_drag_refused
            line.on_hover = lambda _ln: self._on_cursor()
            line.setToolTip(self.describe_foreign(line, long=True))
        return line

    def on_status(self, msg: Status) -> None:
        """React to one :class:`Status` (ours or, as a watcher, another client's)."""
        oid, resp, req = msg.oid, msg.resp, msg.req
        line = self.chart.get_line(oid)
        clear = getattr(self.status, 'clear_errors', None)
        if clear is not None:
            clear(ERROR_MIN_S)     # something new happened: old errors go

        if st.is_final(resp):
            # nothing more will come for this oid: resolve what waits on it, drop its line
            self._forget(oid, _outcome(resp))
            if st.is_error(resp):  # broker_errored: refused, failed or lost with its venue
                self._show_refusal(msg)
            elif st.is_cancelled(resp) and resp not in _CANCEL_CONFIRMS:
                reason = f': {msg.reason}' if msg.reason else ''
                self.status.show_error(short_oids(
                    f'order {oid[:6]} {resp.removeprefix(st.BROKER_PREFIX)}{reason}'))
            elif resp == st.ALERT_TRIGGERED:
                self._on_alert(msg)
            return
        if st.is_error(resp):  # a refused request; the order (if any) is unchanged
            self._on_error(msg, line)
            return
        if resp == st.BROKER_FILLED:
            self._on_fill(msg, line)
            return

        # the order is (still) open: make sure it is drawn, up to date and labelled
        if line is None:
            line = self._draw(msg)
            if line is None:
                return
        elif req is not None and not line.moving:
            if req.price != line.price:
                line.set_price(req.price)
            if req.size and req.size != line.size:
                line.set_size(req.size)
        if st.book_side(resp) == 'venue':
            if line.action != 'alert' and line.exec_mode != 'live':
                line.set_style(exec_mode='live')
        line.confirm()
        self._resolve_submit(oid)

    def _on_fill(self, msg: Status, line: LevelLine | None) -> None:
        details = msg.brokerd_msg or {}
        price = details.get('price')
        if price is None:
            return
        action = details.get('action') or (msg.req.action if msg.req else None)
        if action not in ('buy', 'sell'):
            return
        t = details.get('broker_time') or msg.time_ns / 1e9
        own = self._is_own(msg)
        self.chart.add_fill_arrow(action, float(t), float(price), foreign=not own)
        pend = self._pending.get(msg.oid)
        if pend is not None and pend.modify_from is None:
            self._resolve_submit(msg.oid)
        size = details.get('size', 0)
        tick = self.chart.tick_size
        what = f'{action} {format_size(size)} @ {format_price(price, tick)}'
        if own:
            self.status.open_status(f'filled {what} ({msg.oid[:6]})', clear_on_next=True,
                                    level='fill', keep_transient=True)
        else:
            owner = msg.owner or (msg.req.owner if msg.req else None) or '?'
            self.status.open_status(f'{owner} filled {what}', clear_on_next=True, level='other',
                                    keep_transient=True)
            return
        self.notify(f'{action} filled', f'{format_size(size)} {self.fqsn} @ {format_price(price, tick)}')

    def _on_alert(self, msg: Status) -> None:
        req = msg.req
        price = msg.trigger_price if msg.trigger_price is not None else (req.price if req else None)
        if price is None:
            return
        self.chart.add_alert_arrow(msg.time_ns / 1e9, float(price))
        level = format_price(req.price if req else price, self.chart.tick_size)
        self.status.open_status(f'alert {level} triggered', clear_on_next=True)
        if self._is_own(msg):
            self.notify('alert triggered', f'{self.fqsn} crossed {level}')

    def _is_own(self, msg: Status) -> bool:
        owner = msg.owner or (msg.req.owner if msg.req else None)
        return owner is None or owner == self.book.name

    def _on_error(self, msg: Status, line: LevelLine | None) -> None:
        """A refused request (``error``, never final): undo what the request changed locally."""
        oid = msg.oid
        pend = self._pending.get(oid)
        # a refused submission: the line never became an order
        if line is not None and not line.confirmed and pend is not None and pend.submit \
                and pend.modify_from is None:
            self._forget(oid)
        elif line is not None and pend is not None and pend.modify_from is not None:
            # a refused modify: put the line back where the EMS still has it
            old = pend.modify_from
            self._resolve_submit(oid)
            line.set_price(old)
            line.confirm()
            order = self.book.orders.get(oid)
            if order is not None and order.price != old:
                self.book.orders[oid] = order.model_copy(update={'price': old})
        elif pend is not None and pend.cancel:
            # cancelling something the EMS no longer holds (or may not touch)
            self._resolve_cancel(oid, 'refused')
            if line is not None and not line.foreign:
                self._forget(oid)
        else:
            self._resolve_submit(oid)
        self._show_refusal(msg)

    def _show_refusal(self, msg: Status) -> None:
        oid = msg.oid
        reason = msg.reason or (msg.brokerd_msg or {}).get('reason') or 'refused'
        what = f'{msg.resp} {oid[:6]}' if oid and oid != '?' else msg.resp
        self.status.show_error(short_oids(f'{what}: {reason}'))


_OID_RE = re.compile(r'\b([0-9a-f]{6})[0-9a-f]{10,}\b|\b([0-9a-f]{6})[0-9a-f-]{30,}\b')


def short_oids(text: str) -> str:
    """Shorten every full oid (32 hex digits, or a dashed uuid) in ``text`` to its first 6
    characters, the form used everywhere in the chart."""
    return _OID_RE.sub(lambda m: m.group(1) or m.group(2), text)


def _outcome(resp: str) -> str:
    """How a final status ended an order, in a cancel group's words."""
    if resp in _CANCEL_CONFIRMS:
        return 'cancelled'
    if st.is_filled(resp):
        return 'filled'
    if resp == st.ALERT_TRIGGERED:
        return 'triggered'
    if st.is_error(resp):
        return 'failed'
    return resp.removeprefix(st.BROKER_PREFIX)


def orders(n: int) -> str:
    """``1 order``, ``3 orders``: counts in status messages read as English."""
    return f'{n} order' if n == 1 else f'{n} orders'


def _default_lot(size: float) -> float:
    """A lot size when the symbol gives none: 1, or the launch size's last decimal."""
    from ._lines import tick_decimals
    dec = tick_decimals(float(size)) if size != int(size) else 0
    return 10.0 ** -dec


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return short_oids(text[0]) if text else type(err).__name__


class _FocusFilter(QtCore.QObject):
    """Drop held keys when the chart loses focus (their release would never arrive)."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        super().__init__()
        self._on_lost = on_lost

    def eventFilter(self, obj, ev) -> bool:  # noqa: N802
        if ev.type() in (QtCore.QEvent.FocusOut, QtCore.QEvent.WindowDeactivate):
            self._on_lost()
        return False
