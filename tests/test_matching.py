"""The shared simulated-venue core (piker_ems.simvenue: book, positions, clearing core,
dialogue engine), without actors.

Exact message sequences for new/modify/cancel, resting-order execution from quotes (ticks in
order, best price first), position accounting, invalid requests, and the engine plumbing driven
through a fake dialogue.
"""
from __future__ import annotations

import itertools

import pytest
from _dialogue_helpers import drain

from piker_ems.simvenue._book import OrderBook, RestingOrder, crosses
from piker_ems.simvenue._core import ALREADY_CANCELLED, ALREADY_FILLED, UNKNOWN_ORDER, ClearingCore
from piker_ems.simvenue._dialogue import Dialogue, DialogueEngine
from piker_ems.simvenue._positions import Position, PositionBook
from piker_ems.clearing._messages import (
    BrokerdCancel,
    BrokerdOrder,
    parse_brokerd_msg,
)


def core() -> ClearingCore:
    ids = itertools.count(1)
    c = ClearingCore('sim', lambda: next(ids))
    c.on_quote('btcusd', {'bid': 100.0, 'ask': 100.5})
    return c


def order(action='buy', price=100.0, size=1.0, reqid=None, oid='o1', symbol='btcusd', **kw):
    return BrokerdOrder(action=action, oid=oid, reqid=reqid, symbol=symbol, price=price, size=size, **kw)


def names(msgs):
    return [(m['name'], m.get('status')) for m in msgs]


def settle_all(c, execs):
    out = []
    for ex in execs:
        msgs, pos = c.settle(ex)
        out += msgs + [pos]
    return out


# -- crossing rule ---------------------------------------------------------------------------

def test_crosses():
    assert crosses('buy', 100.0, 100.0) and crosses('buy', 100.0, 99.0)
    assert not crosses('buy', 100.0, 100.01)
    assert crosses('sell', 100.0, 100.0) and crosses('sell', 100.0, 101.0)
    assert not crosses('sell', 100.0, 99.99)
    # float residue on the tick grid still counts as a touch
    assert crosses('buy', 0.3, 0.1 + 0.2) and crosses('sell', 0.1 + 0.2, 0.3)


# -- order book ------------------------------------------------------------------------------

def mk(reqid, action, price, symbol='x'):
    return RestingOrder(reqid=reqid, oid=f'o{reqid}', account='paper', symbol=symbol,
                        action=action, price=price, size=1.0)


def test_book_crossed_best_price_then_time_priority():
    book = OrderBook()
    for rid, px in [(1, 99.0), (2, 101.0), (3, 100.0), (4, 101.0), (5, 98.0)]:
        book.add(mk(rid, 'buy', px))
    book.add(mk(6, 'sell', 102.0))
    assert [o.reqid for o in book.crossed('x', 'buy', 102.0)] == []  # buys >= 102: none
    assert [o.reqid for o in book.crossed('x', 'buy', 100.0)] == [2, 4, 3]
    assert sorted(o.reqid for o in book.orders()) == [1, 5, 6]
    assert [o.reqid for o in book.crossed('x', 'sell', 101.0)] == []
    assert [o.reqid for o in book.crossed('x', 'sell', 102.0)] == [6]
    assert book.best('x', 'buy').reqid == 1


def test_book_symbols_are_separate():
    book = OrderBook()
    book.add(mk(1, 'buy', 100.0, 'a'))
    book.add(mk(2, 'buy', 100.0, 'b'))
    assert [o.reqid for o in book.crossed('a', 'buy', 90.0)] == [1]
    assert 2 in book and 1 not in book


def test_book_update_and_remove_are_lazy_and_compacted():
    book = OrderBook()
    book.add(mk(1, 'sell', 105.0))
    book.update(1, price=110.0, size=2.0)
    assert book.crossed('x', 'sell', 106.0) == []          # stale 105 entry ignored
    assert [o.reqid for o in book.crossed('x', 'sell', 110.0)] == [1]
    book.add(mk(2, 'sell', 105.0))
    assert book.remove(2).reqid == 2 and book.remove(2) is None
    assert book.crossed('x', 'sell', 200.0) == []
    book.add(mk(3, 'buy', 1.0))
    with pytest.raises(KeyError):
        book.add(mk(3, 'buy', 2.0))   # a reqid rests only once
    # heavy modify churn: heap items stay bounded by the live count
    for i in range(1000):
        book.update(3, price=1.0 + i * 0.01, size=1.0)
    assert book.heap_items() <= 2 * len(book) + 66
    assert [o.reqid for o in book.crossed('x', 'buy', 10.99)] == [3]


# -- positions -------------------------------------------------------------------------------

@pytest.mark.parametrize('fills, size, avg', [
    ([('buy', 1, 100)], 1, 100),
    ([('buy', 1, 100), ('buy', 3, 104)], 4, 103),             # weighted add
    ([('buy', 4, 100), ('sell', 1, 120)], 3, 100),            # reduce keeps the average
    ([('buy', 2, 100), ('sell', 2, 90)], 0, 0),               # flat
    ([('buy', 2, 100), ('sell', 5, 90)], -3, 90),             # cross through zero restarts
    ([('sell', 2, 50), ('sell', 2, 60)], -4, 55),             # short add
    ([('sell', 2, 50), ('buy', 1, 40)], -1, 50),              # short reduce
    ([('sell', 1, 50), ('buy', 3, 45)], 2, 45),               # short crosses to long
    ([('buy', 0.1, 10), ('buy', 0.2, 10), ('sell', 0.3, 11)], 0, 0),  # float residue -> flat
])
def test_position_accounting(fills, size, avg):
    pos = Position('paper', 'x')
    for action, sz, px in fills:
        pos.apply(action, sz, px)
    assert pos.size == size
    assert pos.avg_price == pytest.approx(avg)


def test_position_book_per_account_and_symbol():
    book = PositionBook()
    book.apply('a', 'x', 'buy', 1, 10)
    book.apply('b', 'x', 'sell', 2, 11)
    book.apply('a', 'y', 'buy', 3, 12)
    book.apply('a', 'y', 'sell', 3, 13)
    assert (book.get('a', 'x').size, book.get('b', 'x').size, book.get('a', 'y').size) == (1, -2, 0)
    assert book.get('zz', 'x').size == 0
    assert len(book.all()) == 2 and len(book.all(include_flat=True)) == 3


# -- the core: exact sequences ---------------------------------------------------------------

def test_marketable_buy_fills_at_ask():
    c = core()
    msgs, execs = c.submit(order('buy', price=101.0, size=2))
    assert names(msgs) == [('ack', None), ('status', 'submitted')]
    assert msgs[0]['oid'] == 'o1' and msgs[0]['reqid'] == 1
    assert msgs[1]['remaining'] == 2 and msgs[1]['filled'] == 0
    assert len(execs) == 1 and execs[0].price == 100.5 and execs[0].size == 2
    out = settle_all(c, execs)
    assert names(out) == [('fill', None), ('status', 'filled'), ('position', None)]
    fill, filled, pos = out
    assert (fill['reqid'], fill['action'], fill['size'], fill['price']) == (1, 'buy', 2, 100.5)
    assert fill['broker_details']['oid'] == 'o1' and fill['broker_details']['symbol'] == 'btcusd'
    assert (filled['filled'], filled['remaining']) == (2, 0)
    assert (pos['broker'], pos['account'], pos['symbol'], pos['size'], pos['avg_price']) == \
        ('sim', 'paper', 'btcusd', 2, 100.5)
    for m in msgs + out:
        parse_brokerd_msg(m)  # every message is valid for emsd
    assert len(c.book) == 0 and c.closed(1) == 'filled'


def test_marketable_sell_fills_at_bid():
    c = core()
    _, execs = c.submit(order('sell', price=99.0))
    assert execs[0].price == 100.0


def test_resting_orders_fill_at_their_limit_on_later_quote():
    c = core()
    _, e1 = c.submit(order('buy', price=99.0, oid='b'))
    _, e2 = c.submit(order('sell', price=102.0, oid='s'))
    assert e1 == e2 == [] and len(c.book) == 2
    assert c.on_quote('btcusd', {'bid': 99.5, 'ask': 100.0}) == []
    ex = c.on_quote('btcusd', {'bid': 98.0, 'ask': 98.5})   # ask through the buy
    assert [(x.oid, x.price) for x in ex] == [('b', 99.0)]
    ex = c.on_quote('btcusd', {'bid': 103.0, 'ask': 103.5})
    assert [(x.oid, x.price) for x in ex] == [('s', 102.0)]


def test_intermediate_ticks_of_a_batched_quote_cross():
    c = core()
    c.submit(order('buy', price=99.0))
    quote = {
        'bid': 100.0, 'ask': 100.5,   # the final state does not cross...
        'ticks': [{'type': 'ask', 'price': 98.9, 'size': 1}, {'type': 'ask', 'price': 100.5, 'size': 1}],
    }
    assert [x.price for x in c.on_quote('btcusd', quote)] == [99.0]   # ...an earlier tick did


def test_quotes_for_other_symbols_or_trades_do_not_fill():
    c = core()
    c.submit(order('buy', price=99.0))
    assert c.on_quote('ethusd', {'bid': 1.0, 'ask': 1.0}) == []
    assert c.on_quote('btcusd', {'ticks': [{'type': 'trade', 'price': 1.0, 'size': 5}]}) == []
    assert c.on_quote('btcusd', {'bid': None, 'ask': float('nan')}) == []
    assert len(c.book) == 1


def test_no_l1_rests_until_a_quote():
    c = ClearingCore('sim', iter(range(1, 99)).__next__)
    assert not c.has_l1('x')
    _, execs = c.submit(order('buy', price=10.0, symbol='X'))
    assert execs == [] and c.book.orders()[0].symbol == 'x'
    assert [e.price for e in c.on_quote('X', {'ask': 9.0})] == [10.0]


def test_modify_keeps_reqid_and_rechecks_marketability():
    c = core()
    msgs, _ = c.submit(order('buy', price=99.0, size=1))
    rid = msgs[0]['reqid']
    msgs, execs = c.submit(order('buy', price=99.5, size=3, reqid=rid))
    assert names(msgs) == [('status', 'submitted')]
    assert (msgs[0]['reqid'], msgs[0]['remaining']) == (rid, 3) and execs == []
    assert [(o.reqid, o.price, o.size) for o in c.book.orders()] == [(rid, 99.5, 3)]
    # modify through the ask: submitted, then executes at the ask
    msgs, execs = c.submit(order('buy', price=101.0, size=3, reqid=rid))
    assert names(msgs) == [('status', 'submitted')]
    assert [(e.reqid, e.price, e.size) for e in execs] == [(rid, 100.5, 3)]
    assert len(c.book) == 0


def test_modify_errors():
    c = core()
    msgs, _ = c.submit(order('buy', price=99.0))
    rid = msgs[0]['reqid']
    (err,), _ = c.submit(order('buy', price=99.0, reqid=999))
    assert (err['name'], err['reqid'], err['oid'], err['symbol'], err['reason']) == \
        ('error', 999, 'o1', 'btcusd', UNKNOWN_ORDER)
    (err,), _ = c.submit(order('sell', price=99.0, reqid=rid))
    assert err['name'] == 'error' and 'action' in err['reason']
    (err,), _ = c.submit(order('buy', price=99.0, reqid=rid, oid='other'))
    assert err['name'] == 'error' and 'oid' in err['reason']
    c.submit(order('buy', price=101.0, reqid=rid))  # fills
    (err,), _ = c.submit(order('buy', price=99.0, reqid=rid))
    assert err['reason'] == ALREADY_FILLED


def test_cancel_sequences():
    c = core()
    msgs, _ = c.submit(order('sell', price=105.0, size=2))
    rid = msgs[0]['reqid']
    (st,) = c.cancel(BrokerdCancel(oid='o1', reqid=rid))
    assert (st['name'], st['status'], st['reqid'], st['remaining'], st['filled']) == \
        ('status', 'cancelled', rid, 2, 0)
    assert len(c.book) == 0
    assert c.on_quote('btcusd', {'bid': 200.0, 'ask': 201.0}) == []  # never fills after
    (err,) = c.cancel(BrokerdCancel(oid='o1', reqid=rid))
    assert err['reason'] == ALREADY_CANCELLED
    (err,) = c.cancel(BrokerdCancel(oid='o1', reqid=None))
    assert (err['name'], err['oid'], err['reqid'], err['reason']) == ('error', 'o1', None, UNKNOWN_ORDER)
    (err,) = c.cancel(BrokerdCancel(oid='zz', reqid=12345))
    assert (err['reqid'], err['reason']) == (12345, UNKNOWN_ORDER)
    msgs, execs = c.submit(order('buy', price=202.0, oid='f'))
    assert execs and execs[0].price == 201.0
    (err,) = c.cancel(BrokerdCancel(oid='f', reqid=msgs[0]['reqid']))
    assert err['reason'] == ALREADY_FILLED


def test_positions_through_the_core_and_started_value():
    c = core()
    seq = [('buy', 2, 101.0), ('buy', 2, 101.0), ('sell', 3, 99.0), ('sell', 3, 99.0)]
    positions = []
    for i, (action, size, px) in enumerate(seq):
        _, execs = c.submit(order(action, price=px, size=size, oid=f'o{i}'))
        positions.append(settle_all(c, execs)[-1])
    # fills at ask 100.5 (buys) / bid 100.0 (sells)
    assert [(p['size'], p['avg_price']) for p in positions] == [
        (2, 100.5), (4, 100.5), (1, 100.5), (-2, 100.0)]
    assert c.position_msgs() == [positions[-1]]


def test_reject_extracts_ids():
    c = core()
    err = c.reject({'name': 'order', 'oid': 'x1', 'reqid': 7, 'price': -1}, 'bad price')
    assert (err['name'], err['oid'], err['reqid'], err['reason']) == ('error', 'x1', 7, 'bad price')
    assert c.reject({'foo': 1}, 'nope') is None
    assert c.reject('garbage', 'nope') is None
    assert c.reject({'oid': 5, 'reqid': True}, 'bad') is None


# -- the engine plumbing, with a fake dialogue ------------------------------------------------

class Engine(DialogueEngine):
    def __init__(self):
        ids = itertools.count(1)
        super().__init__('sim', lambda: next(ids))




def test_engine_routes_and_survives_bad_input():
    e = Engine()
    e.on_quote('btcusd', {'bid': 100.0, 'ask': 100.5})
    a, b = Dialogue('a'), Dialogue('b')
    e.dialogues |= {a, b}
    for junk in ['nope', 42, None, {}, {'name': 'order'}, {'name': 'bogus', 'oid': 'j'},
                 {'name': 'order', 'oid': 'j2', 'action': 'buy', 'symbol': 'x', 'price': 1, 'size': 0}]:
        e.handle_raw(a, junk)
    errs = drain(a)
    assert [(m['name'], m['oid']) for m in errs] == [('error', 'j'), ('error', 'j2')]
    assert e.rejected == 7 and e.received == 7

    e.handle_raw(a, order('buy', price=99.0, oid='r').model_dump())
    (ack, sub) = drain(a)
    assert (ack['name'], sub['status']) == ('ack', 'submitted')
    e.on_quote('btcusd', {'bid': 98.0, 'ask': 98.5})
    fill, filled, pos = drain(a)
    assert (fill['name'], filled['status'], pos['name']) == ('fill', 'filled', 'position')
    # the position goes to every dialogue, the order's events only to its owner
    assert [m['name'] for m in drain(b)] == ['position']
    st = e.stats()
    assert st['resting_orders'] == 0 and st['executions'] == 1
    assert [r['oid'] for r in st['requests']] == ['r']
    assert [(j['dir'], j['name']) for j in st['journal'] if j['oid'] == 'r'] == [
        ('in', 'order'), ('out', 'ack'), ('out', 'status'), ('out', 'fill'), ('out', 'status')]


def test_engine_fills_of_a_closed_dialogue_go_to_the_others():
    e = Engine()
    e.on_quote('btcusd', {'bid': 100.0, 'ask': 100.5})
    a, b = Dialogue('a'), Dialogue('b')
    e.dialogues |= {a, b}
    e.handle_raw(a, order('sell', price=101.0).model_dump())
    a.close()
    e.dialogues.discard(a)
    e.on_quote('btcusd', {'bid': 101.0, 'ask': 101.5})
    assert [m['name'] for m in drain(b)] == ['fill', 'status', 'position']
