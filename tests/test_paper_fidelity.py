"""Paper fills you can believe (issue 14): partial fills bounded by the touch and by prints,
queue position, maker/taker fees in fills and positions, seeded latency, and properties of the
shared matching core (simvenue) that the paper engine and the sim exchange both use.
"""
from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piker_ems.clearing._messages import BrokerdCancel, BrokerdOrder
from piker_ems.simvenue._clock import FakeClock
from piker_ems.simvenue._core import ClearingCore
from piker_ems.simvenue._dialogue import DialogueEngine
from piker_ems.simvenue._fidelity import Fidelity, Latency, fidelity_setting

PARTIAL = Fidelity(partial_fills=True)
QUEUE = Fidelity(partial_fills=True, queue=True)


def core(fid: Fidelity = PARTIAL, fee_bps: float = 0.0) -> ClearingCore:
    ids = itertools.count(1)
    return ClearingCore('sim', lambda: next(ids), clock=FakeClock(step_ns=1), fee_bps=fee_bps, fidelity=fid)


def l1(c: ClearingCore, bid: float, bsize: float, ask: float, asize: float) -> list:
    """One quote as the sim feed sends it (ticks with sizes, then the top of book)."""
    return c.on_quote('btcusd', {
        'ticks': [{'type': 'bid', 'price': bid, 'size': bsize}, {'type': 'ask', 'price': ask, 'size': asize}],
        'bid': bid, 'ask': ask, 'bsize': bsize, 'asize': asize})


def trade(c: ClearingCore, price: float, size: float) -> list:
    return c.on_quote('btcusd', {'ticks': [{'type': 'trade', 'price': price, 'size': size}]})


def order(action: str, price: float, size: float, oid: str = 'o1', reqid=None) -> BrokerdOrder:
    return BrokerdOrder(action=action, oid=oid, symbol='btcusd', price=price, size=size, reqid=reqid)


def settle_all(c: ClearingCore, execs: list) -> list[dict]:
    out = []
    for ex in execs:
        msgs, _ = c.settle(ex)
        out.extend(msgs)
    return out


def test_an_order_larger_than_the_touch_fills_in_parts_at_successive_quotes():
    c = core()
    l1(c, 99.99, 5, 100.0, 5)
    msgs, execs = c.submit(order('buy', 100.05, 50))
    assert [m['name'] for m in msgs] == ['ack', 'status']
    parts = [(ex.size, ex.price, ex.liquidity) for ex in execs]
    assert parts == [(5, 100.0, 'taker')]  # what the touch showed, at the touch (never better)
    assert c.book.get(1).remaining == 45    # the rest keeps resting
    assert l1(c, 99.99, 5, 100.0, 0) == []  # nothing shown: nothing filled
    for _ in range(8):
        parts += [(ex.size, ex.price, ex.liquidity) for ex in l1(c, 99.99, 5, 100.02, 5)]
    assert parts[1:] == [(5, 100.02, 'taker')] * 8
    assert c.book.get(1).remaining == 5
    last = l1(c, 99.99, 5, 100.06, 9)       # above the limit: no fill
    assert last == []
    last = l1(c, 99.99, 5, 100.01, 9)       # more than the rest: only the rest fills
    assert [(ex.size, ex.remaining) for ex in last] == [(5, 0)]
    assert c.closed(1) == 'filled' and 1 not in c.book
    statuses = [m for m in settle_all(c, last) if m['name'] == 'status']
    assert (statuses[-1]['status'], statuses[-1]['filled'], statuses[-1]['remaining']) == ('filled', 50, 0)


def test_liquidity_taken_is_gone_for_the_next_order_in_the_same_quote():
    c = core()
    l1(c, 99.0, 5, 100.0, 3)
    _, a = c.submit(order('buy', 100.0, 2, oid='a'))
    _, b = c.submit(order('buy', 100.0, 2, oid='b'))
    assert [ex.size for ex in a + b] == [2, 1]
    assert c.book.get(2).remaining == 1


def test_resting_order_behind_ten_lots_fills_only_after_ten_lots_trade_at_its_price():
    c = core(QUEUE)
    l1(c, 99.0, 10, 99.5, 10)                        # 10 lots shown at 99
    _, execs = c.submit(order('buy', 99.0, 5))
    assert execs == [] and c.book.get(1).queue_ahead == 10
    assert trade(c, 99.5, 50) == []                  # above its price: not its queue
    assert trade(c, 99.0, 4) == [] and trade(c, 99.0, 6) == []   # 10 lots ahead: traded away
    assert c.book.get(1).queue_ahead == 0
    first = trade(c, 99.0, 3)
    assert [(ex.size, ex.price, ex.liquidity) for ex in first] == [(3, 99.0, 'maker')]
    through = trade(c, 98.5, 10)                     # a print through its price: the rest
    assert [(ex.size, ex.price) for ex in through] == [(2, 99.0)]
    assert c.closed(1) == 'filled'


def test_an_order_improving_the_touch_has_no_queue_and_prints_share_their_volume():
    c = core(QUEUE)
    l1(c, 99.0, 10, 99.5, 10)
    c.submit(order('buy', 99.1, 3, oid='a'))
    c.submit(order('buy', 99.1, 3, oid='b'))
    assert c.book.get(1).queue_ahead == c.book.get(2).queue_ahead == 0
    execs = trade(c, 99.1, 4)                        # 4 lots print: 3 to the first, 1 to the next
    assert [(ex.oid, ex.size) for ex in execs] == [('a', 3), ('b', 1)]


def test_maker_and_taker_fees_on_fills_and_in_the_position():
    c = core(Fidelity(partial_fills=True, maker_fee_bps=1.0, taker_fee_bps=5.0))
    l1(c, 99.0, 10, 100.0, 10)
    _, taken = c.submit(order('buy', 100.0, 2, oid='t'))            # takes the ask
    _, none = c.submit(order('sell', 101.0, 2, oid='m'))            # rests
    made = l1(c, 101.0, 4, 101.5, 4)                                 # a bid reaches it: maker
    fills = [m for m in settle_all(c, taken + none + made) if m['name'] == 'fill']
    assert [(f['price'], f['fee'], f['broker_details']['liquidity']) for f in fills] == [
        (100.0, pytest.approx(0.1), 'taker'), (101.0, pytest.approx(0.0202), 'maker')]
    pos = c.positions.get('paper', 'btcusd')
    assert pos.size == 0 and pos.realized_pnl == pytest.approx(2.0)
    assert pos.fees == pytest.approx(0.1202)        # net realized = 2.0 - 0.1202


def test_defaults_keep_the_whole_size_on_touch_model():
    c = core(Fidelity(), fee_bps=2.0)
    l1(c, 99.0, 1, 100.0, 1)
    _, execs = c.submit(order('buy', 100.0, 50))
    assert [(ex.size, ex.price) for ex in execs] == [(50, 100.0)]
    [fill] = [m for m in settle_all(c, execs) if m['name'] == 'fill']
    assert fill['fee'] == pytest.approx(1.0)


def test_fidelity_settings_are_validated_by_name():
    assert fidelity_setting({}) == Fidelity()
    with pytest.raises(ValueError, match='taker_fee_bps'):
        fidelity_setting({'taker_fee_bps': -1})
    with pytest.raises(ValueError, match='partial_fills'):
        fidelity_setting({'queue': True})
    with pytest.raises(ValueError, match='latency_seed'):
        fidelity_setting({'latency_seed': 1.5})


def _run_engine(seed: int) -> list[tuple[float, str, float]]:
    """A paper-like engine with jittered latency, driven by a script under trio's mock clock:
    every message it sends, with the (virtual) time it was sent."""
    fid = Fidelity(partial_fills=True, ack_delay=0.05, fill_delay=0.02, latency_jitter=0.1, latency_seed=seed)
    out: list[tuple[float, str, float]] = []

    async def main() -> None:
        ids = itertools.count(1)
        engine = DialogueEngine('sim', lambda: next(ids), clock=lambda: int(trio.current_time() * 1e9), fidelity=fid)
        async with trio.open_nursery() as n:
            engine.bind(n)
            d = engine.open_dialogue('test')
            engine.on_quote('btcusd', {'bid': 99.0, 'ask': 100.0, 'bsize': 3, 'asize': 3})
            for i in range(4):
                engine.arrive(d, order('buy', 100.5, 4, oid=f'o{i}'))
            for step in range(20):
                await trio.sleep(0.03)
                engine.on_quote('btcusd', {'bid': 99.0, 'ask': 100.0 + step % 3 * 0.1, 'bsize': 3, 'asize': 2})
            await trio.sleep(5)
            d.close()
            async for msg in d.outbox:
                out.append((msg.get('time_ns', 0) / 1e9, msg['name'], msg.get('size', msg.get('filled', 0))))
            n.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return out


def test_seeded_latency_gives_the_same_sequence_twice():
    a, b = _run_engine(7), _run_engine(7)
    assert a == b
    assert sum(1 for m in a if m[1] == 'fill') > 4        # it did fill, in parts
    assert _run_engine(8) != a                             # the seed matters
    lat = [Latency(Fidelity(ack_delay=0.1, latency_jitter=0.05, latency_seed=3)) for _ in range(2)]
    assert [lat[0].ack() for _ in range(5)] == [lat[1].ack() for _ in range(5)]
    times = [t for t, name, _ in a if name == 'fill']
    assert times == sorted(times)                          # reports keep their order


# --- properties --------------------------------------------------------------------------------

prices = st.sampled_from([99.0, 99.5, 100.0, 100.5, 101.0])
sizes = st.sampled_from([0.5, 1.0, 2.0, 3.0, 7.0])
events = st.one_of(
    st.tuples(st.just('order'), st.sampled_from(['buy', 'sell']), prices, sizes),
    st.tuples(st.just('modify'), st.integers(0, 20), prices, sizes),
    st.tuples(st.just('cancel'), st.integers(0, 20)),
    st.tuples(st.just('l1'), prices, sizes, st.sampled_from([0.5, 1.0, 1.5]), sizes),
    st.tuples(st.just('trade'), prices, sizes),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fid=st.sampled_from([PARTIAL, QUEUE, Fidelity()]), script=st.lists(events, min_size=20, max_size=80))
def test_paper_never_overfills_never_beyond_the_limit_and_position_is_the_sum_of_fills(fid, script):
    c = core(fid, fee_bps=1.0)
    placed: dict[int, BrokerdOrder] = {}
    filled: dict[int, float] = {}
    signed = 0.0

    def book(execs):
        nonlocal signed
        for ex in execs:
            req = placed[ex.reqid]
            if req.action == 'buy':
                assert ex.price <= req.price + 1e-9, (ex, req)
            else:
                assert ex.price >= req.price - 1e-9, (ex, req)
            filled[ex.reqid] = filled.get(ex.reqid, 0.0) + ex.size
            assert filled[ex.reqid] <= req.size + 1e-9
            msgs, pos = c.settle(ex)
            assert pos is not None and msgs[0]['fee'] >= 0
            signed += ex.size if ex.action == 'buy' else -ex.size

    for ev in script:
        kind = ev[0]
        if kind == 'order':
            req = order(ev[1], ev[2], ev[3], oid=f'x{len(placed)}')
            msgs, execs = c.submit(req)
            placed[msgs[0]['reqid']] = req
            book(execs)
        elif kind == 'modify' and ev[1] in c.book:
            old = placed[ev[1]]
            req = order(old.action, ev[2], max(ev[3], c.book.get(ev[1]).filled + 0.5), oid=old.oid, reqid=ev[1])
            msgs, execs = c.submit(req)
            if msgs[0]['name'] != 'error':
                placed[ev[1]] = req
            book(execs)
        elif kind == 'cancel':
            c.cancel(BrokerdCancel(oid='x', reqid=ev[1]))
        elif kind == 'l1':
            bid = ev[1] - ev[3] / 2
            book(l1(c, bid, ev[2], ev[1] + ev[3] / 2, ev[4]))
        elif kind == 'trade':
            book(trade(c, ev[1], ev[2]))
    pos = c.positions.get('paper', 'btcusd')
    assert pos.size == pytest.approx(signed, abs=1e-9)
    for reqid, req in placed.items():
        left = c.book.get(reqid)
        if left is not None:
            assert left.remaining == pytest.approx(req.size - filled.get(reqid, 0.0), abs=1e-9)


# --- as a user runs it ---------------------------------------------------------------------------

FIDELITY_CONFIG = """
[paper]
partial_fills = true
maker_fee_bps = 1
taker_fee_bps = 5
"""


@pytest.fixture
def pikerd(reg_addr, tmp_path, config_dir):
    from _ems_helpers import SIM_CALM
    from _proc import pikerd_process
    from conftest import write_config

    write_config(config_dir, SIM_CALM + FIDELITY_CONFIG)
    with pikerd_process(reg_addr[1], tmp_path / 'pikerd.log'):
        yield reg_addr[1]


def test_paper_order_larger_than_the_touch_fills_in_parts_with_fees_in_positions(pikerd):
    from _proc import cli, json_lines

    quote = json_lines(cli(pikerd, 'quote', 'btcusd.sim', '--count', '1', '--json').stdout)[0]
    out = cli(pikerd, 'order', 'buy', 'btcusd.sim', '--price', f"{quote['ask'] * 1.02:.2f}", '--size', '50',
              '--mode', 'live', '--json', timeout=90)
    assert out.returncode == 0, out.stderr
    msgs = json_lines(out.stdout)
    fills = [m['brokerd_msg'] for m in msgs if m['resp'] == 'broker_filled']
    assert len(fills) >= 2 and msgs[-1]['resp'] == 'broker_executed'   # in parts (the touch shows < 50)
    assert sum(f['size'] for f in fills) == pytest.approx(50)
    assert all(f['broker_details']['liquidity'] == 'taker' for f in fills)
    assert all(f['fee'] == pytest.approx(f['price'] * f['size'] * 5e-4) for f in fills)
    [pos] = json_lines(cli(pikerd, 'positions', '--json').stdout)
    assert pos['size'] == 50 and pos['fees'] == pytest.approx(sum(f['fee'] for f in fills))
    assert pos['net_pnl'] == pytest.approx(pos['realized_pnl'] + pos['unrealized_pnl'] - pos['fees'])


def test_the_sim_exchange_uses_the_same_core_and_its_l1_sizes():
    """The live account of the sim backend fills in parts too: its market's quotes carry the
    L1 sizes the shared core bounds fills by."""
    from _dialogue_helpers import drain, kinds
    from _dialogue_helpers import order as wire_order
    from piker_ems.brokers.sim._exchange import SimExchange
    from piker_ems.brokers.sim._venue import SimVenue

    x = SimExchange(SimVenue(), fidelity=Fidelity(partial_fills=True, taker_fee_bps=5))
    market = x.venue.market('btcusd')
    quote = market.quote()
    assert quote['asize'] > 0 and quote['bsize'] > 0           # the feed carries L1 sizes
    d = x.open_dialogue('emsd')
    x.handle_raw(d, wire_order('buy', market.ask + 1, size=100))  # more than any touch shows
    msgs = drain(d)
    assert kinds(msgs) == ['ack', 'status:submitted', 'fill', 'status:filled', 'position']
    fill = msgs[2]
    assert fill['size'] == quote['asize'] and fill['price'] == market.ask
    assert msgs[3]['remaining'] == 100 - fill['size']           # partial: the rest rests
    assert fill['fee'] == pytest.approx(fill['price'] * fill['size'] * 5e-4)
    market.step()
    assert 'fill' in kinds(drain(d))                            # the next quote fills more
