"""Regressions for the shared simulated-venue core (piker_ems.simvenue), without actors:
execution isolation (one order's bad execution never breaks another's fill or status), request
bounds, the injected clock, realized PnL, and venue state owned per actor (no globals)."""
from __future__ import annotations

import itertools
import math

import pytest
from _dialogue_helpers import drain
import tractor
import trio

from piker_ems.brokers.sim._exchange import SimExchange
from piker_ems.brokers.sim._venue import SimVenue, current_venue
from piker_ems.clearing._messages import BrokerdOrder
from piker_ems.clearing._paper import PaperEngine, engine_for
from piker_ems.simvenue._clock import FakeClock
from piker_ems.simvenue._core import ALREADY_REJECTED, UNKNOWN_ORDER, ClearingCore
from piker_ems.simvenue._dialogue import DialogueEngine
from piker_ems.service._state import owned
from piker_ems.simvenue._positions import Position, PositionBook, PositionError

from _dialogue_helpers import kinds, order


class Engine(DialogueEngine):
    def __init__(self, clock=None):
        ids = itertools.count(1)
        kw = {'clock': clock} if clock is not None else {}
        super().__init__('sim', lambda: next(ids), **kw)




def engine_with(*peers: str, bid: float = 100.0, ask: float = 100.5):
    e = Engine()
    e.on_quote('btcusd', {'bid': bid, 'ask': ask})
    ds = [e.open_dialogue(p) for p in peers]
    return e, ds


def all_finite(e: DialogueEngine) -> bool:
    return all(
        math.isfinite(p.size) and math.isfinite(p.avg_price) and math.isfinite(p.realized_pnl)
        for p in e.core.positions.all(include_flat=True)
    )


# -- the 1e306 case: one client's absurd orders never break another client's fills ------------

def test_two_huge_buys_do_not_break_another_dialogues_fill():
    e, (a, b) = engine_with('a', 'b')
    huge = [order('buy', 101.0, size=1e306), order('buy', 101.0, size=1e306)]
    for msg in huge:
        e.handle_raw(a, msg)
    errs = drain(a)
    assert kinds(errs) == ['error', 'error']
    assert [m['oid'] for m in errs] == [m['oid'] for m in huge]
    assert drain(b) == []
    # the same requests built without validation (a buggy caller) are refused by the core too
    for msg in huge:
        e.process(a, BrokerdOrder.model_construct(**{**msg, 'time_ns': 0}))
    errs = drain(a)
    assert kinds(errs) == ['error', 'error'] and all('size' in m['reason'] for m in errs)
    assert e.core.positions.all(include_flat=True) == [] and len(e.core.book) == 0

    normal = order('buy', 101.0, size=2)
    e.handle_raw(b, normal)
    seq = drain(b)
    assert kinds(seq) == ['ack', 'status:submitted', 'fill', 'status:filled', 'position']
    assert (seq[2]['price'], seq[2]['size']) == (100.5, 2)
    assert (seq[4]['size'], seq[4]['avg_price']) == (2, 100.5)
    assert kinds(drain(a)) == ['position']
    assert all_finite(e)


@pytest.mark.parametrize('price, size', [
    (float('nan'), 1.0), (float('inf'), 1.0), (101.0, float('-inf')), (0.0, 1.0), (101.0, 0.0),
    (-1.0, 1.0), (101.0, -2.0), (1e13, 1.0), (101.0, 1e13),
])
def test_requests_with_bad_numbers_are_refused_by_engine_and_core(price, size):
    e, (a,) = engine_with('a')
    raw = order('buy', 101.0, size=1.0) | {'price': price, 'size': size}
    e.handle_raw(a, raw)
    (err,) = drain(a)
    assert (err['name'], err['oid']) == ('error', raw['oid'])
    req = BrokerdOrder.model_construct(**{**raw, 'time_ns': 0})
    (err,), execs = e.core.submit(req)
    assert (err['name'], err['oid'], execs) == ('error', raw['oid'], [])
    assert len(e.core.book) == 0 and e.core.positions.all(include_flat=True) == []


def test_overflowing_position_fails_only_that_order():
    """A marketable sell at an absurd (but finite) bid would make the position inf: that order
    gets an error for its reqid, nothing is booked, and later orders on the same position fill."""
    e, (a, b) = engine_with('a', 'b', bid=1e300, ask=1e300 + 1e290)
    bad = order('sell', 1.0, size=1e12)
    e.handle_raw(a, bad)
    ack, sub, err = drain(a)
    assert kinds([ack, sub, err]) == ['ack', 'status:submitted', 'error']
    assert (err['reqid'], err['oid']) == (ack['reqid'], bad['oid'])
    assert 'finite' in err['reason']
    assert drain(b) == []                       # no position was booked, none is sent
    assert e.core.positions.all(include_flat=True) == []
    assert e.core.closed(ack['reqid']) == 'rejected'
    assert (e.core.executions, e.core.failed_executions) == (0, 1)
    # a cancel of the failed order: refused, naming why
    e.handle_raw(a, {'name': 'cancel', 'oid': bad['oid'], 'reqid': ack['reqid']})
    (cerr,) = drain(a)
    assert cerr['reason'] == ALREADY_REJECTED

    e.on_quote('btcusd', {'bid': 100.0, 'ask': 100.5})
    e.handle_raw(b, order('sell', 99.0, size=3))
    seq = drain(b)
    assert kinds(seq) == ['ack', 'status:submitted', 'fill', 'status:filled', 'position']
    assert (seq[4]['size'], seq[4]['avg_price']) == (-3, 100.0)
    assert all_finite(e)


def test_a_crossed_resting_order_always_reports_fill_and_status(monkeypatch):
    """One quote crosses two resting orders; settling the first fails unexpectedly (a bug):
    the other still gets fill + filled + position, the failing one an error for its reqid."""
    e, (a, b) = engine_with('a', 'b')
    e.handle_raw(a, order('buy', 99.0, oid='bad'))
    e.handle_raw(b, order('buy', 98.0, oid='good'))
    (ack_bad, _), (ack_good, _) = drain(a), drain(b)
    real = e.core.settle

    def settle(ex):
        if ex.oid == 'bad':
            raise RuntimeError('boom')
        return real(ex)

    monkeypatch.setattr(e.core, 'settle', settle)
    e.on_quote('btcusd', {'bid': 97.0, 'ask': 97.5})   # crosses both (bad first: better price)
    err, other_pos = drain(a)       # its error, then the other order's position (sent to all)
    assert (err['name'], err['reqid'], err['oid']) == ('error', ack_bad['reqid'], 'bad')
    assert 'boom' in err['reason'] and other_pos['name'] == 'position'
    fill, filled, pos = drain(b)
    assert kinds([fill, filled, pos]) == ['fill', 'status:filled', 'position']
    assert (fill['reqid'], fill['price'], filled['remaining']) == (ack_good['reqid'], 98.0, 0)
    assert (pos['size'], pos['avg_price']) == (1, 98.0)
    assert len(e.core.book) == 0 and e.failures == 1
    # the engine keeps working for everyone
    e.handle_raw(a, order('sell', 90.0, oid='later'))
    assert kinds(drain(a)) == ['ack', 'status:submitted', 'fill', 'status:filled', 'position']


def test_a_failing_delayed_report_still_answers(monkeypatch):
    """An engine whose execute() itself raises: the order gets an error, the loop survives."""
    e, (a,) = engine_with('a')

    def execute(ex):
        raise ValueError('no way')

    monkeypatch.setattr(e, 'execute', execute)
    e.handle_raw(a, order('buy', 101.0, oid='x'))
    ack, sub, err = drain(a)
    assert kinds([ack, sub, err]) == ['ack', 'status:submitted', 'error']
    assert err['reqid'] == ack['reqid'] and 'no way' in err['reason']


def test_modify_and_cancel_of_unknown_or_finished_reqids_are_refused():
    e, (a,) = engine_with('a')
    e.handle_raw(a, order('buy', 101.0, oid='f'))
    ack, *_ = drain(a)
    for raw in (
        order('buy', 102.0, reqid=ack['reqid'], oid='f'),
        order('buy', 102.0, reqid='nope', oid='g'),
        {'name': 'cancel', 'oid': 'f', 'reqid': ack['reqid']},
        {'name': 'cancel', 'oid': 'g', 'reqid': 'nope'},
    ):
        e.handle_raw(a, raw)
    errs = drain(a)
    assert kinds(errs) == ['error'] * 4
    assert [m['reason'] for m in errs] == ['order already filled', UNKNOWN_ORDER] * 2


# -- the clock -------------------------------------------------------------------------------

def _run_with(clock: FakeClock) -> list[dict]:
    e = Engine(clock=clock)
    e.on_quote('btcusd', {'bid': 100.0, 'ask': 100.5})
    d = e.open_dialogue('a')
    e.handle_raw(d, order('buy', 99.0, oid='r'))
    clock.advance(2.5)
    e.on_quote('btcusd', {'bid': 98.0, 'ask': 98.5})
    return drain(d) + [{'journal': e.stats()['journal']}]


def test_the_fake_clock_drives_the_core_deterministically():
    clock = FakeClock(start_ns=1_000_000_000_000, step_ns=0)
    out = _run_with(clock)
    ack, sub, fill, filled, pos, journal = out
    assert sub['time_ns'] == 1_000_000_000_000
    assert fill['time_ns'] == filled['time_ns'] == 1_002_500_000_000
    assert fill['broker_time'] == pytest.approx(1002.5)
    assert {j['time_ns'] for j in journal['journal']} == {1_000_000_000_000, 1_002_500_000_000}
    # same inputs, same clock: byte-identical output (no hidden wall-clock read)
    assert _run_with(FakeClock(start_ns=1_000_000_000_000)) == out
    core = ClearingCore('sim', iter(range(1, 9)).__next__, clock=FakeClock(start_ns=5))
    core.on_quote('x', {'ask': 10.0})
    _, (ex,) = core.submit(BrokerdOrder(action='buy', oid='o', symbol='x', price=10.0, size=1.0))
    assert ex.time_ns == 5 and core.settle(ex)[0][0]['broker_time'] == 5e-9


def test_fake_clock_never_goes_back():
    clock = FakeClock(start_ns=10, step_ns=3)
    assert (clock(), clock(), clock.advance(ns=4), clock()) == (10, 13, 20, 20)
    with pytest.raises(ValueError):
        clock.advance(-1)


# -- positions: realized PnL and all-or-nothing booking ---------------------------------------

@pytest.mark.parametrize('fills, size, avg, pnl', [
    ([('buy', 2, 100), ('sell', 1, 110)], 1, 100, 10),
    ([('buy', 2, 100), ('sell', 5, 90)], -3, 90, -20),       # cross: realize the old 2 only
    ([('sell', 2, 50), ('buy', 2, 40)], 0, 0, 20),           # short covered lower: profit
    ([('buy', 1, 10), ('buy', 1, 20), ('sell', 2, 12)], 0, 0, -6),
])
def test_realized_pnl(fills, size, avg, pnl):
    pos = Position('paper', 'x')
    for action, sz, px in fills:
        pos.apply(action, sz, px)
    assert (pos.size, pos.avg_price, pos.realized_pnl) == (size, pytest.approx(avg), pytest.approx(pnl))


def test_invalid_position_update_changes_nothing():
    book = PositionBook()
    book.apply('a', 'x', 'buy', 1e12, 1e12)
    before = book.get('a', 'x')
    for args in [('buy', 1e12, 1e300), ('sell', 1.0, float('nan')), ('buy', float('inf'), 1.0), ('buy', 0.0, 1.0)]:
        with pytest.raises(PositionError):
            book.apply('a', 'x', *args)
    assert book.get('a', 'x') == before and math.isfinite(before.size * before.avg_price)


# -- no globals: engines, venues and exchanges are independent objects owned per actor --------

def test_two_paper_engines_in_one_process_are_independent():
    p1, p2 = PaperEngine('sim'), PaperEngine('sim')
    for p in (p1, p2):
        p.feeds['btcusd'] = 'live'      # stand-in for the feed task (no actor here)
        p.on_quote('btcusd', {'bid': 100.0, 'ask': 100.5})
    d1 = p1.open_dialogue('one')
    p1.handle_raw(d1, order('buy', 99.0))
    p1.handle_raw(d1, order('buy', 101.0))
    assert len(p1.core.book) == 1 and len(p2.core.book) == 0
    assert len(p1.core.positions.all()) == 1 and p2.core.positions.all() == []
    assert (p1.stats()['received'], p2.stats()['received']) == (2, 0)


def test_two_sim_exchanges_in_one_process_are_independent():
    x1 = SimExchange(SimVenue(), ack_delay=0.0, fill_delay=0.0)
    x2 = SimExchange(SimVenue(), ack_delay=0.0, fill_delay=0.0)
    d1, d2 = x1.open_dialogue('one'), x2.open_dialogue('two')
    start = x1.venue.market('btcusd').bid
    x1.handle_raw(d1, order('sell', start + 5))
    x2.handle_raw(d2, order('sell', start + 5))
    (a1, _), (a2, _) = drain(d1), drain(d2)
    assert a1['reqid'] == a2['reqid'] == 1          # each has its own reqid sequence
    x1.venue.market('btcusd').set_price(start + 10)   # only venue 1 moves
    assert kinds(drain(d1)) == ['fill', 'status:filled', 'position']
    assert drain(d2) == [] and len(x2.core.book) == 1
    assert x1.venue.markets['btcusd'] is not x2.venue.markets['btcusd']


def test_owned_state_is_per_actor():
    class FakeActor:
        pass

    one, two = FakeActor(), FakeActor()
    a = owned('k', object, actor=one)
    assert owned('k', object, actor=one) is a
    assert owned('k', object, actor=two) is not a


def test_engines_live_on_the_running_actor_and_die_with_it(reg_addr):
    """Within one actor the same objects come back; a new actor starts with fresh ones."""
    seen = []

    async def main():
        async with tractor.open_root_actor(name='owner', arbiter_addr=reg_addr, loglevel='error'):
            paper, venue = engine_for('sim'), current_venue()
            assert engine_for('sim') is paper and current_venue() is venue
            assert engine_for('other') is not paper
            seen.append((paper, venue))

    trio.run(main)
    trio.run(main)
    (p1, v1), (p2, v2) = seen
    assert p1 is not p2 and v1 is not v2


def test_average_price_has_no_float_residue():
    """Seen by a trader after a restart: a position of 3 at 171.39000000000001."""
    pos = Position('paper', 'btcusd')
    pos.apply('buy', 2.0, 171.93)
    pos.apply('buy', 1.0, 170.31)
    assert (pos.size, pos.avg_price) == (3.0, 171.39)
