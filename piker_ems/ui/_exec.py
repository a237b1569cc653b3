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

:func:`start_guest` starts a guest run on an existing ``QApplication`` (tests drive the Qt loop
with ``qtbot``); :func:`run_qt` is the whole program: create the app, run, quit, return.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Awaitable, Callable

from ..log import get_logger

log = get_logger(__name__)

__all__ = ['GuestRun', 'NoDisplay', 'ScreenshotError', 'display_problem', 'run_qt', 'start_guest']


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

    trio.lowlevel.start_guest_run(
        main,
        run_sync_soon_threadsafe=guest._post,
        done_callback=guest._done,
        # Ctrl-C must surface inside trio (and tear the actor tree down there), never as an
        # exception thrown out of a Qt callback, which PyQt turns into an abort
        restrict_keyboard_interrupt_to_checkpoints=True,
    )
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
    problem = display_problem()
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
