"""The chart's status bar shows emsd's trading state (issue 14 item 2), pushed by emsd on the
order dialogue: a real ChartApp (pikerd in-process, sim + paper engine) as a trio guest of
pytest-qt's QApplication; an admin halts and resumes through emsd's RPC.
"""
import os

os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')

from pathlib import Path  # noqa: E402

from pyqtgraph.Qt import QtCore  # noqa: E402

from _ems_helpers import rpc  # noqa: E402
from piker_ems.clearing import TradingState, open_ems  # noqa: E402
from test_chart_app import FQSN, Running, running, sim_calm  # noqa: E402,F401

EMS = 'piker_ems.clearing._ems'


async def set_state(state: str, account: str | None = None) -> dict:
    return await rpc('emsd', EMS, 'ems_set_trading_state', state=state, account=account)


async def state_at_connect() -> str:
    """A client connecting now learns the state from emsd's start state."""
    async with open_ems(FQSN, mode='paper', name='late') as (book, _, _):
        return book.trading_state


def test_status_bar_shows_halted_and_reducing_and_nothing_when_active(running: Running, tmp_path):
    r = running
    status = r.app.status
    assert status.trading_text() == '' and r.app.mode.trading_state == 'active'
    dark = r.place(QtCore.Qt.Key_F, round(r.last() - 2.0, 2))   # a resting dark buy
    r.wait(lambda: r.chart.get_line(dark).confirmed, msg='the dark order was not accepted')

    out = r.call(set_state, 'halted')
    assert out['state'] == 'halted' and out['cancelled'] == 1
    r.wait(lambda: status.trading_text() == 'TRADING HALTED', msg='the halt was not shown')
    assert 'trading halted (cluster)' in status.text()
    [notice] = [m for m in r.seen if isinstance(m, TradingState)]
    assert (notice.account, notice.state, notice.scope) == ('paper', 'halted', '*')
    # the halt's cancel of our dark order arrives after the notice, on the same dialogue
    r.wait(lambda: any(getattr(m, 'oid', None) == dark and m.resp == 'dark_cancelled' for m in r.seen),
           msg='the halt did not cancel the dark order')
    assert r.seen.index(notice) < next(i for i, m in enumerate(r.seen)
                                       if getattr(m, 'oid', None) == dark and m.resp == 'dark_cancelled')
    shots = Path(os.environ.get('PIKER_EMS_SHOTS') or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    assert r.app.window.grab().save(str(shots / 'chart-halted.png'), 'PNG')
    assert r.call(state_at_connect) == 'halted'

    r.call(set_state, 'reducing', 'paper')
    # the cluster's halt is stricter than the account's reducing: still halted
    r.wait(lambda: sum(isinstance(m, TradingState) for m in r.seen) == 2)
    assert status.trading_text() == 'TRADING HALTED'
    r.call(set_state, 'active')
    r.wait(lambda: status.trading_text() == 'TRADING REDUCING', msg='reducing was not shown')
    r.call(set_state, 'active', 'paper')
    r.wait(lambda: status.trading_text() == '', msg='active still shows a trading state')
    assert r.app.mode.trading_state == 'active'
    assert [(m.state, m.scope) for m in r.seen if isinstance(m, TradingState)] == [
        ('halted', '*'), ('halted', 'paper'), ('reducing', '*'), ('active', 'paper')]

    # another account's state is not this chart's business: nothing arrives for it before the
    # next change that does apply (one dialogue, in order)
    r.call(set_state, 'halted', 'live')
    r.call(set_state, 'reducing')
    r.wait(lambda: status.trading_text() == 'TRADING REDUCING')
    assert [(m.state, m.scope) for m in r.seen if isinstance(m, TradingState)][4:] == [('reducing', '*')]
    r.call(set_state, 'active')
    r.call(set_state, 'active', 'live')
    r.wait(lambda: status.trading_text() == '')
