"""The chart window's status bar: short-lived statuses, status *groups* and the mode label.

Order mode talks to the trader through this bar: ``submitting dark-buy`` becomes ``submitted
dark-buy`` once the EMS acks, and a cancel of several lines shows ``cancelling 3 orders`` with
one member per order until every cancel is confirmed, then ``cancelled 3 orders``.

The logic lives in :class:`StatusModel`, which knows nothing about Qt so it can be tested
without a display (time is injected, nothing sleeps). :class:`StatusBar` is the Qt widget: it
renders the model, drives group/status timeouts with a ``QTimer`` and shows the permanent
mode and info labels on the right.

Semantics of :meth:`StatusModel.open_status` (``msg, final_msg, clear_on_next, group_key,
timeout, timeout_msg``):

- *plain* (``group_key=None``): ``msg`` is shown and a **closer** is returned. Closing removes
  the message and, when ``final_msg`` was given, puts ``final_msg`` in its place; a final
  message stays until the next status is opened. Closers are idempotent.
- ``clear_on_next=True``: the message disappears when the next status opens, even if nobody
  closes it (its closer still shows ``final_msg`` later, appended at the end).
- *group* (``group_key=True``): ``msg`` is shown and the group's **key** (a ``str``) is
  returned. Statuses opened with ``group_key=<key>`` are its *members*, rendered after the
  group message (``cancelling 3 orders | cancelling order 1a2b3c``); each returns a closer.
  When the last open member closes, the whole group is replaced by its ``final_msg`` (or
  vanishes without one). A group that never had a member does not resolve on its own: close
  it with :meth:`StatusModel.close_group` (or let its ``timeout`` fire).
- ``timeout`` (seconds, groups and plain statuses): if still unresolved at the deadline, the
  entry is replaced by ``timeout_msg`` (default ``cancelling 3 orders: timed out, 1 of 3
  unconfirmed``) at ``warn`` level, which stays until the next status. Late closers are no-ops.
- Every ``open_status`` call first drops the transient messages: final messages, timeout
  messages, errors and ``clear_on_next`` statuses. Several groups may be open at once; entries
  are shown oldest first, newest last.
"""
from __future__ import annotations

import functools
import html
import itertools
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from PyQt5 import QtCore, QtGui, QtWidgets

from ..log import get_logger

log = get_logger(__name__)

#: Accepted values for ``level``: ``warn`` is used for timeouts, ``error`` for failures,
#: ``fill`` for this client's fills and ``other`` for other clients' fills.
LEVELS = ('info', 'warn', 'error', 'fill', 'other')
#: The message area never gets narrower than this (pixels), however narrow the window.
MSG_MIN_WIDTH = 110
#: Below this width (pixels) an error takes the position summary's place until it clears.
NARROW_WIDTH = 820
#: Seconds an error message stays at most (it also clears on the next EMS status).
ERROR_TTL = 30.0
#: Separator between a group message and its members (and between members).
MEMBER_SEP = ' | '
#: Separator between independent entries (plain statuses, groups, final messages).
ENTRY_SEP = '  ·  '

Closer = Callable[[], bool]


def _noop_closer() -> bool:
    """Closer handed out for members of an already finished group: nothing to do."""
    return False


class Segment(NamedTuple):
    """One piece of rendered status text, so a view can colour it by ``level`` and ``kind``.

    ``kind`` is ``'status'`` for a plain/group/final message, ``'member'`` for a group member
    and ``'more'`` for the ``+N more`` marker that stands in for members beyond the limit.
    """
    text: str
    level: str = 'info'
    kind: str = 'status'
    #: ``clock()`` time at which this (error) message clears by itself, if it does
    expires: float | None = None


@dataclass(eq=False)
class _Entry:
    """A displayed status (identity compared: two equal texts are still two entries)."""
    text: str
    level: str = 'info'
    transient: bool = False        # dropped by the next open_status()
    live: bool = False             # still waiting for its closer
    final_msg: str | None = None
    deadline: float | None = None
    timeout_msg: str | None = None
    opened_at: float = 0.0
    expires: float | None = None   # errors clear by themselves at this time
    sticky: bool = False           # a lasting state (lost connection): only the next status


@dataclass(eq=False)
class _Group(_Entry):
    """A status group: its own message plus the messages of its open members."""
    key: str = ''
    members: dict[int, str] = field(default_factory=dict)
    opened: int = 0                # members ever opened (the "of N" in timeout messages)


class StatusModel:
    """Qt-free state of the status bar (see the module docstring for the semantics).

    Exists so the group/closer/timeout rules can be unit tested without pixels and reused by
    any view. ``clock`` returns monotonic seconds and is used for ``timeout`` deadlines;
    inject a fake one in tests, or pass ``now`` to :meth:`expire`. Views call
    :meth:`subscribe` to hear about every change. ``max_members`` caps how many members of a
    group are rendered (the rest become ``+N more``) so a cancel-all of 40 lines stays
    readable.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_members: int = 4,
        error_ttl: float | None = ERROR_TTL,
    ) -> None:
        self.clock = clock
        self.max_members = max_members
        #: errors clear by themselves after this many seconds (None: only on the next status)
        self.error_ttl = error_ttl
        self._entries: list[_Entry] = []
        self._groups: dict[str, _Group] = {}
        self._done_groups: set[str] = set()
        self._member_ids = itertools.count()
        self._listeners: list[Callable[[], None]] = []

    # -- observation ------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every change, so a view can re-render itself."""
        self._listeners.append(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback`` (a view going away); unknown callbacks are ignored."""
        try:
            self._listeners.remove(callback)
        except ValueError:
            pass

    def _changed(self) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:
                # a broken view must not kill the order-mode task that closed a status
                log.exception('status bar listener %r failed', callback)

    # -- opening ----------------------------------------------------------------------------

    def open_status(
        self,
        msg: str,
        final_msg: str | None = None,
        clear_on_next: bool = False,
        group_key: str | bool | None = None,
        timeout: float | None = None,
        timeout_msg: str | None = None,
        *,
        level: str = 'info',
        keep_transient: bool = False,
        sticky: bool = False,
    ) -> Closer | str:
        """Show ``msg`` and return its closer, or the new group's key for ``group_key=True``.

        ``sticky`` (errors): a lasting state such as a lost connection; it neither times out
        nor clears on :meth:`clear_errors`, only when the next status opens.

        ``keep_transient`` (plain statuses only): do not drop the transient messages shown
        now, e.g. a fill notice arriving right after ``submitted live-buy`` shows beside it.

        This is the single entry point order mode uses to report progress, so every kind of
        status (plain, clear-on-next, group, group member, error) goes through it. See the
        module docstring for the rules. ``level='error'`` statuses always clear on the next
        status. Members take no ``final_msg``/``timeout``/``clear_on_next`` (the group owns
        those); a member of a group that already finished is not shown and gets a no-op
        closer, so a late cancel confirmation can't raise in the caller.

        Raises ``ValueError`` for invalid combinations, ``KeyError`` for a group key this
        model never handed out, ``TypeError`` for a ``group_key`` that is neither.
        """
        if level not in LEVELS:
            raise ValueError(f'level must be one of {LEVELS}, not {level!r}')
        if timeout is not None and timeout < 0:
            raise ValueError(f'timeout must be >= 0, not {timeout!r}')
        if group_key is False:          # accepted for callers using the old bool default
            group_key = None

        if group_key is True:
            if clear_on_next:
                raise ValueError('a status group cannot be clear_on_next')
            self._drop_transient()
            return self._open_group(msg, level, final_msg, timeout, timeout_msg)

        if isinstance(group_key, str):
            if final_msg is not None or clear_on_next or timeout is not None or timeout_msg:
                raise ValueError(
                    'group members take no final_msg/clear_on_next/timeout: the group owns them')
            group = self._groups.get(group_key)
            if group is None:
                if group_key in self._done_groups:
                    log.debug('status group %s already finished; dropping %r', group_key, msg)
                    return _noop_closer
                raise KeyError(f'unknown status group {group_key!r}')
            self._drop_transient()
            return self._open_member(group, msg)

        if group_key is not None:
            raise TypeError(f'group_key must be None, True or a group key, not {group_key!r}')

        if not keep_transient:
            self._drop_transient()
        entry = _Entry(
            msg,
            level=level,
            transient=clear_on_next or level == 'error',
            live=True,
            final_msg=final_msg,
            deadline=self._deadline(timeout),
            timeout_msg=timeout_msg,
            opened_at=self.clock(),
            expires=(self.clock() + self.error_ttl
                     if level == 'error' and self.error_ttl is not None and not sticky
                     else None),
            sticky=sticky,
        )
        self._entries.append(entry)
        self._changed()
        return self._plain_closer(entry)

    def clear_errors(self, min_age: float = 0.0) -> bool:
        """Drop the error messages shown for at least ``min_age`` seconds.

        Order mode calls this on every EMS status: an error stays until something new
        happens (after a moment to read it), never for minutes. Returns whether anything
        changed.
        """
        now = self.clock()
        kept = [e for e in self._entries
                if not (e.level == 'error' and not e.sticky and now - e.opened_at >= min_age)]
        if len(kept) == len(self._entries):
            return False
        self._entries = kept
        self._changed()
        return True

    def show_error(self, msg: str, sticky: bool = False) -> Closer:
        """Show ``msg`` as an error (red in the widget) until the next status, its closer or
        :attr:`error_ttl` seconds (shown as a countdown); ``sticky`` errors do not time out.

        Exists so failures (rejected orders, lost connections) stand out from progress text
        without the caller having to remember the flags.
        """
        closer = self.open_status(msg, level='error', sticky=sticky)
        assert callable(closer)
        return closer

    def _deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else self.clock() + timeout

    def _open_group(
        self,
        msg: str,
        level: str,
        final_msg: str | None,
        timeout: float | None,
        timeout_msg: str | None,
    ) -> str:
        key = uuid.uuid4().hex
        group = _Group(
            msg,
            level=level,
            live=True,
            final_msg=final_msg,
            deadline=self._deadline(timeout),
            timeout_msg=timeout_msg,
            key=key,
        )
        self._groups[key] = group
        self._entries.append(group)
        self._changed()
        return key

    def _open_member(self, group: _Group, msg: str) -> Closer:
        member_id = next(self._member_ids)
        group.members[member_id] = msg
        group.opened += 1
        self._changed()

        def close_member() -> bool:
            """Close this member; the last one to close resolves the group. Idempotent."""
            if not group.live or member_id not in group.members:
                return False
            del group.members[member_id]
            if not group.members:
                self._resolve_group(group, group.final_msg, 'info')
            self._changed()
            return True

        return close_member

    def _plain_closer(self, entry: _Entry) -> Closer:
        def close_status() -> bool:
            """Remove the status, showing its ``final_msg`` if any. Idempotent."""
            if not entry.live:
                return False
            entry.live = False
            entry.deadline = None
            self._replace(entry, entry.final_msg, 'info')
            self._changed()
            return True

        return close_status

    # -- closing ----------------------------------------------------------------------------

    def set_final(self, key: str, final_msg: str | None) -> bool:
        """Change what group ``key`` will say once resolved (e.g. once outcomes are known:
        ``cancelled 2, 1 filled``). Returns ``False`` if the group already finished."""
        group = self._groups.get(key)
        if group is None:
            return False
        group.final_msg = final_msg
        return True

    def close_group(self, key: str) -> bool:
        """Resolve group ``key`` now, showing its ``final_msg``; open members are dropped.

        Exists for groups that may never get a member (nothing to cancel after all) and for
        callers that give up waiting. Returns ``False`` if the group already finished.
        """
        group = self._groups.get(key)
        if group is None:
            return False
        self._resolve_group(group, group.final_msg, 'info')
        self._changed()
        return True

    def expire(self, now: float | None = None) -> bool:
        """Replace every entry whose deadline is ``<= now`` by its timeout message.

        Exists so a cancel that never gets an answer can't leave the bar stuck forever; the
        widget calls it from a timer, tests call it with explicit times. ``now`` defaults to
        ``clock()``. Returns whether anything changed.
        """
        now = self.clock() if now is None else now
        stale = [e for e in self._entries if e.expires is not None and e.expires <= now]
        if stale:
            self._entries = [e for e in self._entries if e not in stale]
        expired = [
            e for e in self._entries
            if e.live and e.deadline is not None and e.deadline <= now
        ]
        for entry in expired:
            text = entry.timeout_msg or self._default_timeout_msg(entry)
            if isinstance(entry, _Group):
                log.warning('status group timed out: %s', text)
                self._resolve_group(entry, text, 'warn')
            else:
                log.warning('status timed out: %s', text)
                entry.live = False
                entry.deadline = None
                self._replace(entry, text, 'warn')
        if expired or stale:
            self._changed()
        return bool(expired or stale)

    def next_deadline(self) -> float | None:
        """The earliest pending deadline (in ``clock()`` time), so a view knows when to wake."""
        deadlines = [
            e.deadline for e in self._entries if e.live and e.deadline is not None
        ] + [e.expires for e in self._entries if e.expires is not None]
        return min(deadlines, default=None)

    def clear(self) -> None:
        """Drop everything shown; outstanding closers become no-ops (e.g. on a mode reset)."""
        for entry in self._entries:
            entry.live = False
            entry.deadline = None
        self._done_groups.update(self._groups)
        self._groups.clear()
        self._entries.clear()
        self._changed()

    @staticmethod
    def _default_timeout_msg(entry: _Entry) -> str:
        if isinstance(entry, _Group) and entry.opened:
            return (
                f'{entry.text}: timed out, {len(entry.members)} of {entry.opened} unconfirmed'
            )
        return f'{entry.text}: timed out'

    def _resolve_group(self, group: _Group, text: str | None, level: str) -> None:
        group.live = False
        group.deadline = None
        group.members.clear()
        self._groups.pop(group.key, None)
        self._done_groups.add(group.key)
        self._replace(group, text, level)

    def _replace(self, entry: _Entry, text: str | None, level: str) -> None:
        """Put a transient ``text`` where ``entry`` is shown (appended if it's gone)."""
        try:
            index = self._entries.index(entry)
        except ValueError:
            index = None
        if text is None:
            if index is not None:
                del self._entries[index]
            return
        note = _Entry(text, level=level, transient=True)
        if index is None:
            self._entries.append(note)
        else:
            self._entries[index] = note

    def _drop_transient(self) -> None:
        kept = []
        for entry in self._entries:
            if entry.transient:
                entry.deadline = None   # no timeout for something no longer shown
            else:
                kept.append(entry)
        self._entries = kept

    # -- reading ----------------------------------------------------------------------------

    def segments(self, max_members: int | None = None) -> list[list[Segment]]:
        """What to show, one list of segments per entry, oldest entry first.

        Exists so views can style each piece (group message vs. members vs. errors) while
        the model stays the single source of truth for the text. ``max_members`` overrides
        the model's cap (a narrow view asks for fewer).
        """
        limit = self.max_members if max_members is None else max_members
        out: list[list[Segment]] = []
        for entry in self._entries:
            segs = [Segment(entry.text, entry.level, 'status', entry.expires)]
            if isinstance(entry, _Group) and entry.live:
                members = list(entry.members.values())
                shown = members[:max(0, limit)]
                segs.extend(Segment(m, entry.level, 'member') for m in shown)
                if len(members) > len(shown):
                    segs.append(Segment(f'+{len(members) - len(shown)} more', 'info', 'more'))
            out.append(segs)
        return out

    def text(self) -> str:
        """The whole bar as plain text (for tests, logs and tooltips)."""
        return render_plain(self.segments())

    @property
    def open_groups(self) -> tuple[str, ...]:
        """Keys of the groups still waiting for members, oldest first."""
        return tuple(self._groups)

    def pending(self, key: str) -> int:
        """How many members of group ``key`` are still open (0 once it finished)."""
        group = self._groups.get(key)
        return len(group.members) if group else 0


def render_plain(entries: list[list[Segment]]) -> str:
    """Join rendered entries into the bar's plain text form."""
    return ENTRY_SEP.join(MEMBER_SEP.join(s.text for s in segs) for segs in entries)


# -- Qt view ---------------------------------------------------------------------------------

_BG = '#0d0d10'
_FG = '#d2d2d8'
_DIM = '#8a8a96'
_RULE = '#2a2a31'
_SEP_COLOUR = '#5e5e6a'
_LEVEL_COLOURS = {'info': _FG, 'warn': '#e8a33c', 'error': '#ff5f5f',
                  'fill': '#5ad1ff', 'other': '#7d8596', 'hint': '#e6c642'}
_PNL_UP, _PNL_DOWN = '#3ccf72', '#ef5350'
_MODE_COLOURS = {'buy': '#3ccf72', 'sell': '#ef5350', 'alert': '#e6c642', None: '#a6a6b0'}
#: emsd's trading states worth a glance (background, text); ``active`` shows nothing
_TRADING_COLOURS = {'halted': ('#c62828', '#ffffff'), 'reducing': ('#e8a33c', '#101014')}

_STYLE = f"""
QStatusBar#piker_statusbar {{
    background-color: {_BG};
    color: {_FG};
    border-top: 1px solid {_RULE};
}}
QStatusBar#piker_statusbar::item {{ border: none; }}
QStatusBar#piker_statusbar QLabel {{
    background: transparent;
    color: {_FG};
    padding: 2px 8px;
}}
QStatusBar#piker_statusbar QLabel#status_info {{
    color: {_DIM};
    border-left: 1px solid {_RULE};
}}
"""


def _mode_kind(text: str) -> str | None:
    """Which order action a mode label names (for its colour): buy, sell, alert or None."""
    lowered = text.lower()
    for kind in ('buy', 'sell', 'alert'):
        if kind in lowered:
            return kind
    return None


def _mono_font() -> QtGui.QFont:
    """The platform's fixed-pitch font, falling back to any monospace family.

    Some platforms (e.g. ``offscreen``) report a proportional font as the "fixed" one.
    """
    font = QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.FixedFont)
    if not QtGui.QFontInfo(font).fixedPitch():
        size = font.pointSizeF()
        font = QtGui.QFont('monospace')
        font.setStyleHint(QtGui.QFont.TypeWriter)
        if size > 0:
            font.setPointSizeF(size)
    return font


class FitLabel(QtWidgets.QLabel):
    """A label showing as many of its parts as fit its width (the rest become ``…``; the
    whole text is in the tooltip), so a narrow window shrinks it instead of being held wide.

    ``parts`` are ``(text, colour)`` pairs joined by ``sep``, shown in order; when they do
    not all fit, the least important go first (``priority``: part indices, most important
    first; default: left to right). With ``keep_top`` the most important part is never
    dropped (it sets the minimum width); otherwise the minimum is ``min_width`` and the one
    part left is elided.
    """

    def __init__(self, parent: QtWidgets.QWidget | None = None, sep: str = ' · ',
                 min_width: int = 24, keep_top: bool = False) -> None:
        super().__init__(parent)
        self.setTextFormat(QtCore.Qt.RichText)
        self._parts: list[tuple[str, str | None]] = []
        self._priority: list[int] = []
        self._sep = sep
        self._min_width = min_width
        self._keep_top = keep_top
        self.setSizePolicy(QtWidgets.QSizePolicy.Preferred, QtWidgets.QSizePolicy.Preferred)

    def set_parts(self, parts: list[tuple[str, str | None]],
                  priority: list[int] | None = None) -> None:
        self._parts = list(parts)
        self._priority = list(priority) if priority is not None else list(range(len(parts)))
        self.updateGeometry()
        self._fit()

    def plain(self) -> str:
        """The whole text, as plain text."""
        return self._sep.join(t for t, _ in self._parts)

    def shown(self) -> str:
        """What is visible now, as plain text."""
        return QtGui.QTextDocumentFragment.fromHtml(self.text()).toPlainText()

    def _margins(self) -> int:
        m = self.contentsMargins()
        return m.left() + m.right() + 2 * self.margin() + 20   # + the style sheet padding

    def sizeHint(self) -> QtCore.QSize:  # noqa: N802
        h = super().sizeHint().height()
        return QtCore.QSize(self.fontMetrics().horizontalAdvance(self.plain()) + self._margins(), h)

    def minimumSizeHint(self) -> QtCore.QSize:  # noqa: N802
        w = self._min_width
        if self._keep_top and self._parts:
            top = self._parts[self._priority[0]][0]
            w = max(w, self.fontMetrics().horizontalAdvance(top) + self._margins())
        return QtCore.QSize(w, super().minimumSizeHint().height())

    def resizeEvent(self, ev: QtGui.QResizeEvent) -> None:  # noqa: N802
        super().resizeEvent(ev)
        self._fit()

    def _fit(self) -> None:
        fm = self.fontMetrics()
        avail = self.width() - self._margins()
        parts = self._parts

        def text_of(keep: set[int]) -> str:
            t = self._sep.join(parts[i][0] for i in range(len(parts)) if i in keep)
            return t + (' …' if len(keep) < len(parts) else '')

        k = len(parts)
        while k > 1 and fm.horizontalAdvance(text_of(set(self._priority[:k]))) > avail:
            k -= 1
        keep = set(self._priority[:k])
        shown = [parts[i] for i in range(len(parts)) if i in keep]
        if len(shown) == 1 and fm.horizontalAdvance(shown[0][0]) > avail:
            shown[0] = (fm.elidedText(shown[0][0], QtCore.Qt.ElideRight, max(avail, 0)),
                        shown[0][1])
        sep = f'<span style="color:{_SEP_COLOUR}">{html.escape(self._sep)}</span>'
        body = sep.join(
            f'<span style="color:{c or _FG}">{html.escape(t)}</span>' for t, c in shown)
        if len(shown) < len(parts):
            body += f'<span style="color:{_SEP_COLOUR}"> …</span>'
        self.setText(f'<span style="white-space:pre">{body}</span>')
        clipped = len(shown) < len(parts) or (shown and shown[0][0] not in self.plain())
        self.setToolTip(self.plain() if clipped else '')


class StatusBar(QtWidgets.QStatusBar):
    """The chart window's status bar: :class:`StatusModel` messages plus mode/info labels.

    Exists so order mode has one place to report progress in a dark-theme-friendly way:
    messages on the left (errors red, timeouts amber, group members dimmed, the oldest
    entries elided when the bar is too narrow), the connection/account info and the current
    interaction mode (coloured like the order lines: buy green, sell red, alert yellow)
    permanently on the right. Deadlines from ``timeout=`` are driven by a single-shot
    ``QTimer``, so with trio in Qt guest mode nothing needs a task of its own.
    """

    def __init__(
        self,
        parent: QtWidgets.QWidget | None = None,
        *,
        model: StatusModel | None = None,
    ) -> None:
        super().__init__(parent)
        self.model = model if model is not None else StatusModel()
        self.setObjectName('piker_statusbar')
        self.setSizeGripEnabled(False)
        self.setStyleSheet(_STYLE)

        font = _mono_font()
        self.setFont(font)

        self._msg_label = QtWidgets.QLabel(self)
        self._msg_label.setObjectName('status_msgs')
        self._msg_label.setTextFormat(QtCore.Qt.RichText)
        self._msg_label.setSizePolicy(
            QtWidgets.QSizePolicy.Ignored, QtWidgets.QSizePolicy.Preferred)
        # messages (errors!) keep a readable minimum even in a narrow window
        self._msg_label.setMinimumWidth(MSG_MIN_WIDTH)
        self.addWidget(self._msg_label, 1)
        self._msg_label.installEventFilter(self)   # re-fit the messages when it resizes

        #: what the order under the mouse is and what you may do with it (other clients'),
        #: shown as the newest entry of the message area while hovering
        self._hint = ''

        #: emsd's trading state when it is not ``active`` (white on red: halted, amber: reducing)
        self._trading_label = QtWidgets.QLabel(self)
        self._trading_label.setObjectName('status_trading')
        self._trading_label.hide()
        self.addPermanentWidget(self._trading_label)

        self._pnl_label = FitLabel(self, keep_top=True)
        self._pnl_label.setObjectName('status_pnl')
        self._pnl_label.hide()
        self._pnl_plain = ''
        self.addPermanentWidget(self._pnl_label)

        self._info_label = FitLabel(self, min_width=0)
        self._info_label.setObjectName('status_info')
        self._info_label.hide()
        self.addPermanentWidget(self._info_label)

        #: the order size field (``size [2]``), shown next to the mode once order mode is on
        self.size_box = QtWidgets.QDoubleSpinBox(self)
        self.size_box.setObjectName('status_size')
        self.size_box.setPrefix('size ')
        self.size_box.setRange(0, 1e12)
        self.size_box.setKeyboardTracking(False)     # apply on Enter / focus out / arrows
        self.size_box.setFocusPolicy(QtCore.Qt.ClickFocus)
        self.size_box.setButtonSymbols(QtWidgets.QAbstractSpinBox.NoButtons)
        self.size_box.setToolTip('order size for f/d: type a size, or +/- on the chart '
                                 'to step by the lot size')
        self.size_box.setStyleSheet(
            f'QDoubleSpinBox {{ background: #16161b; color: {_FG}; border: 1px solid {_RULE};'
            f' padding: 1px 4px; }}')
        self.size_box.hide()
        self.addPermanentWidget(self.size_box)

        self._mode_label = QtWidgets.QLabel(self)
        self._mode_label.setObjectName('status_mode')
        self.addPermanentWidget(self._mode_label)
        # style sheet rules on the labels stop font inheritance, so set it on each one
        for label in (self._msg_label, self._pnl_label, self._info_label, self._mode_label,
                      self.size_box, self._trading_label):
            label.setFont(font)

        #: re-renders once a second while an error shows its countdown
        self._tick = QtCore.QTimer(self)
        self._tick.setInterval(1000)
        self._tick.timeout.connect(self._render)

        self._timer = QtCore.QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setTimerType(QtCore.Qt.PreciseTimer)
        self._timer.timeout.connect(self._on_deadline)

        # wide enough for the widest mode from the start, so switching modes never shifts
        # the layout (or clips the label before a relayout)
        # (measured as styled: bold live modes, padding and border included)
        widest = 0
        for t in ('mode: live-sell', 'mode: dark-sell', 'mode: alert', 'mode: view'):
            self.set_mode(t)
            self._mode_label.ensurePolished()
            widest = max(widest, self._mode_label.sizeHint().width())
        self._mode_label.setMinimumWidth(widest)

        self.model.subscribe(self._refresh)
        # a model may outlive its view: stop rendering into deleted labels
        self.destroyed.connect(functools.partial(self.model.unsubscribe, self._refresh))
        # the spin box's size hint is as wide as its 1e12 maximum: a sensible width instead
        self.size_box.setFixedWidth(
            QtGui.QFontMetrics(font).horizontalAdvance('size 999.99') + 12)
        self.set_mode('mode: view')
        self._refresh()

    # -- API --------------------------------------------------------------------------------

    def open_status(
        self,
        msg: str,
        final_msg: str | None = None,
        clear_on_next: bool = False,
        group_key: str | bool | None = None,
        timeout: float | None = None,
        timeout_msg: str | None = None,
        *,
        level: str = 'info',
        keep_transient: bool = False,
        sticky: bool = False,
    ) -> Closer | str:
        """Same as :meth:`StatusModel.open_status`; the bar re-renders on every change."""
        return self.model.open_status(
            msg, final_msg, clear_on_next, group_key, timeout, timeout_msg, level=level,
            keep_transient=keep_transient, sticky=sticky)

    def show_error(self, msg: str, sticky: bool = False) -> Closer:
        """Show ``msg`` in red until the next status (see :meth:`StatusModel.show_error`)."""
        return self.model.show_error(msg, sticky=sticky)

    def set_final(self, key: str, final_msg: str | None) -> bool:
        """Change a group's final message (see :meth:`StatusModel.set_final`)."""
        return self.model.set_final(key, final_msg)

    def close_group(self, key: str) -> bool:
        """Resolve a group now (see :meth:`StatusModel.close_group`)."""
        return self.model.close_group(key)

    def set_mode(self, text: str) -> None:
        """Show the interaction mode (``mode: view``, ``mode: live-sell``, ...) on the right.

        The label is coloured like the matching order lines so the trader sees at a glance
        what a click would do; ``live`` modes are bold (live orders go to the broker).
        """
        colour = _MODE_COLOURS[_mode_kind(text)]
        weight = 'bold' if 'live' in text.lower() else 'normal'
        self._mode_label.setStyleSheet(
            f'color: {colour}; font-weight: {weight}; padding: 2px 10px;'
            f' border-left: 1px solid {_RULE};'
        )
        self._mode_label.setText(text)

    def set_info(self, text: str | None) -> None:
        """Show connection/account info (e.g. ``paper · ib.algo``) left of the mode label.

        An empty text hides the label so it takes no space.
        """
        self._info_label.set_parts([(t, _DIM) for t in (text or '').split(' · ') if t])
        self._info_label.setVisible(bool(text))
        self._mode_label.setToolTip(text or '')
        self._place_pnl()

    def set_trading(self, state: str | None, scope: str = '*') -> None:
        """Show emsd's trading state for this account: ``HALTED`` white on red, ``REDUCING``
        on amber (``scope`` says whether the cluster or the account set it); ``active`` or
        ``None`` (unknown: order mode is off) hides the label."""
        colours = _TRADING_COLOURS.get(state or '')
        if colours is None:
            self._trading_label.hide()
            self._trading_label.setText('')
            return
        bg, fg = colours
        self._trading_label.setStyleSheet(
            f'background: {bg}; color: {fg}; font-weight: bold; padding: 2px 10px;')
        self._trading_label.setText(f'TRADING {state.upper()}')
        self._trading_label.setToolTip(
            f"{'the whole cluster' if scope == '*' else 'this account'} is {state}: "
            f"an admin's `piker resume` trades again")
        self._trading_label.show()

    def trading_text(self) -> str:
        """The trading state label ('' while trading is active or unknown)."""
        return '' if self._trading_label.isHidden() else self._trading_label.text()

    def set_pnl(self, parts: list[tuple[str, float | None]] | None) -> None:
        """Show the position summary (``pos 2 @ 100.05 · uPnL +1.20 · rPnL -0.40 ·
        fees 0.10``) left of the info label; ``None`` hides it.

        ``parts`` are ``(text, value)`` pairs: a value > 0 is drawn green, < 0 red, ``None``
        or 0 in the normal colour.
        """
        if not parts:
            self._pnl_plain = ''
            self._pnl_label.set_parts([])
            self._place_pnl()
            return
        self._pnl_plain = ' · '.join(t for t, _ in parts)
        # narrow: the PnL numbers outlast "pos 2 @ 100.05" (the position line shows that)
        priority = sorted(range(len(parts)), key=lambda i: (parts[i][1] is None, i))
        self._pnl_label.set_parts([
            (text, None if not value else (_PNL_UP if value > 0 else _PNL_DOWN))
            for text, value in parts], priority)
        self._place_pnl()

    def _place_pnl(self) -> None:
        """Show the position summary, except while an error needs its room in a narrow bar
        (the error clears within :data:`ERROR_TTL`, then the summary is back)."""
        error = any(seg.level == 'error' for segs in self.model.segments() for seg in segs)
        narrow = self.width() < NARROW_WIDTH
        want = bool(self._pnl_plain) and not (error and narrow)
        if self._pnl_label.isVisible() != want:
            self._pnl_label.setVisible(want)
        # the account/connection info gives way in a narrow bar (it is in the mode's tooltip)
        info = bool(self._info_label.plain()) and not narrow
        if self._info_label.isVisible() != info:
            self._info_label.setVisible(info)

    def set_size(self, size: float, lot: float) -> None:
        """Show the order size field with ``size``, stepping by ``lot``."""
        from ._lines import tick_decimals
        box = self.size_box
        box.blockSignals(True)
        try:
            box.setDecimals(tick_decimals(lot))
            box.setSingleStep(lot)
            box.setMinimum(lot)
            box.setValue(size)
        finally:
            box.blockSignals(False)
        box.show()

    def set_hint(self, text: str | None) -> None:
        """Show what the order under the mouse is (``bot's dark buy 3 @ 100.00: view
        only``); ``None`` hides it."""
        text = text or ''
        if text != self._hint:
            self._hint = text
            self._render()

    def hint_text(self) -> str:
        """The hover hint ('' when hidden)."""
        return self._hint

    def size_text(self) -> str:
        """The size field as shown (``size 2``), '' while hidden."""
        return self.size_box.text() if self.size_box.isVisible() else ''

    def pnl_text(self) -> str:
        """The position summary as plain text ('' when hidden)."""
        return self._pnl_plain

    def text(self) -> str:
        """The messages currently shown, as plain text."""
        return self.model.text()

    def mode_text(self) -> str:
        """The mode label's text."""
        return self._mode_label.text()

    def info_text(self) -> str:
        """The info label's text (also while a narrow bar hides it; '' when unset)."""
        return self._info_label.plain()

    # -- rendering --------------------------------------------------------------------------

    def _refresh(self) -> None:
        self._render()
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.model.next_deadline()
        if deadline is None:
            self._timer.stop()
            return
        delay = max(0.0, deadline - self.model.clock())
        self._timer.start(int(math.ceil(delay * 1000)))

    def _on_deadline(self) -> None:
        if not self.model.expire():
            self._arm_timer()   # woke a hair early: wait for the real deadline

    def clear_errors(self, min_age: float = 0.0) -> bool:
        """Drop errors shown for at least ``min_age`` s (see :meth:`StatusModel.clear_errors`)."""
        return self.model.clear_errors(min_age)

    def countdowns(self) -> list[str]:
        """The visible ``clears in Ns`` notes of the errors shown (for tests and tools)."""
        now = self.model.clock()
        return [_countdown(seg.expires, now) for segs in self.model.segments()
                for seg in segs if seg.expires is not None]

    def _render(self) -> None:
        self._place_pnl()
        full = self.model.text()
        has_countdown = any(seg.expires is not None for segs in self.model.segments()
                            for seg in segs)
        if has_countdown and not self._tick.isActive():
            self._tick.start()
        elif not has_countdown and self._tick.isActive():
            self._tick.stop()
        html_text, clipped = self._fit(self._msg_label.contentsRect().width() - 16)
        self._msg_label.setText(html_text)
        self._msg_label.setToolTip(full if clipped else '')

    def _fit(self, width: int) -> tuple[str, bool]:
        """Rich text that fits ``width`` pixels, and whether anything had to be left out.

        Newest entries matter most, so first the oldest entries are dropped (a dim ``…``
        marks it), then members of what remains are summarised as ``+N more``, and as a last
        resort the plain text is elided on the right.
        """
        entries = self._segments()
        if width <= 0:          # not laid out yet; resizeEvent renders again
            return _to_html(entries, False, self.model.clock()), False
        metrics = self._msg_label.fontMetrics()

        def too_wide(shown: list[list[Segment]], elided: bool) -> bool:
            text = ('… ' if elided else '') + render_plain(shown)
            return metrics.horizontalAdvance(text) > width

        for limit in range(max(self.model.max_members, 0), -1, -1):
            shown = self._segments(max_members=limit)
            elided = False
            while len(shown) > 1 and too_wide(shown, elided):
                shown = shown[1:]
                elided = True
            if not too_wide(shown, elided):
                clipped = elided or shown != entries
                return _to_html(shown, elided, self.model.clock()), clipped
        plain = metrics.elidedText(render_plain(shown), QtCore.Qt.ElideRight, width)
        colour = _LEVEL_COLOURS[shown[0][0].level] if shown else _FG
        return f'<span style="color:{colour}; white-space:pre">{html.escape(plain)}</span>', True

    def _segments(self, max_members: int | None = None) -> list[list[Segment]]:
        """The hover hint, then the model's entries: when room is short the hint goes
        first (errors and refusals matter more; the line's tooltip says it too)."""
        entries = self.model.segments(max_members=max_members)
        if self._hint:
            entries.insert(0, [Segment(self._hint, 'hint', 'status')])
        return entries

    def eventFilter(self, obj, ev) -> bool:  # noqa: N802
        """The message label got a new width (e.g. the position summary hid): re-fit."""
        if obj is getattr(self, '_msg_label', None) and ev.type() == QtCore.QEvent.Resize:
            html_text, clipped = self._fit(self._msg_label.contentsRect().width() - 16)
            self._msg_label.setText(html_text)
            self._msg_label.setToolTip(self.model.text() if clipped else '')
        return False

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:
        """Re-elide the messages for the new width."""
        # messages get a fair share of a wide bar: the PnL/info labels are capped (caps on
        # maxima, so the window's minimum width never depends on its current width)
        w = event.size().width()
        self._pnl_label.setMaximumWidth(max(self._pnl_label.minimumSizeHint().width(), int(0.3 * w)))
        self._info_label.setMaximumWidth(max(0, int(0.25 * w)))
        super().resizeEvent(event)
        self._place_pnl()
        self._render()


def _countdown(expires: float, now: float) -> str:
    return f'clears in {max(0, math.ceil(expires - now))}s'


def _to_html(entries: list[list[Segment]], elided: bool, now: float = 0.0) -> str:
    """Rich text for the message label: escaped, coloured per segment, spaces preserved."""
    def sep(text: str) -> str:
        return f'<span style="color:{_SEP_COLOUR}">{html.escape(text)}</span>'

    parts = []
    for segs in entries:
        pieces = []
        for seg in segs:
            if seg.level == 'other':      # other clients' fills: dim, italic
                pieces.append(f'<span style="color:{_LEVEL_COLOURS["other"]}; font-style:italic">'
                              f'{html.escape(seg.text)}</span>')
                continue
            if seg.level == 'fill':       # our fills: bright and bold
                pieces.append(f'<span style="color:{_LEVEL_COLOURS["fill"]}; font-weight:bold">'
                              f'{html.escape(seg.text)}</span>')
                continue
            if seg.level != 'info':
                colour = _LEVEL_COLOURS[seg.level]
            elif seg.kind == 'status':
                colour = _FG
            else:
                colour = _DIM
            piece = f'<span style="color:{colour}">{html.escape(seg.text)}</span>'
            if seg.expires is not None:
                piece += (f'<span style="color:{_DIM}; font-size:small">'
                          f'  ({_countdown(seg.expires, now)})</span>')
            pieces.append(piece)
        parts.append(sep(MEMBER_SEP).join(pieces))
    body = sep(ENTRY_SEP).join(parts)
    if elided:
        body = sep('… ') + body
    return f'<span style="white-space:pre">{body}</span>'
