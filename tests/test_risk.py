"""Pre-trade risk in emsd (issue 14): each limit just inside passes, just outside is refused with
an ``error`` naming the limit and its value, and nothing reaches the venue; trading states.

Driven in-process through the Router with fake venues, scans and clock (tests/_router_fakes).
"""
from __future__ import annotations

import pytest

from piker_ems.clearing._journal import Journal
from piker_ems.clearing._messages import (
    BrokerdOrder,
    BrokerdOrderAck,
    BrokerdPosition,
    BrokerdStatus,
    Cancel,
    Order,
)
from piker_ems.clearing._risk import HALTED, Limits, RiskEngine, parse_limits
from piker_ems.clearing._router import Router

from _router_fakes import Rig

SYM = 'btcusd.sim'
LIVE = ('sim', 'live')


def rig_with(risk: dict, last: float = 100.0) -> Rig:
    rig = Rig(last=last)
    rig.router.risk = RiskEngine(parse_limits(risk), clock=rig.clock)
    return rig


def live(oid, price=100.0, size=1.0, action='buy', account='live', **kw):
    return Order(action=action, oid=oid, symbol=kw.pop('symbol', SYM), price=price, size=size,
                 exec_mode='live', account=account, **kw)


def dark(oid, price=105.0, size=1.0, action='buy', account='live', **kw):
    return Order(action=action, oid=oid, symbol=SYM, price=price, size=size, exec_mode='dark',
                 account=account, **kw)


def orders_sent(rig, key=LIVE):
    return [c for c in rig.venues.sent(key) if isinstance(c, BrokerdOrder)]


def error_of(conn, oid):
    errs = [s for s in conn.statuses(oid) if s.resp == 'error']
    assert errs, conn.resps(oid)
    return errs[-1].reason


def set_position(rig, size, account='live', key=LIVE):
    rig.venue(key).positions[(account, 'btcusd')] = BrokerdPosition(
        broker='sim', account=account, symbol='btcusd', size=size, avg_price=100.0)


@pytest.mark.parametrize('limit, value, inside, outside, named', [
    ('max_order_size', 5, dict(size=5), dict(size=5.001), 'max_order_size 5'),
    ('max_order_notional', 1000, dict(size=10, price=100), dict(size=10, price=100.01), 'max_order_notional 1000'),
    ('price_band_pct', 10, dict(price=110.0), dict(price=110.01), 'price_band_pct 10'),
    ('price_band_pct', 10, dict(price=90.0, action='sell'), dict(price=89.99, action='sell'), 'price_band_pct 10'),
])
def test_order_limit_just_inside_passes_just_outside_refused(limit, value, inside, outside, named):
    rig = rig_with({limit: value})
    a = rig.client('a', account='live')
    rig.send(a, live('in', **inside))
    assert a.resps('in') == [] and len(orders_sent(rig)) == 1  # sent, no answer yet
    rig.send(a, live('out', **outside))
    assert a.resps('out') == ['error']
    assert named in error_of(a, 'out') and error_of(a, 'out').startswith('risk: ')
    assert len(orders_sent(rig)) == 1  # nothing more reached the venue
    assert rig.router.stats()['risk_refused'] == 1


def test_limits_of_one_account_never_affect_another():
    rig = rig_with({'accounts': {'live': {'max_order_size': 1, 'price_band_pct': 1}}})
    a = rig.client('a', account='live')
    rig.send(a, live('big', size=50, price=130, account='other'))
    assert a.resps('big') == [] and orders_sent(rig)[-1].oid == 'big'
    rig.send(a, live('small', size=2, account='live'))
    assert 'max_order_size 1' in error_of(a, 'small')
    assert [c.oid for c in orders_sent(rig)] == ['big']


def test_symbol_limits_override_the_account_ones():
    rig = rig_with({'max_order_size': 10, 'accounts': {'live': {'symbols': {'ETHUSD.sim': {'max_order_size': 2}}}}})
    a = rig.client('a', account='live')
    rig.send(a, live('b1', size=10))
    rig.send(a, live('e1', size=3, symbol='ethusd.sim'))
    rig.send(a, live('e2', size=2, symbol='ethusd.sim'))
    assert 'max_order_size 2' in error_of(a, 'e1')
    assert [c.oid for c in orders_sent(rig)] == ['b1', 'e2']


def test_max_open_orders_counts_orders_not_done():
    rig = rig_with({'max_open_orders': 3})
    a = rig.client('a', account='live')
    rig.send(a, live('o1'))
    rig.send(a, dark('d1'))
    rig.send(a, live('o2'))
    rig.send(a, live('o3'))
    assert 'max_open_orders 3' in error_of(a, 'o3')
    rig.send(a, Cancel(oid='d1', symbol=SYM))  # a done order frees its place
    rig.send(a, live('o3'))
    assert [c.oid for c in orders_sent(rig)] == ['o1', 'o2', 'o3']


def test_max_long_and_short_count_position_and_open_orders():
    rig = rig_with({'max_long': 5, 'max_short': 2})
    set_position(rig, 3.0)
    a = rig.client('a', account='live')
    rig.send(a, live('b1', size=2))             # 3 + 2 = 5: just inside
    rig.send(a, live('b2', size=0.001))         # 3 + 2 open + 0.001: outside
    assert 'max_long 5' in error_of(a, 'b2')
    rig.send(a, live('s1', size=5, action='sell'))   # 3 - 5 = -2: just inside
    rig.send(a, live('s2', size=0.001, action='sell'))
    assert 'max_short 2' in error_of(a, 's2')
    assert [c.oid for c in orders_sent(rig)] == ['b1', 's1']


def test_modify_is_checked_like_a_new_order():
    rig = rig_with({'max_order_size': 5, 'price_band_pct': 10})
    a = rig.client('a', account='live')
    rig.send(a, live('o1', size=5))
    rig.venue_msg(BrokerdOrderAck(oid='o1', reqid=1))
    rig.venue_msg(BrokerdStatus(reqid=1, status='submitted'))
    rig.send(a, live('o1', size=6))
    assert 'max_order_size 5' in error_of(a, 'o1')
    rig.send(a, live('o1', size=4, price=120))
    assert 'price_band_pct 10' in error_of(a, 'o1')
    assert len(orders_sent(rig)) == 1
    rig.send(a, live('o1', size=4, price=101))
    assert len(orders_sent(rig)) == 2 and orders_sent(rig)[-1].size == 4


def test_reduce_only_orders():
    rig = rig_with({})
    set_position(rig, 3.0)
    a = rig.client('a', account='live')
    rig.send(a, live('buy', size=1, reduce_only=True))
    assert 'reduce-only order' in error_of(a, 'buy')
    rig.send(a, live('s4', size=4, action='sell', reduce_only=True))  # would cross through 0
    assert 'does not shrink' in error_of(a, 's4')
    rig.send(a, live('s2', size=2, action='sell', reduce_only=True))
    rig.send(a, live('s1', size=1, action='sell', reduce_only=True))  # 2 + 1 = 3: just inside
    rig.send(a, live('s0', size=0.5, action='sell', reduce_only=True))
    assert 'other sells open: 3' in error_of(a, 's0')
    assert [c.oid for c in orders_sent(rig)] == ['s2', 's1']


def test_dark_order_checked_again_at_trigger():
    """A dark buy accepted at submit, whose position limit is reached meanwhile, is not
    released: it ends dark_cancelled with the reason; nothing reaches the venue."""
    rig = rig_with({'max_long': 2})
    a = rig.client('a', account='live')
    rig.send(a, dark('d1', price=95.0, size=2))
    assert a.resps('d1') == ['dark_submitted']
    set_position(rig, 1.0)  # filled elsewhere meanwhile
    rig.scans.get(SYM).tick('ask', 94.0)
    assert a.resps('d1') == ['dark_submitted', 'dark_cancelled']
    assert 'max_long 2' in a.statuses('d1')[-1].reason
    assert orders_sent(rig) == []
    # the same at a flat position is released
    set_position(rig, 0.0)
    rig.send(a, dark('d2', price=95.0, size=2))
    rig.scans.get(SYM).tick('ask', 94.0)
    assert a.resps('d2') == ['dark_submitted', 'dark_triggered'] and orders_sent(rig)[0].oid == 'd2'


def test_order_and_cancel_rate_refill_on_the_fake_clock():
    rig = rig_with({'order_rate': 1, 'order_burst': 3, 'cancel_rate': 2, 'cancel_burst': 2})
    a = rig.client('a', account='live')
    b = rig.client('b', account='live', participant='bob')
    for i in range(3):
        rig.send(a, live(f'o{i}'))
    rig.send(a, live('o3'))
    assert 'order_rate 1/s (burst 3)' in error_of(a, 'o3')
    rig.send(b, live('b0'))  # another participant has its own bucket
    assert b.resps('b0') == []
    rig.clock.advance(0.999)
    rig.send(a, live('o4'))
    assert a.resps('o4') == ['error']
    rig.clock.advance(0.001)
    rig.send(a, live('o5'))
    assert a.resps('o5') == []
    assert [c.oid for c in orders_sent(rig)] == ['o0', 'o1', 'o2', 'b0', 'o5']
    for i in range(3):
        rig.send(a, Cancel(oid=f'o{i}', symbol=SYM))
    assert 'cancel_rate 2/s' in error_of(a, 'o2')
    rig.clock.advance(0.5)
    rig.venue_msg(BrokerdOrderAck(oid='o2', reqid=3))
    rig.send(a, Cancel(oid='o2', symbol=SYM))
    assert a.resps('o2') == ['error'] and rig.venues.sent(LIVE)[-1].reqid == 3  # the cancel went out


def _fifty(rig, a):
    """20 dark orders, 20 live orders (acked and working) and 10 alerts."""
    for i in range(20):
        rig.send(a, dark(f'd{i}', price=120.0 + i))
        rig.send(a, live(f'l{i}', price=95.0 + i / 10))
        rig.venue_msg(BrokerdOrderAck(oid=f'l{i}', reqid=i + 1))
        rig.venue_msg(BrokerdStatus(reqid=i + 1, status='submitted'))
    for i in range(10):
        rig.send(a, Order(action='alert', oid=f'a{i}', symbol=SYM, price=130.0 + i))


def test_halt_cancels_fifty_orders_of_three_kinds_refuses_new_and_resume_reenables(tmp_path):
    journal = Journal(tmp_path / 'emsd.sqlite')
    rig = Rig()
    rig.router.journal = journal
    a = rig.client('a', account='live')
    _fifty(rig, a)
    assert rig.router.stats()['phases'] == {'dark': 30, 'live': 20}
    out = rig.router.set_trading_state('*', HALTED, cancel_alerts=True)
    assert out['cancelled'] == 50 and out['states'] == {'*': 'halted'}
    cancels = [c for c in rig.venues.sent(LIVE) if not isinstance(c, BrokerdOrder)]
    assert sorted(c.reqid for c in cancels) == list(range(1, 21))
    for i in range(20):
        assert a.resps(f'd{i}')[-1] == 'dark_cancelled'
        rig.venue_msg(BrokerdStatus(reqid=i + 1, status='cancelled'))
        assert a.resps(f'l{i}')[-1] == 'broker_cancelled'
    assert all(a.resps(f'a{i}')[-1] == 'dark_cancelled' for i in range(10))
    sent = len(rig.venues.sent(LIVE))
    rig.send(a, live('new'))
    rig.send(a, dark('newdark'))
    assert 'trading is halted (cluster)' in error_of(a, 'new') and a.resps('newdark') == ['error']
    assert len(rig.venues.sent(LIVE)) == sent
    # an alert trades nothing: still accepted, and cancels still work while halted
    rig.send(a, Order(action='alert', oid='al', symbol=SYM, price=150.0))
    rig.send(a, Cancel(oid='al', symbol=SYM))
    assert a.resps('al') == ['alert_submitted', 'dark_cancelled']

    # the state survives a restart: a new Router from the same journal file
    journal.close()
    journal = Journal(tmp_path / 'emsd.sqlite')
    risk = RiskEngine(clock=rig.clock)
    for scope, state in journal.load_states().items():
        risk.set_state(scope, state)
    rig2 = Rig()
    rig2.router = Router(rig2.venues, rig2.scans, clock=rig2.clock, journal=journal, risk=risk)
    rig2.router.restore(journal.load())
    b = rig2.client('a', account='live')
    rig2.send(b, live('after'))
    assert 'halted' in error_of(b, 'after') and rig2.venues.sent(LIVE) == []
    rig2.router.set_trading_state('*', 'active')
    rig2.send(b, live('after2'))
    assert [c.oid for c in orders_sent(rig2)] == ['after2']
    assert journal.load_states() == {'*': 'active'}


def test_halt_of_one_account_leaves_the_others_and_keeps_alerts_by_default():
    rig = Rig()
    a = rig.client('a', account='live')
    rig.send(a, live('mine'))
    rig.send(a, live('theirs', account='other'))
    rig.send(a, Order(action='alert', oid='al', symbol=SYM, price=150.0, account='live'))
    out = rig.router.set_trading_state('live', HALTED)
    assert out['cancelled'] == 1 and out['states'] == {'*': 'active', 'live': 'halted'}
    assert a.resps('al') == ['alert_submitted']
    rig.send(a, live('again', account='other'))
    rig.send(a, live('nope', account='live'))
    assert 'trading is halted (account live)' in error_of(a, 'nope')
    assert [c.oid for c in orders_sent(rig)] == ['mine', 'theirs', 'again']


def test_reducing_state_accepts_only_orders_that_shrink():
    rig = Rig()
    set_position(rig, -2.0)
    a = rig.client('a', account='live')
    rig.router.set_trading_state('live', 'reducing')
    rig.send(a, live('sell', action='sell'))
    assert 'account live is reducing' in error_of(a, 'sell')
    rig.send(a, live('buy', size=2))
    assert [c.oid for c in orders_sent(rig)] == ['buy']


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match='max_order_sise'):
        parse_limits({'max_order_sise': 5})
    with pytest.raises(ValueError, match='risk.accounts.live.max_long'):
        parse_limits({'accounts': {'live': {'max_long': -1}}})
    with pytest.raises(ValueError, match='unknown trading state'):
        RiskEngine().set_state('*', 'paused')
    assert parse_limits(None) == {(None, None): Limits()}


def test_defaults_never_trip():
    """A newcomer's config (none) refuses nothing a real trader sends: big, fast orders and live
    limits within 50% of the last price pass the risk engine (only the price band and emsd's hard
    sanity bounds apply)."""
    rig = Rig()
    a = rig.client('a', account='live')
    for i in range(200):
        rig.send(a, live(f'o{i}', price=(101.0, 149.0, 51.0)[i % 3], size=1e5))
    assert len(orders_sent(rig)) == 200 and rig.router.risk.refused == 0
    assert rig.router.risk.idle  # the no-config fast path: only the band is checked


def test_default_price_band_refuses_a_2x_typo_and_accepts_1_2x():
    """With no config a live limit at last*2 (or last/10) is refused naming the default band;
    last*1.2 reaches the venue. Dark orders are not banded at submit (they rest in emsd)."""
    rig = Rig()
    a = rig.client('a', account='live')
    rig.send(a, live('typo', price=200.0))
    assert error_of(a, 'typo') == 'risk: price_band_pct 50: limit 200 is 100% from the last price 100'
    rig.send(a, live('tenth', price=10.0, action='sell'))
    assert 'risk: price_band_pct 50' in error_of(a, 'tenth')
    rig.send(a, live('ok', price=120.0))
    rig.send(a, dark('far', price=1000.0, action='sell'))
    assert [c.oid for c in orders_sent(rig)] == ['ok'] and a.resps('far') == ['dark_submitted']
    # a modify of the live order is banded too
    rig.send(a, live('ok', price=250.0))
    assert 'price_band_pct 50' in error_of(a, 'ok')


@pytest.mark.parametrize('risk', [{'price_band_pct': 0}, {'accounts': {'live': {'price_band_pct': 0}}}])
def test_price_band_off_with_zero(risk):
    """``price_band_pct = 0`` turns the band off (for every account, or one)."""
    rig = rig_with(risk)
    a = rig.client('a', account='live')
    rig.send(a, live('far', price=1000.0))
    assert [c.oid for c in orders_sent(rig)] == ['far'] and rig.router.risk.refused == 0


def test_idle_follows_the_trading_states():
    """The no-config fast path is taken only while every state is active: a halt (or a
    reducing account) turns it off, back to active turns it on; a configured limit keeps it off."""
    risk = RiskEngine()
    assert risk.idle
    risk.set_state('*', 'halted')
    assert not risk.idle
    assert risk.check_order(account='live', fqsn='btcusd.sim', action='buy', price=100.0, size=1,
                            live=True, last=100.0) == 'risk: trading is halted (cluster)'
    risk.set_state('*', 'active')
    risk.set_state('live', 'reducing')
    assert not risk.idle
    risk.set_state('live', 'active')
    assert risk.idle and risk.snapshot() == {'*': 'active'}
    assert not RiskEngine(parse_limits({'max_order_size': 5})).idle
