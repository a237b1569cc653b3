"""Status bar: plain statuses, final/clear-on-next messages, groups, timeouts, mode label."""
import os

os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')

import pytest  # noqa: E402
from PyQt5 import QtWidgets  # noqa: E402

from piker_ems.ui._statusbar import StatusBar, StatusModel  # noqa: E402


class FakeClock:
    """Manually advanced monotonic clock so timeouts are tested without sleeping."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def model(clock):
    return StatusModel(clock=clock)


# -- model ------------------------------------------------------------------------------------

def test_plain_status_and_idempotent_closer(model):
    close = model.open_status('starting order mode..')
    assert model.text() == 'starting order mode..'
    assert close() is True
    assert model.text() == ''
    assert close() is False          # harmless second call
    assert model.text() == ''


def test_closer_only_removes_its_own_message(model):
    close_a = model.open_status('loading btcusdt.binance')
    close_b = model.open_status('starting order mode..')
    close_a()
    assert model.text() == 'starting order mode..'
    close_b()
    assert model.text() == ''


def test_final_msg_stays_until_next_status(model):
    close = model.open_status('submitting dark-buy', final_msg='submitted dark-buy')
    assert model.text() == 'submitting dark-buy'
    close()
    assert model.text() == 'submitted dark-buy'
    close()                          # a second close must not re-show or drop anything
    assert model.text() == 'submitted dark-buy'
    model.open_status('submitting live-sell')
    assert model.text() == 'submitting live-sell'


def test_clear_on_next(model):
    close = model.open_status(
        'submitting dark-buy', final_msg='submitted dark-buy', clear_on_next=True)
    model.open_status('loading fsp..')
    assert model.text() == 'loading fsp..'
    # the ack arriving later still reports the outcome
    close()
    assert model.text().endswith('submitted dark-buy')


def test_group_resolves_only_after_last_member(model):
    key = model.open_status(
        'cancelling 3 orders', final_msg='cancelled 3 orders', group_key=True)
    assert isinstance(key, str)
    closers = [
        model.open_status(f'cancelling order {oid}', group_key=key)
        for oid in ('1a2b3c', '4d5e6f', '7a8b9c')
    ]
    assert model.text() == (
        'cancelling 3 orders | cancelling order 1a2b3c'
        ' | cancelling order 4d5e6f | cancelling order 7a8b9c'
    )
    closers[1]()
    assert model.text() == (
        'cancelling 3 orders | cancelling order 1a2b3c | cancelling order 7a8b9c')
    assert model.pending(key) == 2
    closers[0]()
    assert model.text() == 'cancelling 3 orders | cancelling order 7a8b9c'
    closers[2]()
    assert model.text() == 'cancelled 3 orders'
    assert model.open_groups == ()
    # the final message is transient like any other
    model.open_status('submitting alert')
    assert model.text() == 'submitting alert'


def test_member_closed_twice_counts_once(model):
    key = model.open_status('cancelling 2 orders', final_msg='cancelled 2 orders', group_key=True)
    first = model.open_status('cancelling order aaaaaa', group_key=key)
    second = model.open_status('cancelling order bbbbbb', group_key=key)
    assert first() is True
    assert first() is False
    assert model.text() == 'cancelling 2 orders | cancelling order bbbbbb'
    second()
    assert model.text() == 'cancelled 2 orders'
    assert first() is False and second() is False


def test_group_without_members_needs_close_group(model):
    key = model.open_status('cancelling 0 orders', final_msg='nothing to cancel', group_key=True)
    assert model.text() == 'cancelling 0 orders'
    assert model.close_group(key) is True
    assert model.text() == 'nothing to cancel'
    assert model.close_group(key) is False
    # a member for a finished group is dropped quietly with a no-op closer
    late = model.open_status('cancelling order cccccc', group_key=key)
    assert late() is False
    assert model.text() == 'nothing to cancel'
    with pytest.raises(KeyError):
        model.open_status('x', group_key='not-a-key')


def test_two_groups_newest_last(model):
    k1 = model.open_status('cancelling 1 order', final_msg='cancelled 1 order', group_key=True)
    c1 = model.open_status('cancelling order 111111', group_key=k1)
    k2 = model.open_status('cancelling 1 order', final_msg='cancelled 1 order', group_key=True)
    c2 = model.open_status('cancelling order 222222', group_key=k2)
    assert model.text() == (
        'cancelling 1 order | cancelling order 111111'
        '  ·  cancelling 1 order | cancelling order 222222'
    )
    c2()
    assert model.text() == 'cancelling 1 order | cancelling order 111111  ·  cancelled 1 order'
    c1()
    assert model.text() == 'cancelled 1 order  ·  cancelled 1 order'


def test_group_timeout_with_explicit_time(model, clock):
    key = model.open_status(
        'cancelling 3 orders', final_msg='cancelled 3 orders', group_key=True, timeout=5)
    closers = [model.open_status(f'cancelling order {i}', group_key=key) for i in range(3)]
    closers[0]()
    closers[1]()
    assert model.next_deadline() == clock.now + 5
    assert model.expire(clock.now + 4.9) is False
    assert model.text() == 'cancelling 3 orders | cancelling order 2'
    assert model.expire(clock.now + 5) is True
    assert model.text() == 'cancelling 3 orders: timed out, 1 of 3 unconfirmed'
    assert model.segments()[0][0].level == 'warn'
    assert model.next_deadline() is None
    # a late confirmation is harmless and doesn't overwrite the timeout message
    assert closers[2]() is False
    assert model.text() == 'cancelling 3 orders: timed out, 1 of 3 unconfirmed'
    model.open_status('next')
    assert model.text() == 'next'


def test_plain_status_timeout_and_custom_message(model, clock):
    close = model.open_status('connecting to emsd', timeout=2, timeout_msg='emsd not answering')
    clock.now += 2
    assert model.expire() is True      # uses the injected clock
    assert model.text() == 'emsd not answering'
    assert close() is False


def test_errors_clear_on_next(model):
    model.show_error('order rejected: insufficient margin')
    assert model.segments()[0][0].level == 'error'
    model.open_status('submitting dark-buy')
    assert model.text() == 'submitting dark-buy'


def test_many_members_are_summarised(model):
    key = model.open_status('cancelling 6 orders', group_key=True)
    for i in range(6):
        model.open_status(f'cancelling order {i}', group_key=key)
    assert model.text().endswith('cancelling order 3 | +2 more')


def test_invalid_combinations(model):
    with pytest.raises(ValueError):
        model.open_status('g', group_key=True, clear_on_next=True)
    key = model.open_status('g', group_key=True)
    with pytest.raises(ValueError):
        model.open_status('m', group_key=key, final_msg='nope')
    with pytest.raises(ValueError):
        model.open_status('m', level='loud')
    with pytest.raises(TypeError):
        model.open_status('m', group_key=3)


# -- widget -----------------------------------------------------------------------------------

@pytest.fixture
def bar(qtbot):
    window = QtWidgets.QMainWindow()
    window.resize(900, 200)
    status = StatusBar(window)
    window.setStatusBar(status)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    yield status      # the fixture frame keeps the window (and so the bar) alive
    window.close()


def test_widget_renders_model(bar):
    close = bar.open_status('submitting dark-buy', final_msg='submitted dark-buy')
    assert bar.text() == 'submitting dark-buy'
    assert 'submitting dark-buy' in bar._msg_label.text()
    close()
    assert 'submitted dark-buy' in bar._msg_label.text()
    bar.show_error('order <rejected>')
    assert 'order &lt;rejected&gt;' in bar._msg_label.text()   # escaped rich text


def test_mode_and_info_labels(bar):
    assert bar.mode_text() == 'mode: view'
    for mode in ('mode: dark-buy', 'mode: live-sell', 'mode: alert', 'mode: view'):
        bar.set_mode(mode)
        assert bar.mode_text() == mode
    assert not bar._info_label.isVisible()
    bar.set_info('paper · binance')
    assert bar.info_text() == 'paper · binance'
    assert bar._info_label.isVisible()
    bar.set_info('')
    assert not bar._info_label.isVisible()


def test_widget_group_times_out_with_qtimer(bar, qtbot):
    key = bar.open_status(
        'cancelling 2 orders', final_msg='cancelled 2 orders', group_key=True, timeout=0.15)
    done = bar.open_status('cancelling order aaaaaa', group_key=key)
    bar.open_status('cancelling order bbbbbb', group_key=key)
    done()
    assert bar.text() == 'cancelling 2 orders | cancelling order bbbbbb'
    qtbot.waitUntil(
        lambda: bar.text() == 'cancelling 2 orders: timed out, 1 of 2 unconfirmed',
        timeout=3000)
    assert 'timed out' in bar._msg_label.text()
    assert not bar._timer.isActive()


def test_narrow_bar_elides_oldest_entries(qtbot):
    window = QtWidgets.QMainWindow()
    window.resize(900, 120)
    status = StatusBar(window)
    window.setStatusBar(status)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    for i in range(20):
        status.open_status(f'loading feed number {i} of twenty..')
    html = status._msg_label.text()
    assert 'number 19 of' in html and 'number 0 of' not in html
    assert status._msg_label.toolTip().startswith('loading feed number 0')


def test_narrow_bar_summarises_members(qtbot):
    window = QtWidgets.QMainWindow()
    window.resize(520, 120)
    status = StatusBar(window)
    window.setStatusBar(status)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    key = status.open_status('cancelling 3 orders', group_key=True)
    for oid in ('1a2b3c', '4d5e6f', '7a8b9c'):
        status.open_status(f'cancelling order {oid}', group_key=key)
    html = status._msg_label.text()
    assert 'cancelling 3 orders' in html and 'more' in html
    assert status._msg_label.toolTip() == status.text()   # full text one hover away


def test_screenshot(qtbot):
    window = QtWidgets.QMainWindow()
    window.setStyleSheet('QMainWindow { background-color: #000000; }')
    central = QtWidgets.QWidget()
    central.setStyleSheet('background-color: #060608;')
    window.setCentralWidget(central)
    window.resize(1600, 120)
    status = StatusBar(window)
    window.setStatusBar(status)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)

    status.set_mode('mode: live-sell')
    status.set_info('paper · btcusdt.binance')
    status.open_status('loading fsp: rsi..')
    key = status.open_status(
        'cancelling 3 orders', final_msg='cancelled 3 orders', group_key=True, timeout=30)
    closers = [
        status.open_status(f'cancelling order {oid}', group_key=key)
        for oid in ('1a2b3c', '4d5e6f', '7a8b9c')
    ]
    closers[0]()
    qtbot.wait(20)
    path = os.environ.get('STATUSBAR_PNG', '/tmp/statusbar.png')
    assert window.grab().save(path)
    assert os.path.getsize(path) > 0


def test_model_outliving_its_widget(qtbot):
    model = StatusModel()
    status = StatusBar(model=model)
    status.open_status('hello')
    status.deleteLater()
    qtbot.waitUntil(lambda: not model._listeners, timeout=2000)
    model.open_status('still fine')   # no render into a deleted label
    assert model.text() == 'hello  ·  still fine'
