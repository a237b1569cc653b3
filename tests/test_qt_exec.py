"""trio as a guest of the Qt event loop: results, errors, cancellation from Qt, shutdown order."""
import os

os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')

import pytest  # noqa: E402
import trio  # noqa: E402
from pyqtgraph.Qt import QtCore, QtWidgets  # noqa: E402

from piker_ems.ui._exec import display_problem, run_qt, start_guest  # noqa: E402


def test_guest_result_and_qt_stays_responsive(qtbot):
    ticks = []
    timer = QtCore.QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(5)

    async def main():
        for _ in range(20):
            await trio.sleep(0.01)
        return 42

    guest = start_guest(main)
    qtbot.waitUntil(lambda: guest.done, timeout=5000)
    timer.stop()
    assert guest.result() == 42
    assert len(ticks) > 5                      # Qt ran its own events meanwhile


def test_guest_error_is_reraised(qtbot):
    async def main():
        await trio.sleep(0)
        raise ValueError('boom')

    guest = start_guest(main)
    qtbot.waitUntil(lambda: guest.done, timeout=5000)
    with pytest.raises(ValueError, match='boom'):
        guest.result()


def test_cancel_from_qt_callback(qtbot):
    """A Qt callback (e.g. closeEvent) cancels trio work through run_sync_soon."""
    state = {}

    async def main():
        with trio.CancelScope() as cs:
            state['cs'] = cs
            await trio.sleep_forever()
        return 'cancelled cleanly'

    guest = start_guest(main)
    guest.run_sync_soon(lambda: None)          # queued before trio's first task: still runs
    qtbot.waitUntil(lambda: 'cs' in state, timeout=5000)
    QtCore.QTimer.singleShot(10, lambda: guest.run_sync_soon(state['cs'].cancel))
    qtbot.waitUntil(lambda: guest.done, timeout=5000)
    assert guest.result() == 'cancelled cleanly'


def test_run_qt_quits_only_after_trio(qtbot):
    """Closing the window cancels trio; Qt quits from done_callback; the value comes back."""
    app = QtWidgets.QApplication.instance()
    order = []

    async def main():
        win = QtWidgets.QWidget()
        win.show()
        with trio.CancelScope() as cs:
            token = trio.lowlevel.current_trio_token()
            QtCore.QTimer.singleShot(50, win.close)

            def close_event(ev):
                token.run_sync_soon(cs.cancel)
                ev.accept()

            win.closeEvent = close_event
            await trio.sleep_forever()
        order.append('trio done')
        return 'ok'

    app.aboutToQuit.connect(lambda: order.append('qt quit'))
    try:
        assert run_qt(main) == 'ok'
    finally:
        app.aboutToQuit.disconnect()
    assert order[0] == 'trio done'
    assert not app.quitOnLastWindowClosed()


def test_display_problem():
    assert display_problem({'DISPLAY': ':0'}) is None
    assert display_problem({'WAYLAND_DISPLAY': 'wayland-0'}) is None
    assert display_problem({'QT_QPA_PLATFORM': 'offscreen'}) is None
    msg = display_problem({})
    assert msg is None or ('--screenshot' in msg and 'QT_QPA_PLATFORM=offscreen' in msg)


def test_cycles_are_collected_on_the_gui_thread_only(qtbot):
    """trio's I/O thread and worker threads allocate too; a collection started there would
    delete Qt objects off the GUI thread (a segfault while Qt paints). During a guest run every
    collection happens on the GUI thread, garbage made in a worker thread is still collected,
    and automatic collection comes back when trio is done."""
    import gc
    import threading
    import weakref

    class Node:
        pass

    threads: list[str] = []

    def record(phase, info):
        if phase == 'start':
            threads.append(threading.current_thread().name)

    def make_garbage():
        first = None
        for _ in range(50_000):            # far past gen 0's threshold, in a worker thread
            a, b = Node(), Node()
            a.other, b.other = b, a
            first = first or weakref.ref(a)
        return first

    async def main():
        ref = await trio.to_thread.run_sync(make_garbage)
        with trio.fail_after(5):
            while ref() is not None:       # only the GUI thread's timer may free it
                await trio.sleep(0.02)
        return len(threads)

    assert gc.isenabled()
    gc.callbacks.append(record)
    try:
        guest = start_guest(main)
        qtbot.waitUntil(lambda: guest.done, timeout=10_000)
        collections = guest.result()
    finally:
        gc.callbacks.remove(record)
    assert collections >= 1
    assert set(threads[:collections]) == {threading.main_thread().name}
    assert gc.isenabled()
