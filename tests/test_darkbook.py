"""Behavioural tests for the dark-order trigger index (SPEC 5.4).

The book must fire the right entries for each tick type and direction, fire each entry exactly
once, never fire a disarmed or superseded (modified) trigger, and agree with a naive reference
scan over long random operation sequences.
"""
import random

import pytest

from piker_ems.clearing._darkbook import (
    TICK_FILTERS,
    DarkBook,
    Entry,
    release_price,
)


def oids(entries):
    return [e.oid for e in entries]


# --------------------------------------------------------------------------- arming


def test_direction_chosen_from_last():
    book = DarkBook()
    assert book.arm('a', 'buy', 101.0, last=100.0).direction == 'above'
    assert book.arm('b', 'buy', 99.0, last=100.0).direction == 'below'
    # trigger == last counts as "at or above"
    assert book.arm('c', 'sell', 100.0, last=100.0).direction == 'above'


@pytest.mark.parametrize('bad', [None, float('nan'), float('inf'), 'x'])
def test_arm_requires_a_valid_last(bad):
    book = DarkBook()
    with pytest.raises(ValueError):
        book.arm('a', 'buy', 101.0, last=bad)
    assert len(book) == 0


def test_arm_rejects_bad_action_and_trigger():
    book = DarkBook()
    with pytest.raises(ValueError):
        book.arm('a', 'short', 101.0, last=100.0)
    with pytest.raises(ValueError):
        book.arm('a', 'buy', float('nan'), last=100.0)
    assert len(book) == 0


# --------------------------------------------------------------------------- tick filters


def test_buy_above_fires_on_ask_not_bid():
    book = DarkBook()
    book.arm('b1', 'buy', 101.0, last=100.0)
    assert book.on_tick('bid', 105.0) == []
    assert book.on_tick('ask', 100.99) == []
    assert 'b1' in book
    fired = book.on_tick('ask', 101.0)
    assert oids(fired) == ['b1']
    assert fired[0].action == 'buy' and fired[0].trigger == 101.0
    assert 'b1' not in book


def test_buy_below_fires_on_ask_at_or_under_trigger():
    book = DarkBook()
    book.arm('b1', 'buy', 99.0, last=100.0)
    assert book.on_tick('ask', 99.5) == []
    assert book.on_tick('bid', 98.0) == []
    assert oids(book.on_tick('ask', 98.5)) == ['b1']


@pytest.mark.parametrize('tick_type', ['last', 'trade'])
def test_buy_fires_on_prints(tick_type):
    book = DarkBook()
    book.arm('b1', 'buy', 101.0, last=100.0)
    assert oids(book.on_tick(tick_type, 101.5)) == ['b1']


def test_sell_filters_bid_yes_ask_no():
    book = DarkBook()
    book.arm('s-up', 'sell', 101.0, last=100.0)
    book.arm('s-dn', 'sell', 99.0, last=100.0)
    assert book.on_tick('ask', 102.0) == []
    assert book.on_tick('ask', 98.0) == []
    assert oids(book.on_tick('bid', 101.0)) == ['s-up']
    assert oids(book.on_tick('bid', 99.0)) == ['s-dn']
    assert len(book) == 0


def test_alert_fires_on_trade_and_last_only():
    book = DarkBook()
    book.arm('al1', 'alert', 101.0, last=100.0)
    book.arm('al2', 'alert', 102.0, last=100.0)
    for tt in ('ask', 'bid', 'bsize', 'asize', 'volume'):
        assert book.on_tick(tt, 200.0) == []
    assert oids(book.on_tick('trade', 101.0)) == ['al1']
    assert oids(book.on_tick('last', 102.0)) == ['al2']


def test_unknown_tick_types_fire_nothing():
    book = DarkBook()
    book.arm('b', 'buy', 101.0, last=100.0)
    book.arm('s', 'sell', 99.0, last=100.0)
    for tt in ('bsize', 'asize', 'size', 'volume', 'dark_trade', ''):
        assert book.on_tick(tt, 101.0) == []
        assert book.on_tick(tt, 99.0) == []
    assert len(book) == 2


def test_non_finite_tick_price_fires_nothing():
    book = DarkBook()
    book.arm('b', 'buy', 101.0, last=100.0)
    book.arm('s', 'sell', 99.0, last=100.0)
    for p in (float('nan'), float('inf'), float('-inf')):
        assert book.on_tick('last', p) == []
    assert len(book) == 2


# --------------------------------------------------------------------------- exactly once


def test_fires_exactly_once():
    book = DarkBook()
    book.arm('a', 'alert', 101.0, last=100.0)
    assert oids(book.on_tick('trade', 101.5)) == ['a']
    assert book.on_tick('trade', 101.5) == []
    assert book.on_tick('trade', 150.0) == []
    assert book.get('a') is None


def test_disarm_prevents_firing():
    book = DarkBook()
    e = book.arm('a', 'buy', 101.0, last=100.0, payload={'size': 3})
    assert book.disarm('a') is e
    assert book.disarm('a') is None  # duplicate cancel is a no-op
    assert 'a' not in book and len(book) == 0
    assert book.on_tick('ask', 500.0) == []


def test_rearm_same_oid_is_modify():
    book = DarkBook()
    book.arm('o', 'buy', 101.0, last=100.0, payload='v1')
    e2 = book.arm('o', 'buy', 103.0, last=100.0, payload='v2')
    assert len(book) == 1
    assert book.get('o') is e2
    # the old price does not fire
    assert book.on_tick('ask', 101.5) == []
    fired = book.on_tick('ask', 103.0)
    assert oids(fired) == ['o']
    assert fired[0].payload == 'v2' and fired[0].trigger == 103.0
    assert book.on_tick('ask', 103.0) == []


def test_rearm_rechooses_direction():
    book = DarkBook()
    book.arm('o', 'sell', 101.0, last=100.0)
    e = book.arm('o', 'sell', 101.0, last=102.0)  # market moved above: now a "below" trigger
    assert e.direction == 'below'
    assert book.on_tick('bid', 101.5) == []
    assert oids(book.on_tick('bid', 101.0)) == ['o']


def test_rearm_after_fire_and_after_disarm():
    book = DarkBook()
    book.arm('o', 'alert', 101.0, last=100.0)
    assert oids(book.on_tick('last', 101.0)) == ['o']
    book.arm('o', 'alert', 101.0, last=100.0)
    assert oids(book.on_tick('last', 101.0)) == ['o']
    book.arm('o', 'alert', 101.0, last=100.0)
    book.disarm('o')
    book.arm('o', 'alert', 102.0, last=100.0)
    assert book.on_tick('last', 101.0) == []
    assert oids(book.on_tick('last', 102.0)) == ['o']


# --------------------------------------------------------------------------- many entries


def test_many_entries_exactly_the_crossed_ones_fire():
    book = DarkBook()
    last = 100.0
    for i in range(1, 51):
        book.arm(f'up{i}', 'buy', last + i, last=last)
        book.arm(f'dn{i}', 'sell', last - i, last=last)
        book.arm(f'al{i}', 'alert', last + i / 10, last=last)

    # ask up to 110.5 crosses buys at 101..110 only
    fired = book.on_tick('ask', 110.5)
    assert sorted(oids(fired)) == sorted(f'up{i}' for i in range(1, 11))
    # deepest-crossed first (distance from the tick price, decreasing)
    assert oids(fired) == [f'up{i}' for i in range(1, 11)]

    # a trade at 101.0 fires the alerts at 100.1..101.0, plus nothing else
    fired = book.on_tick('trade', 101.0)
    assert sorted(oids(fired)) == sorted(f'al{i}' for i in range(1, 11))

    # bid down to 95.0 crosses sells at 99..95
    fired = book.on_tick('bid', 95.0)
    assert oids(fired) == [f'dn{i}' for i in range(1, 6)]

    assert len(book) == 150 - 25
    assert book.on_tick('ask', 110.5) == []
    assert book.on_tick('bid', 95.0) == []


def test_fire_order_ties_broken_by_arm_sequence():
    book = DarkBook()
    for oid in ('c', 'a', 'b'):
        book.arm(oid, 'buy', 101.0, last=100.0)
    book.arm('z', 'buy', 100.5, last=100.0)
    assert oids(book.on_tick('last', 102.0)) == ['z', 'c', 'a', 'b']


def test_snapshot_queries():
    book = DarkBook()
    book.arm('a', 'buy', 101.0, last=100.0, payload=1)
    book.arm('b', 'sell', 99.0, last=100.0, payload=2)
    book.arm('c', 'alert', 105.0, last=100.0, payload=3)
    book.arm('a', 'buy', 102.0, last=100.0, payload=4)  # modify moves to the end
    assert oids(book.entries()) == ['b', 'c', 'a']
    assert oids(book) == ['b', 'c', 'a']
    assert all(isinstance(e, Entry) for e in book)
    # iteration is over a snapshot: mutating while iterating is fine
    for e in book:
        book.disarm(e.oid)
    assert len(book) == 0 and book.entries() == []


def test_stale_items_are_compacted_under_churn():
    book = DarkBook()
    for i in range(100):
        book.arm(f'o{i}', 'buy', 200.0 + i, last=100.0)
    # drag every order around many times: heap memory must stay O(live)
    for rnd in range(50):
        for i in range(100):
            book.arm(f'o{i}', 'buy', 150.0 + rnd + i, last=100.0)
            assert book.heap_items - len(book) <= max(64, len(book))
    for i in range(100):
        book.disarm(f'o{i}')
    assert len(book) == 0
    assert book.heap_items <= 64


# --------------------------------------------------------------------------- reference model


class NaiveBook:
    """Reference: a flat dict scanned in full on every tick."""

    def __init__(self):
        self.live = {}
        self.seq = 0

    def arm(self, oid, action, trigger, last):
        self.seq += 1
        self.live.pop(oid, None)
        self.live[oid] = (action, trigger, 'above' if trigger >= last else 'below', self.seq)

    def disarm(self, oid):
        return self.live.pop(oid, None)

    def on_tick(self, tick_type, price):
        actions = TICK_FILTERS.get(tick_type, ())
        fired = []
        for oid, (action, trigger, direction, seq) in self.live.items():
            if action not in actions:
                continue
            if (price >= trigger) if direction == 'above' else (price <= trigger):
                fired.append((oid, action, trigger, direction, seq))
        for f in fired:
            del self.live[f[0]]
        fired.sort(key=lambda f: (-abs(price - f[2]), f[4]))
        return fired


@pytest.mark.parametrize('seed', [0, 1, 2, 3, 42])
def test_matches_naive_reference(seed):
    rng = random.Random(seed)
    book, ref = DarkBook(), NaiveBook()
    last = 100.0
    n_oids = rng.choice([5, 40, 300])
    tick_types = ['bid', 'ask', 'last', 'trade', 'bsize', 'asize']
    n_fired = 0

    for _ in range(4000):
        r = rng.random()
        if r < 0.35:
            oid = f'o{rng.randrange(n_oids)}'
            action = rng.choice(['buy', 'sell', 'alert'])
            # prices on a 0.05 grid so trigger == tick price and trigger == last both happen
            trigger = round(last + rng.randint(-40, 40) * 0.05, 2)
            e = book.arm(oid, action, trigger, last=last)
            ref.arm(oid, action, trigger, last)
            assert (e.oid, e.action, e.trigger, e.direction) == (
                oid, action, trigger, ref.live[oid][2])
        elif r < 0.45:
            oid = f'o{rng.randrange(n_oids)}'
            got = book.disarm(oid)
            want = ref.disarm(oid)
            assert (got is None) == (want is None)
        else:
            last = max(0.05, round(last + rng.randint(-6, 6) * 0.05, 2))
            tt = rng.choice(tick_types)
            got = [(e.oid, e.action, e.trigger, e.direction, e.seq)
                   for e in book.on_tick(tt, last)]
            want = ref.on_tick(tt, last)
            assert got == want
            n_fired += len(got)

        assert len(book) == len(ref.live)
        assert book.heap_items - len(book) <= max(64, len(book))

    assert sorted(e.oid for e in book) == sorted(ref.live)
    assert n_fired > 50  # the sequence actually exercised firing


# --------------------------------------------------------------------------- release price


@pytest.mark.parametrize('action,price,tick,expected', [
    ('buy', 100.03, 0.01, 100.08),
    ('sell', 100.03, 0.01, 99.98),
    ('buy', 100.0, 0.25, 101.25),
    ('sell', 100.0, 0.25, 98.75),
    ('buy', 4100.25, 0.25, 4101.5),
    ('sell', 4100.25, 0.25, 4099.0),
    # trigger price off the tick grid is snapped to the nearest tick
    ('buy', 100.03, 0.25, 101.25),
    ('sell', 100.14, 0.25, 99.0),
    ('buy', 1.23456, 0.0001, 1.2351),
    ('sell', 0.00012, 0.00001, 0.00007),
    ('buy', 250.0, 1, 255.0),
    ('sell', 10.3, 0.1, 9.8),
    ('buy', 0.7, 0.1, 1.2),
])
def test_release_price(action, price, tick, expected):
    got = release_price(action, price, tick)
    assert got == pytest.approx(expected, abs=1e-12)
    # no float garbage: exactly the decimal literal it should be
    assert repr(got) == repr(round(expected, 10))


def test_release_price_no_float_garbage():
    assert repr(release_price('buy', 100.03, 0.01)) == '100.08'
    assert repr(release_price('sell', 100.03, 0.01)) == '99.98'
    assert repr(release_price('buy', 0.1, 0.1, ticks_through=2)) == '0.3'
    assert repr(release_price('sell', 1.1, 0.01)) == '1.05'
    # many prices across the grid: result is always a clean multiple of the tick
    for i in range(1, 2000):
        p = round(i * 0.01 + 50, 2)
        for action, sign in (('buy', 1), ('sell', -1)):
            got = release_price(action, p, 0.01)
            assert got == round(p + sign * 0.05, 2)
            assert len(repr(got).split('.')[1]) <= 2


def test_release_price_ticks_through():
    assert release_price('buy', 100.0, 0.5, ticks_through=0) == 100.0
    assert release_price('buy', 100.0, 0.5, ticks_through=1) == 100.5
    assert release_price('sell', 100.0, 0.5, ticks_through=10) == 95.0


@pytest.mark.parametrize('kwargs', [
    dict(action='alert', tick_price=100.0, tick_size=0.01),
    dict(action='buy', tick_price=100.0, tick_size=0),
    dict(action='buy', tick_price=100.0, tick_size=-0.01),
    dict(action='sell', tick_price=float('nan'), tick_size=0.01),
])
def test_release_price_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        release_price(**kwargs)
