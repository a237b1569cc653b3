"""The chart window's widgets: a tab per symbol, the key help overlay and the close dialog.

Pure Qt: no trio, no EMS. The app (:mod:`.app`) fills the pages and answers the window's
callbacks (:attr:`ChartWindow.on_close`, :attr:`ChartWindow.on_add_symbol`); every dialog here
is non-modal to the event loop (``open()``, never ``exec_()``), because a nested Qt loop would
stall trio, which runs as Qt's guest, and tests could not drive it.
"""
from __future__ import annotations

from typing import Callable

from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from ._chart import ChartWidget
from ._statusbar import FitLabel, StatusBar

__all__ = ['CloseDialog', 'HelpOverlay', 'KEYS_HELP', 'KEYS_TABLE', 'SymbolPage', 'ChartWindow']

KEYS_HELP = ('f buy · d sell · a alert · +s/ctrl live · click submit · drag modify · c/del cancel'
             ' · cc all · +/- size · End follow · R auto y · ? help · ctrl+q quit')

#: the help overlay (``?``): (keys, what they do)
KEYS_TABLE = (
    ('hold f / d / a', 'stage a buy / sell / alert line at the cursor'),
    ('  + hold s or ctrl', 'live (sent to the broker) instead of dark (held by the EMS)'),
    ('left click', 'submit the staged order (release the key to unstage)'),
    ('drag a line', 'modify its price'),
    ('c  /  Delete', 'cancel the order under the cursor'),
    ('c c', "cancel all your orders on this symbol (Shift+c c: everyone's, --control-others)"),
    ('+  /  -', 'order size up / down by one lot (or type it in the size field)'),
    ('drag / wheel the plot', 'pan / zoom time (a drag stops following)'),
    ('End', 'follow the newest bar again'),
    ('drag / wheel price axis', 'scale prices by hand;  R or double click: fit the bars again'),
    ('ctrl+t', 'add a symbol (a new tab);  ctrl+tab / ctrl+pgdown: next tab'),
    ('?', 'show / hide this help;  Esc hides it'),
    ('ctrl+q', "quit (asks first when resting orders would stop with this chart's pikerd)"),
)

_DIM = '#5d6577'


class SymbolPage(QtWidgets.QWidget):
    """One tab: a symbol's chart with its own status bar (mode, size, PnL, account)."""

    def __init__(self, fqsn: str, period_s: float, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.fqsn = fqsn
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        self.chart = ChartWidget(fqsn, period_s=period_s)
        self.status = StatusBar(self)
        layout.addWidget(self.chart, 1)
        layout.addWidget(self.status)
        self.chart.info_label.setToolTip(KEYS_HELP)
        # the key hints elide (whole text in the tooltip): they must never hold the window wide
        self.help_label = FitLabel(self.chart, min_width=0)
        self.help_label.setStyleSheet(f'color: {_DIM}; background: transparent;')
        font = QtGui.QFont()
        font.setPointSizeF(8.5)
        self.help_label.setFont(font)
        self.help_label.setAlignment(QtCore.Qt.AlignRight | QtCore.Qt.AlignVCenter)
        self.help_label.set_parts([(t, _DIM) for t in KEYS_HELP.split(' · ')])
        header = self.chart.layout().itemAt(0).widget()
        header.layout().addWidget(self.help_label)


class HelpOverlay(QtWidgets.QFrame):
    """The keys, in a panel over the chart (``?`` toggles it, ``Esc`` or a click hides it).

    The one-line key hints elide in a narrow window; this is where every key is spelled out.
    """

    def __init__(self, parent: QtWidgets.QWidget) -> None:
        super().__init__(parent)
        self.setObjectName('help_overlay')
        self.setStyleSheet(
            '#help_overlay { background: rgba(20, 23, 30, 238); border: 1px solid #3a404e;'
            ' border-radius: 6px; } QLabel { color: #c0c6d2; background: transparent; }')
        grid = QtWidgets.QGridLayout(self)
        grid.setContentsMargins(18, 14, 18, 14)
        grid.setHorizontalSpacing(18)
        grid.setColumnStretch(1, 1)
        grid.setVerticalSpacing(4)
        title = QtWidgets.QLabel('keys   (? or Esc to close)')
        title.setStyleSheet('color: #e6e9ef; font-weight: bold;')
        grid.addWidget(title, 0, 0, 1, 2)
        self.rows: list[tuple[str, str]] = list(KEYS_TABLE)
        for i, (keys, what) in enumerate(self.rows, start=1):
            k = QtWidgets.QLabel(keys)
            k.setStyleSheet('color: #f0c674; font-family: monospace;')
            grid.addWidget(k, i, 0)
            w = QtWidgets.QLabel(what)
            w.setWordWrap(True)
            grid.addWidget(w, i, 1)
        self.hide()

    def toggle(self) -> None:
        self.set_shown(not self.isVisible())

    def set_shown(self, shown: bool) -> None:
        if shown:
            self.place()
            self.raise_()
        self.setVisible(shown)

    def place(self) -> None:
        """Centred over the parent, as wide as fits."""
        parent = self.parentWidget()
        if parent is None:
            return
        w = min(parent.width() - 20, 780)
        self.setFixedWidth(max(w, 200))
        self.adjustSize()
        self.move((parent.width() - self.width()) // 2, max(10, (parent.height() - self.height()) // 3))

    def mousePressEvent(self, ev) -> None:  # noqa: N802
        self.hide()



class CloseDialog(QtWidgets.QMessageBox):
    """Closing a chart that hosts pikerd while orders rest there: keep pikerd running in the
    background, cancel your orders and close, or don't close.

    ``open()`` (window-modal, never a nested event loop); :attr:`on_choice` receives
    ``'keep'``, ``'cancel'`` or ``'stay'``. Tests click :meth:`button_for`.
    """

    CHOICES = ('keep', 'cancel', 'stay')

    def __init__(self, parent: QtWidgets.QWidget, text: str, detail: str,
                 on_choice: Callable[[str], None]) -> None:
        super().__init__(parent)
        self.setWindowTitle('orders would stop')
        self.setIcon(QtWidgets.QMessageBox.Warning)
        self.setText(text)
        self.setInformativeText(detail)
        self.on_choice = on_choice
        self._buttons = {
            'keep': self.addButton('Keep pikerd running in the background',
                                   QtWidgets.QMessageBox.AcceptRole),
            'cancel': self.addButton('Cancel my orders and close',
                                     QtWidgets.QMessageBox.DestructiveRole),
            'stay': self.addButton("Don't close", QtWidgets.QMessageBox.RejectRole),
        }
        self.setDefaultButton(self._buttons['keep'])
        self.setEscapeButton(self._buttons['stay'])
        self.setWindowModality(QtCore.Qt.WindowModal)
        self.buttonClicked.connect(self._clicked)
        self.choice: str | None = None

    def button_for(self, choice: str) -> QtWidgets.QAbstractButton:
        return self._buttons[choice]

    def _clicked(self, button) -> None:
        for name, b in self._buttons.items():
            if b is button:
                self.choice = name
                self.on_choice(name)
                return


class ChartWindow(QtWidgets.QMainWindow):
    """Main window: a tab per symbol (each a chart with its status bar), an ``add symbol``
    field in the tab bar's corner, the help overlay.

    Closing it never quits Qt directly: it asks :attr:`on_close` (returns False to keep the
    window open, e.g. while the close dialog asks). :attr:`chart`, :attr:`status` and
    :attr:`help_label` are the current tab's.
    """

    def __init__(self, opts) -> None:
        super().__init__()
        self.opts = opts
        self.tabs = QtWidgets.QTabWidget(self)
        self.tabs.setDocumentMode(True)
        self.tabs.setStyleSheet(
            'QTabWidget { background: #0e1116; } QTabWidget::pane { border: none; }'
            ' QTabBar { background: #0e1116; }'
            ' QTabBar::tab { background: #16161b; color: #8a93a6; padding: 3px 12px;'
            ' border: 1px solid #2a2e38; border-bottom: none; }'
            ' QTabBar::tab:selected { background: #0e1116; color: #e6e9ef; }')
        self.setCentralWidget(self.tabs)
        self.setStyleSheet('QMainWindow { background: #0e1116; }')
        self.pages: list[SymbolPage] = []
        #: type a symbol and Enter: a new tab (Ctrl+T focuses it)
        self.add_field = QtWidgets.QLineEdit(self.tabs)
        self.add_field.setPlaceholderText('+ symbol')
        self.add_field.setToolTip('type a symbol (e.g. ethusd.sim) and Enter: a new tab (Ctrl+T)')
        self.add_field.setFixedWidth(120)
        self.add_field.setStyleSheet(
            'QLineEdit { background: #16161b; color: #e6e9ef; border: 1px solid #2a2e38;'
            ' padding: 1px 4px; }')
        self.add_field.returnPressed.connect(self._add_entered)
        self.tabs.setCornerWidget(self.add_field, QtCore.Qt.TopRightCorner)
        self.help = HelpOverlay(self.tabs)
        self.on_close: Callable[[], bool] | None = None
        self.on_add_symbol: Callable[[str], None] | None = None
        self._shortcuts = []
        for keys, fn in (
            ('Ctrl+Q', self.close),                      # the same path as the window's close
            ('Ctrl+T', self._focus_add),
            ('Ctrl+PgDown', lambda: self._step_tab(1)),
            ('Ctrl+PgUp', lambda: self._step_tab(-1)),
            ('Ctrl+Tab', lambda: self._step_tab(1)),
            ('Ctrl+Shift+Tab', lambda: self._step_tab(-1)),
        ):
            sc = QtWidgets.QShortcut(QtGui.QKeySequence(keys), self)
            sc.setContext(QtCore.Qt.WindowShortcut)
            sc.activated.connect(fn)
            self._shortcuts.append(sc)
        self.tabs.currentChanged.connect(lambda _i: self._focus_chart())
        for fqsn in opts.fqsns:
            self.add_page(fqsn)
        self.resize(opts.width, opts.height)

    # -- pages ----------------------------------------------------------------------------
    def add_page(self, fqsn: str) -> SymbolPage:
        page = SymbolPage(fqsn, self.opts.period, self.tabs)
        # '?' by its text, whatever the keyboard layout (Shift+/ on most)
        page.chart.sigKeyPressed.connect(self._chart_key)
        self.pages.append(page)
        self.tabs.addTab(page, fqsn)
        return page

    def page_for(self, fqsn: str) -> SymbolPage | None:
        return next((p for p in self.pages if p.fqsn == fqsn), None)

    @property
    def page(self) -> SymbolPage:
        """The tab shown."""
        return self.tabs.currentWidget() or self.pages[0]

    @property
    def chart(self) -> ChartWidget:
        return self.page.chart

    @property
    def status(self) -> StatusBar:
        return self.page.status

    @property
    def help_label(self) -> FitLabel:
        return self.page.help_label

    def show_page(self, fqsn: str) -> None:
        page = self.page_for(fqsn)
        if page is not None:
            self.tabs.setCurrentWidget(page)

    def set_tab_state(self, page: SymbolPage, state: str) -> None:
        """The tab says whether its symbol is live: ``ok``, ``connecting`` or ``lost``."""
        i = self.tabs.indexOf(page)
        if i < 0:
            return
        mark = {'ok': '●', 'connecting': '○', 'lost': '✕'}.get(state, '○')
        colour = {'ok': '#4caf78', 'connecting': '#8a93a6', 'lost': '#e05561'}.get(state, '#8a93a6')
        # the account too: the status bar's info gives way in a narrow window, the tab does not
        self.tabs.setTabText(i, f'{mark} {page.fqsn} · {self.opts.account}')
        self.tabs.tabBar().setTabTextColor(i, QtGui.QColor(colour))
        self.tabs.setTabToolTip(i, f'{page.fqsn} on {self.opts.account}: {state}')

    def _step_tab(self, step: int) -> None:
        n = self.tabs.count()
        if n:
            self.tabs.setCurrentIndex((self.tabs.currentIndex() + step) % n)

    def _focus_add(self) -> None:
        self.add_field.setFocus()
        self.add_field.selectAll()

    def _focus_chart(self) -> None:
        if self.pages:
            self.page.chart.setFocus()

    def _add_entered(self) -> None:
        text = self.add_field.text().strip().lower()
        if not text:
            return
        self.add_field.clear()
        if self.on_add_symbol is not None:
            self.on_add_symbol(text)
        self._focus_chart()

    def toggle_help(self) -> None:
        self.set_help(not self.help.isVisible())

    def set_help(self, shown: bool) -> None:
        self.help.set_shown(shown)

    def _chart_key(self, ev: QtGui.QKeyEvent) -> None:
        """``?`` (by its text, whatever the keyboard layout) toggles the help, Esc hides it."""
        if ev.isAutoRepeat():
            return
        if ev.text() == '?':
            self.toggle_help()
        elif ev.key() == QtCore.Qt.Key_Escape and self.help.isVisible():
            self.set_help(False)

    # -- events ---------------------------------------------------------------------------
    def resizeEvent(self, ev) -> None:  # noqa: N802
        super().resizeEvent(ev)
        if self.help.isVisible():
            self.help.place()

    def closeEvent(self, ev: QtGui.QCloseEvent) -> None:  # noqa: N802
        """Route the close through the app (see :mod:`.app`): it may ask first."""
        if self.on_close is not None and self.on_close() is False:
            ev.ignore()
            return
        ev.accept()
