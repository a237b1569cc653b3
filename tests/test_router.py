"""The Router driven in-process (fake venues, scans and clock): the defects of issue 8, each
reproduced as the user met it, plus routing and bounds."""
import inspect

import pytest
from _router_fakes import Rig

from piker_ems.clearing import _router, _statuses
from piker_ems.clearing._messages import (
    BrokerdCancel,
    BrokerdError,
    BrokerdFill,
    BrokerdOrder,
    BrokerdOrderAck,
    BrokerdStatus,
    Cancel,
    Order,
)

SYM = 'btcusd.sim'
LIVE = ('sim', 'live')


def live(oid, price=101.0, size=1.0, action='buy'):
    return Order(action=action, oid=oid, symbol=SYM, price=price, size=size, exec_mode='live', account='live')


def dark(oid, price=105.0, size=1.0, action='buy'):
    return Order(action=action, oid=oid, symbol=SYM, price=price, size=size, exec_mode='dark')


def finals(conn, oid):
    return [r for r in conn.resps(oid) if _statuses.is_final(r)]


def test_client_handling_never_waits():
    """Head-of-line blocking: nothing in a client's message path may await (a venue opening
    or respawning must not stall cancels or other clients' dark orders)."""
    from piker_ems.clearing._router import Router

    for name in ('handle_client_msg', 'submit', 'modify', 'cancel', 'on_venue_msg', 'on_trigger',
                 'on_venue_lost', 'drop_client'):
        assert not inspect.iscoroutinefunction(getattr(Router, name)), name


def test_marketable_order_cancelled_at_once_gets_one_final_status():
    rig = Rig()
    a = rig.client('a')
    rig.send(a, live('o1'))
    rig.send(a, Cancel(oid='o1', symbol=SYM))  # before the ack: pending, nothing sent yet
    assert [type(c).__name__ for c in rig.venue().sent] == ['BrokerdOrder']
    rig.venue_msg(BrokerdOrderAck(oid='o1', reqid=7))
    assert isinstance(rig.venue().sent[-1], BrokerdCancel) and rig.venue().sent[-1].reqid == 7
    rig.venue_msg(BrokerdStatus(reqid=7, status='submitted'))
    rig.venue_msg(BrokerdFill(reqid=7, action='buy', size=1, price=100.5))
    rig.venue_msg(BrokerdStatus(reqid=7, status='filled', filled=1, remaining=0))
    rig.venue_msg(BrokerdError(reqid=7, reason='order already filled'))  # the cancel's refusal
    assert a.resps('o1') == ['broker_submitted', 'broker_filled', 'broker_executed']
    assert rig.router.illegal_events == rig.router.late_events == 1  # counted, as expected late


def test_cancel_then_modify_is_one_final_and_a_refusal():
    rig = Rig()
    a = rig.client('a')
    rig.send(a, live('o1'))
    rig.venue_msg(BrokerdOrderAck(oid='o1', reqid=7))
    rig.venue_msg(BrokerdStatus(reqid=7, status='submitted'))
    rig.send(a, Cancel(oid='o1', symbol=SYM))
    rig.venue_msg(BrokerdStatus(reqid=7, status='cancelled'))
    rig.send(a, live('o1', price=99.0))
    assert a.resps('o1') == ['broker_submitted', 'broker_cancelled', 'error']
    assert finals(a, 'o1') == ['broker_cancelled']
    assert len(rig.venue().sent) == 2  # the order and the cancel; the modify never left


def test_failed_venue_send_is_one_final_status():
    rig = Rig()
    a = rig.client('a')
    rig.venue().refuse = 'trades dialogue sim.live did not open'
    rig.send(a, live('o1'))
    assert a.resps('o1') == ['broker_errored']
    assert 'did not open' in a.statuses('o1')[0].reason


def test_overfill_is_refused_and_never_relayed():
    rig = Rig()
    a = rig.client('a')
    rig.send(a, live('o1', size=1))
    rig.venue_msg(BrokerdOrderAck(oid='o1', reqid=1))
    for _ in range(5):
        rig.venue_msg(BrokerdFill(reqid=1, action='buy', size=0.6, price=100))
    fills = [s for s in a.statuses('o1') if s.resp == 'broker_filled']
    assert len(fills) == 1 and rig.router.orders['o1'].machine.filled == pytest.approx(0.6)
    assert rig.router.illegal_events == 4


def test_nothing_is_relayed_after_a_final_status():
    rig = Rig()
    a = rig.client('a')
    rig.send(a, live('o1'))
    rig.venue_msg(BrokerdOrderAck(oid='o1', reqid=1))
    rig.venue_msg(BrokerdStatus(reqid=1, status='cancelled'))
    for msg in (BrokerdStatus(reqid=1, status='submitted'), BrokerdStatus(reqid=1, status='held'),
                BrokerdFill(reqid=1, action='buy', size=1, price=100), BrokerdError(reqid=1, reason='x')):
        rig.venue_msg(msg)
    assert a.resps('o1') == ['broker_cancelled']


def test_an_ack_for_a_dark_order_does_not_close_it():
    rig = Rig()
    a = rig.client('a')
    rig.send(a, dark('d1', price=105))
    rig.venue_msg(BrokerdOrderAck(oid='d1', reqid=9), key=('sim', 'paper'))
    rig.venue_msg(BrokerdStatus(reqid=9, status='filled', remaining=0), key=('sim', 'paper'))
    assert a.resps('d1') == ['dark_submitted']
    assert rig.router.orders['d1'].state == 'armed' and len(rig.scans.get(SYM)) == 1
    rig.scans.get(SYM).tick('ask', 105.0)  # it still fires, once
    assert a.resps('d1') == ['dark_submitted', 'dark_triggered']


def test_status_words_follow_the_open_set_rule():
    rig = Rig()
    a = rig.client('a')
    rig.send(a, live('o1'))
    rig.venue_msg(BrokerdOrderAck(oid='o1', reqid=1))
    rig.venue_msg(BrokerdStatus(reqid=1, status='Held'))
    rig.venue_msg(BrokerdStatus(reqid=1, status='</script> x'))
    assert a.resps('o1') == ['broker_held']
    assert not _statuses.is_final('broker_held') and rig.router.illegal_events == 1


def test_a_venue_error_after_the_ack_ends_the_order():
    rig = Rig()
    a = rig.client('a')
    rig.send(a, live('o1'))
    rig.venue_msg(BrokerdOrderAck(oid='o1', reqid=1))
    rig.venue_msg(BrokerdError(reqid=1, reason='insufficient balance'))
    assert a.resps('o1') == ['broker_errored']
    assert rig.router.orders['o1'].machine.final


def test_events_before_their_ack_are_held_and_replayed():
    rig = Rig()
    a = rig.client('a')
    rig.send(a, live('o1'))
    rig.venue_msg(BrokerdStatus(reqid=5, status='submitted'))
    rig.venue_msg(BrokerdFill(reqid=5, action='buy', size=1, price=100.9))
    assert a.resps('o1') == []
    rig.venue_msg(BrokerdOrderAck(oid='o1', reqid=5))
    assert a.resps('o1') == ['broker_submitted', 'broker_filled', 'broker_executed']


def test_statuses_reach_only_owner_and_watchers():
    rig = Rig()
    a = rig.client('a')
    a2 = rig.client('a')  # a second connection of the same client
    w = rig.client('w', watch='symbol')
    wall = rig.client('wall', fqsn='ethusd.sim', watch='all')
    other_sym = rig.client('x', fqsn='ethusd.sim', watch='symbol')
    stranger = rig.client('s')
    rig.send(a, dark('d1'))
    for conn in (a, a2, w, wall):
        assert conn.resps('d1') == ['dark_submitted'], conn
    assert other_sym.got == [] and stranger.got == []
    rig.send(stranger, Cancel(oid='d1', symbol=SYM))
    refused = stranger.statuses('d1')[0]
    assert refused.resp == 'error' and refused.req is None and refused.owner is None  # no leak
    assert a.resps('d1') == ['dark_submitted']


def test_watchers_joining_or_leaving_between_statuses_are_heard_from_then_on():
    """The audience of an order's statuses follows connects and leaves."""
    rig = Rig()
    a = rig.client('a')
    w1 = rig.client('w1', watch='symbol')
    rig.send(a, dark('d1'))
    rig.send(a, dark('d2'))
    w2 = rig.client('w2', watch='symbol')
    wall = rig.client('wall', fqsn='ethusd.sim', watch='all')
    rig.router.drop_client(w1)
    rig.send(a, Cancel(oid='d1', symbol=SYM))
    assert w1.resps() == ['dark_submitted', 'dark_submitted']  # nothing after it left
    assert w2.resps('d1') == wall.resps('d1') == ['dark_cancelled']
    a2 = rig.client('a')
    rig.send(a, Cancel(oid='d2', symbol=SYM))
    assert a2.resps('d2') == w2.resps('d2') == ['dark_cancelled']
    assert a.resps() == ['dark_submitted', 'dark_submitted', 'dark_cancelled', 'dark_cancelled']


def test_disconnect_cancel_policy_applies_with_another_connection_of_the_same_name():
    rig = Rig()
    a1 = rig.client('a', on_disconnect='cancel')
    a2 = rig.client('a')
    rig.send(a1, dark('d1'))
    rig.send(a1, live('o1'))
    rig.venue_msg(BrokerdOrderAck(oid='o1', reqid=3))
    rig.router.drop_client(a1)
    assert a2.resps('d1') == ['dark_submitted', 'dark_cancelled']
    assert isinstance(rig.venue().sent[-1], BrokerdCancel)
    rig.venue_msg(BrokerdStatus(reqid=3, status='cancelled'))
    assert a2.resps('o1')[-1] == 'broker_cancelled'  # its end still reaches the client


def test_kept_orders_of_a_leaving_connection_reach_the_other_connection():
    rig = Rig()
    a1 = rig.client('a')
    a2 = rig.client('a')
    rig.send(a1, live('o1'))
    rig.router.drop_client(a1)
    rig.venue_msg(BrokerdOrderAck(oid='o1', reqid=3))
    rig.venue_msg(BrokerdFill(reqid=3, action='buy', size=1, price=100))
    assert a2.resps('o1') == ['broker_filled', 'broker_executed']


@pytest.mark.parametrize('symbol', ['x y.sim', 'bad\x00.sim', 'a' * 1_000_000 + '.sim', '.sim', 'btc.s!m'])
def test_junk_symbols_are_refused_before_any_feed(symbol):
    rig = Rig()
    a = rig.client('a')
    rig.send(a, {'action': 'alert', 'oid': 'j', 'symbol': symbol, 'price': 1.0})
    assert a.resps() == ['error'] and rig.scans.scans == {}


def test_an_idle_scan_is_closed():
    rig = Rig()
    a = rig.client('a', fqsn='ethusd.sim')
    rig.send(a, dark('d1'))  # on btcusd.sim, where no client is connected
    assert 'btcusd.sim' in rig.scans.scans
    rig.send(a, Cancel(oid='d1', symbol=SYM))
    assert rig.scans.closed == ['btcusd.sim']


@pytest.mark.parametrize('size, price, why', [
    (2e9, 100.0, 'lots'),        # 2e12 lots of 0.001
    (1e6, 1e10, 'notional'),   # 1e9 lots is in bounds; a notional of 1e16 is not
])
def test_size_and_notional_bounds(size, price, why):
    rig = Rig()
    a = rig.client('a')
    rig.send(a, live('o1', size=size, price=price))
    st = a.statuses('o1')
    assert [s.resp for s in st] == ['error'] and why in st[0].reason
    assert rig.venue().sent == []


@pytest.mark.parametrize('field, value', [('size', 1e306), ('size', -1), ('price', float('inf')), ('price', 0)])
def test_absurd_requests_are_refused(field, value):
    rig = Rig()
    a = rig.client('a')
    msg = live('o1').model_dump(mode='json') | {field: value}
    rig.send(a, msg)
    assert a.resps() == ['error'] and rig.router.orders == {}


def test_venue_lost_is_reconnected_then_given_up_and_spares_dark_orders():
    rig = Rig()
    a = rig.client('a')
    rig.send(a, live('o1'))
    rig.send(a, dark('d1'))
    rig.venue_msg(BrokerdOrderAck(oid='o1', reqid=1))
    rig.venues.lose(LIVE, 'heartbeat lost')
    assert a.resps('o1') == ['broker_disconnected'] and 'heartbeat lost' in a.statuses('o1')[0].reason
    assert rig.venues.reopened == [LIVE]  # emsd reopens it to reconcile
    rig.clock.advance(_router.VENUE_GIVEUP_S + 1)
    rig.venues.lose(LIVE, 'spawn failed')
    assert a.resps('o1') == ['broker_disconnected', 'broker_errored']
    assert rig.router.orders['d1'].state == 'armed'


def test_a_modify_refused_by_the_venue_restores_the_working_price():
    rig = Rig()
    a = rig.client('a')
    rig.send(a, live('o1', price=101))
    rig.venue_msg(BrokerdOrderAck(oid='o1', reqid=1))
    rig.venue_msg(BrokerdStatus(reqid=1, status='submitted'))
    rig.send(a, live('o1', price=99))
    sent = rig.venue().sent[-1]
    assert isinstance(sent, BrokerdOrder) and (sent.reqid, sent.price) == (1, 99)
    rig.venue_msg(BrokerdError(reqid=1, reason='price off the band'))
    last = a.statuses('o1')[-1]
    assert (last.resp, last.req.price) == ('error', 101) and 'off the band' in last.reason
    assert rig.router.orders['o1'].state == 'working'


def test_a_failing_event_is_contained_and_the_next_order_is_still_handled(monkeypatch):
    """One order whose handling raises (a bug) must not stop a venue's teardown, a relay or a
    client loop: the Router logs it, counts it and goes on with the next order."""
    from piker_ems.clearing import _machine

    rig = Rig()
    a = rig.client('a')
    rig.send(a, live('o1'))
    rig.send(a, live('o2'))
    real = _machine.OrderMachine._on_venue_down

    def broken_for_o1(self, ev, fx, now):
        if self.oid == 'o1':
            raise RuntimeError('handler bug')
        return real(self, ev, fx, now)

    monkeypatch.setattr(_machine.OrderMachine, '_on_venue_down', broken_for_o1)
    rig.venues.lose(LIVE, 'gone')  # must not raise
    assert rig.router.apply_failures == 1
    assert a.resps('o1') == [] and a.resps('o2') == ['broker_disconnected']
    assert rig.router.orders['o1'].state == 'pending_new'  # the failed event changed nothing


def test_a_request_that_hits_a_bug_gets_an_error_and_the_connection_carries_on(monkeypatch):
    """One request whose handling raises (here the rate check) must not end the client's
    receive loop: an ``error`` to the sender, counted, and the next request goes through."""
    rig = Rig()
    a = rig.client('a')
    calls = []

    def broken(conn, msg):
        calls.append(msg.oid)
        if msg.oid == 'bad':
            raise RuntimeError('boom')
        return None

    monkeypatch.setattr(rig.router, '_risk_rate', broken)
    rig.send(a, dark('bad'))
    assert a.resps('bad') == ['error'] and 'boom' in a.statuses('bad')[-1].reason
    assert rig.router.stats()['client_failures'] == 1
    rig.send(a, dark('good'))
    assert calls == ['bad', 'good'] and a.resps('good') == ['dark_submitted']
