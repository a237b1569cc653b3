"""Run trio inside Qt's event loop ("guest mode") with a clean shutdown.

Qt owns the main thread and its event loop; trio runs as a *guest*: its scheduler ticks are
posted to Qt as events, so trio tasks and Qt callbacks run on the same thread and may touch the
same widgets without locks. The rules that keep this from crashing or orphaning actors
(see the team's tractor notes §9):

- ``QApplication.setQuitOnLastWindowClosed(False)``: closing a window must not stop Qt while
  trio (and the actor tree it runs) is still alive;
- closing the window only *cancels* the app's trio work, from inside the actor nursery, so the
  actors are torn down normally;
- ``app.quit()`` is called only from trio's ``done_callback``, i.e. once trio has finished.
  Quitting Qt first abandons the guest run: a segfault at exit and orphaned sub-actors.
- Python's cyclic garbage collector runs on the GUI thread only (:class:`GuiThreadGC`):
  trio waits for I/O in a worker thread, and a collection started there would delete Qt
  objects off the GUI thread while Qt paints them.

:func:`start_guest` starts a guest run on an existing ``QApplication`` (tests drive the Qt loop
with ``qtbot``); :func:`run_qt` is the whole program: create the app, run, quit, return.
"""
from __future__ import annotations

import gc
import os
import sys
import traceback
from typing import Any, Awaitable, Callable

from ..log import get_logger

log = get_logger(__name__)

__all__ = ['GuestRun', 'GuiThreadGC', 'NoDisplay', 'ScreenshotError', 'display_problem', 'missing_xcb_libraries',
           'platform_problem', 'run_qt', 'start_guest']


class NoDisplay(RuntimeError):
    """Qt has no display to open windows on."""


class ScreenshotError(RuntimeError):
    """A requested screenshot could not be written."""


def display_problem(environ: dict[str, str] | None = None) -> str | None:
    """Why Qt could not open a window here (one line), or None if it can.

    Exists because Qt aborts the whole process (``could not connect to display``) instead of
    raising: check first and tell the user what to do.
    """
    env = os.environ if environ is None else environ
    if env.get('QT_QPA_PLATFORM'):
        return None
    if sys.platform in ('darwin', 'win32'):
        return None
    if env.get('DISPLAY') or env.get('WAYLAND_DISPLAY'):
        return None
    return ('no display (DISPLAY/WAYLAND_DISPLAY unset): run headless with '
            '--screenshot PATH --exit-after SECONDS, or set QT_QPA_PLATFORM=offscreen')


def _xcb_plugin_files(env: dict[str, str]) -> list[str]:
    """The xcb platform plugin Qt would load and PyQt5's xcb glue library next to it."""
    import glob

    paths = []
    plugin_dir = env.get('QT_QPA_PLATFORM_PLUGIN_PATH')
    if plugin_dir:
        paths.append(os.path.join(plugin_dir, 'libqxcb.so'))
    try:
        import PyQt5
    except ImportError:
        return paths
    qt = os.path.join(os.path.dirname(PyQt5.__file__), 'Qt5')
    if not plugin_dir:
        paths.append(os.path.join(qt, 'plugins', 'platforms', 'libqxcb.so'))
    paths += sorted(glob.glob(os.path.join(qt, 'lib', 'libQt5XcbQpa.so*')))[:1]
    return [p for p in paths if os.path.exists(p)]


def missing_xcb_libraries(files: list[str], ldd: str = 'ldd') -> list[str]:
    """Shared libraries (sonames) the given ELF files need and the system lacks, per ``ldd``.

    Exists because Qt, when its xcb platform plugin cannot load, aborts the process with
    'no Qt platform plugin could be initialized' and a long hint; asking ``ldd`` first lets us
    name what is missing in one line. Empty when ``ldd`` is unavailable (then Qt speaks).
    """
    import subprocess

    missing: list[str] = []
    for path in files:
        try:
            out = subprocess.run([ldd, path], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        for line in out.splitlines():
            name, _, where = line.strip().partition(' => ')
            if where.strip() == 'not found' and name not in missing:
                missing.append(name)
    return missing


def _x_display_answers(display: str) -> bool:
    """Whether an X server accepts connections at ``display`` (``:1``, ``host:0.0``)."""
    import socket

    host, _, rest = display.rpartition(':')
    try:
        number = int(rest.split('.')[0])
    except ValueError:
        return True   # a form we do not know: let Qt try
    try:
        if host in ('', 'unix'):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                try:
                    sock.connect(f'/tmp/.X11-unix/X{number}')
                    return True
                except OSError:
                    pass
            with socket.socket(socket.AF_UNIX) as sock:   # Linux abstract socket
                sock.settimeout(2)
                sock.connect(f'\0/tmp/.X11-unix/X{number}')
                return True
        with socket.create_connection((host, 6000 + number), timeout=2):
            return True
    except OSError:
        return False


def _bundled_with_pyqt(soname: str) -> bool:
    try:
        import PyQt5
    except ImportError:
        return False
    return os.path.exists(os.path.join(os.path.dirname(PyQt5.__file__), 'Qt5', 'lib', soname))


def debian_package(soname: str) -> str:
    """The Debian/Ubuntu package that ships ``soname`` by the usual naming rule
    (``libxcb-icccm.so.4`` -> ``libxcb-icccm4``, ``libxkbcommon-x11.so.0`` ->
    ``libxkbcommon-x11-0``)."""
    base, _, version = soname.partition('.so')
    version = version.lstrip('.').split('.')[0]
    base = base.lower()
    if version and base[-1:].isdigit():
        base += '-'
    return base + version


def platform_problem(environ: dict[str, str] | None = None, ldd: str = 'ldd') -> str | None:
    """Why Qt's platform plugin would fail to load here (one line), or None.

    Only the X11 (``xcb``) plugin is checked, on Linux: it is the one whose system libraries
    a fresh Debian/Ubuntu install lacks (README lists them).
    """
    env = os.environ if environ is None else environ
    platform = (env.get('QT_QPA_PLATFORM') or '').split(':')[0]
    if not sys.platform.startswith('linux'):
        return None
    if platform not in ('', 'xcb') or (not platform and not env.get('DISPLAY')):
        return None
    missing = missing_xcb_libraries(_xcb_plugin_files(env), ldd=ldd)
    # Qt's own libraries ship with PyQt5 and are loaded before the plugin (a plugin outside
    # PyQt5's tree, QT_QPA_PLATFORM_PLUGIN_PATH, does not find them through its rpath)
    missing = [m for m in missing if not _bundled_with_pyqt(m)]
    if missing:
        pkgs = ' '.join(debian_package(m) for m in missing)
        return (f"Qt's X11 (xcb) plugin cannot load, missing system libraries: "
                f"{', '.join(missing)} (Debian/Ubuntu: apt-get install {pkgs})")
    display = env.get('DISPLAY')
    if display and not _x_display_answers(display):
        return (f'cannot connect to the X display {display!r} (DISPLAY): is an X server running '
                'there? (headless: --screenshot PATH, or QT_QPA_PLATFORM=offscreen)')
    return None


class GuiThreadGC:
    """Python's cyclic garbage collection on the GUI thread only, for as long as it is started.

    Why: CPython collects cycles in whichever thread happens to allocate when a generation's
    threshold is crossed. In trio's guest mode that is often trio's I/O thread (it allocates
    the ready events on every wake-up). A collection there frees unreachable Qt wrappers (an
    order line taken off the chart, a closed chart's items) and so deletes their C++ objects
    off the GUI thread, possibly while Qt paints them: ``wrapped C/C++ object ... has been
    deleted`` in ``paint``, then a segfault (seen in CI). So automatic collection is switched off
    and a timer on the GUI thread runs the same generational collections CPython would
    (gen 0 when its count passes its threshold, gen 1 and 2 likewise), at most one per tick.

    The switch is process-wide (:mod:`gc` has one state); :meth:`stop` restores what it found.
    One guest run per process (the chart) owns one of these.
    """

    def __init__(self, interval_ms: int = 100) -> None:
        self.interval_ms = interval_ms
        self._timer = None
        self._was_enabled = False

    def start(self) -> None:
        """Switch automatic collection off; collect from a timer on this (the GUI) thread."""
        from PyQt5 import QtCore

        if self._timer is not None:
            return
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._timer = QtCore.QTimer()
        self._timer.timeout.connect(self.collect_due)
        self._timer.start(self.interval_ms)

    def collect_due(self) -> int | None:
        """Collect the oldest generation whose count passed its threshold (as CPython's own
        trigger does); returns it, or None when nothing is due. A Qt timer's slot: it runs on
        the thread that started the timer."""
        thresholds, counts = gc.get_threshold(), gc.get_count()
        if thresholds[0] == 0 or counts[0] <= thresholds[0]:
            return None
        gen = 0
        for g in (2, 1):
            if counts[g] > thresholds[g]:
                gen = g
                break
        gc.collect(gen)
        return gen

    def stop(self) -> None:
        """Stop the timer and give automatic collection back if it was on before."""
        if self._timer is None:
            return
        self._timer.stop()
        self._timer = None
        if self._was_enabled:
            gc.enable()


class GuestRun:
    """A trio run hosted by the Qt event loop.

    ``done`` turns True when trio finished; ``outcome`` then holds its result or error
    (:meth:`result` unwraps it). :meth:`run_sync_soon` schedules a plain function inside trio
    from Qt code (thread-safe, works before trio has started its first task).
    """

    def __init__(self, on_done: Callable[['GuestRun'], None] | None = None) -> None:
        from PyQt5 import QtCore

        self.done = False
        self.outcome = None
        self.token = None
        self._on_done = on_done
        self._queued: list[Callable[[], Any]] = []
        #: cycles are collected on the GUI thread while trio's I/O thread exists
        self.gc = GuiThreadGC()

        event_type = QtCore.QEvent.Type(QtCore.QEvent.registerEventType())

        class _Reenter(QtCore.QObject):
            """Runs trio's callbacks when their posted event reaches the Qt loop."""

            def event(self, ev: QtCore.QEvent) -> bool:  # noqa: N802
                if ev.type() != event_type:
                    return super().event(ev)
                fn = getattr(ev, 'fn', None)
                if fn is not None:
                    ev.fn = None
                    fn()
                return True

        self._event_type = event_type
        self._reenter = _Reenter()
        self._app = QtCore.QCoreApplication.instance()

    def _post(self, fn: Callable[[], Any]) -> None:
        """trio's ``run_sync_soon_threadsafe``: queue ``fn`` on the Qt loop (any thread)."""
        from PyQt5 import QtCore

        ev = QtCore.QEvent(self._event_type)
        ev.fn = fn  # type: ignore[attr-defined]
        QtCore.QCoreApplication.postEvent(self._reenter, ev)

    def _done(self, outcome) -> None:
        self.gc.stop()
        self.outcome = outcome
        self.done = True
        error = getattr(outcome, 'error', None)
        if error is not None and not isinstance(error, (KeyboardInterrupt, SystemExit)):
            log.debug('trio guest run failed:\n%s', ''.join(traceback.format_exception(error)))
        if self._on_done is not None:
            self._on_done(self)

    def run_sync_soon(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` inside trio soon (e.g. ``cancel_scope.cancel``) from Qt code."""
        if self.done:
            return
        if self.token is None:
            self._queued.append(fn)
        else:
            self.token.run_sync_soon(fn)

    def result(self) -> Any:
        """trio's return value; re-raises its exception."""
        if not self.done:
            raise RuntimeError('the trio guest run has not finished')
        return self.outcome.unwrap()


def start_guest(
    async_fn: Callable[..., Awaitable[Any]],
    *args: Any,
    on_done: Callable[[GuestRun], None] | None = None,
) -> GuestRun:
    """Start ``async_fn(*args)`` as a trio guest of the running ``QApplication``.

    Returns at once; the Qt loop (``app.exec_()``, or ``qtbot.waitUntil`` in tests) drives it.
    """
    import trio

    guest = GuestRun(on_done)

    async def main() -> Any:
        guest.token = trio.lowlevel.current_trio_token()
        queued, guest._queued = guest._queued, []
        for fn in queued:
            fn()
        return await async_fn(*args)

    guest.gc.start()
    try:
        trio.lowlevel.start_guest_run(
            main,
            run_sync_soon_threadsafe=guest._post,
            done_callback=guest._done,
            # Ctrl-C must surface inside trio (and tear the actor tree down there), never as an
            # exception thrown out of a Qt callback, which PyQt turns into an abort
            restrict_keyboard_interrupt_to_checkpoints=True,
        )
    except BaseException:
        guest.gc.stop()
        raise
    return guest


#: Qt chatter that says nothing to a user (headless platform plugin limitations)
_QT_NOISE = ('propagateSizeHints', 'XDG_RUNTIME_DIR')


def _qt_message(kind, context, message: str) -> None:
    """Route Qt's own messages to our log; known headless noise only at debug level."""
    from PyQt5 import QtCore

    if any(noise in message for noise in _QT_NOISE):
        log.debug('Qt: %s', message)
        return
    level = {
        QtCore.QtDebugMsg: 10, QtCore.QtInfoMsg: 20, QtCore.QtWarningMsg: 30,
    }.get(kind, 40)
    log.log(level, 'Qt: %s', message)


def run_qt(
    async_fn: Callable[..., Awaitable[Any]],
    *args: Any,
    app_name: str = 'piker',
) -> Any:
    """The whole GUI program: make the Qt app, run ``async_fn(*args)`` as trio guest, return.

    Qt quits only when trio is done (from ``done_callback``); trio's result is returned and
    its exception re-raised. Raises :class:`NoDisplay` instead of letting Qt abort the process
    when there is no display.
    """
    problem = display_problem() or platform_problem()
    if problem is not None:
        raise NoDisplay(problem)
    from PyQt5 import QtCore, QtWidgets

    previous = QtCore.qInstallMessageHandler(_qt_message)
    try:
        app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([app_name])
        app.setApplicationName(app_name)
        app.setQuitOnLastWindowClosed(False)   # only trio's end quits the app
        guest = start_guest(async_fn, *args, on_done=lambda _g: app.quit())
        while not guest.done:
            app.exec_()
        return guest.result()
    finally:
        QtCore.qInstallMessageHandler(previous)
