"""The paper engine (``paperboi.<broker>``) spoken to directly with raw Brokerd* messages.

Each test runs its own pikerd (so ``brokerd.sim`` can be spawned for the engine's feeds) and
spawns ``paperboi.sim`` in a plain actor nursery. The sim market is frozen (no random walk, a
one-tick spread) at known prices and only moves through ``set_price``, so every fill price and
position is exact. Messages are awaited with ``trio.fail_after``, never slept on.
"""
from __future__ import annotations

import math
from contextlib import asynccontextmanager

import pytest
import tractor
import trio

from piker_ems.service._auth import call
from piker_ems.clearing import _paper
from piker_ems.service import find_service, maybe_open_pikerd
from piker_ems.service._daemon import DEATHSIG_MODULE
from piker_ems.service._ipc import is_heartbeat

from _dialogue_helpers import SIM_FROZEN as SIM_FROZEN_BASE, cancel, dialogue, kinds, order, recv
from conftest import write_config

pytestmark = pytest.mark.trio

# bid 100.00 / ask 100.01 for every symbol, ethusd at 50.00 / 50.01; nothing moves on its own
SIM_FROZEN = SIM_FROZEN_BASE + """
[sim.symbols.ethusd]
start_price = 50.0
"""

PAPER_MODULES = [DEATHSIG_MODULE, 'piker_ems.clearing._paper']


@asynccontextmanager
async def paperboi(reg_addr):
    """pikerd in this process, paperboi.sim in a nursery, its trades dialogue open."""
    async with maybe_open_pikerd(reg_addr):
        async with tractor.open_nursery() as an:
            portal = await an.start_actor('paperboi.sim', enable_modules=PAPER_MODULES)
            try:
                async with dialogue(portal, _paper.trades_dialogue, broker='sim') as (stream, snapshot):
                    yield portal, stream, snapshot
            finally:
                await portal.cancel_actor()












async def set_price(symbol: str, price: float) -> dict:
    async with find_service('brokerd.sim') as portal:
        assert portal is not None
        return await call(portal, 'piker_ems.brokers.sim', 'set_price', symbol=symbol, price=price)


async def stats(portal) -> dict:
    return await call(portal, 'piker_ems.clearing._paper', 'paper_stats')


async def move_market(portal, symbol: str, price: float) -> None:
    """``set_price`` and wait until the paper engine has seen that quote (it arrives through
    the feed, so an order sent right after could otherwise be matched against the old one)."""
    await set_price(symbol, price)
    with trio.fail_after(5):
        while (await stats(portal))['l1'].get(symbol, {}).get('bid') != price:
            await trio.sleep(0.01)


async def place(stream, msg: dict) -> tuple[dict, dict]:
    """Send a new order and return its (ack, submitted)."""
    await stream.send(msg)
    ack, sub = await recv(stream, 2)
    assert kinds([ack, sub]) == ['ack', 'status:submitted']
    assert ack['oid'] == msg['oid'] and sub['reqid'] == ack['reqid']
    return ack, sub


async def test_marketable_buy_fills_at_the_ask(reg_addr, config_dir):
    write_config(config_dir, SIM_FROZEN)
    async with paperboi(reg_addr) as (portal, stream, snapshot):
        assert snapshot["positions"] == []
        msg = order('buy', 101.0, size=2)
        await stream.send(msg)   # the first order also opens the feed: held until the first quote
        ack, sub, fill, filled, pos = await recv(stream, 5)
        assert kinds([ack, sub, fill, filled, pos]) == [
            'ack', 'status:submitted', 'fill', 'status:filled', 'position']
        reqid = ack['reqid']
        assert isinstance(reqid, str) and reqid.startswith('paper-')
        assert (ack['oid'], ack['account']) == (msg['oid'], 'paper')
        assert (sub['reqid'], sub['remaining'], sub['filled']) == (reqid, 2, 0)
        assert (fill['reqid'], fill['action'], fill['size'], fill['price']) == (reqid, 'buy', 2, 100.01)
        assert fill['broker_details'] == {'oid': msg['oid'], 'symbol': 'btcusd', 'broker': 'sim',
                                         'liquidity': 'taker'}  # it took the ask
        assert fill['broker_time'] > 0
        assert (filled['reqid'], filled['filled'], filled['remaining']) == (reqid, 2, 0)
        assert (pos['broker'], pos['account'], pos['symbol'], pos['size'], pos['avg_price']) == (
            'sim', 'paper', 'btcusd', 2, 100.01)

        # a marketable sell fills at the bid
        await stream.send(order('sell', 99.0, size=2))
        seq = await recv(stream, 5)
        assert seq[2]['price'] == 100.0 and (seq[4]['size'], seq[4]['avg_price']) == (0, 0)

        st = await stats(portal)
        assert (st['dialogues_opened'], st['resting_orders'], st['rejected']) == (1, 0, 0)
        assert st['feeds'] == {'btcusd': 'live'}


async def test_resting_sell_fills_later_at_its_limit(reg_addr, config_dir):
    write_config(config_dir, SIM_FROZEN)
    async with paperboi(reg_addr) as (portal, stream, _):
        msg = order('sell', 100.50)
        ack, sub = await place(stream, msg)
        assert sub['remaining'] == 1
        st = await stats(portal)
        assert st['resting_orders'] == 1
        assert st['open_orders'][0] | {} == {
            'reqid': ack['reqid'], 'oid': msg['oid'], 'account': 'paper', 'action': 'sell',
            'symbol': 'btcusd', 'price': 100.5, 'size': 1.0, 'filled': 0.0}

        await set_price('btcusd', 100.40)   # bid 100.40: not yet
        await set_price('btcusd', 100.60)   # bid 100.60 >= 100.50
        fill, filled, pos = await recv(stream, 3)
        assert kinds([fill, filled, pos]) == ['fill', 'status:filled', 'position']
        assert (fill['reqid'], fill['action'], fill['price'], fill['size']) == (ack['reqid'], 'sell', 100.5, 1)
        assert (filled['filled'], filled['remaining']) == (1, 0)
        assert (pos['size'], pos['avg_price']) == (-1, 100.5)
        assert (await stats(portal))['resting_orders'] == 0

        # a resting buy fills when the ask comes down to it
        ack, _ = await place(stream, order('buy', 100.00))
        await set_price('btcusd', 99.50)    # ask 99.51 <= 100.00
        fill, _, pos = await recv(stream, 3)
        assert (fill['reqid'], fill['price']) == (ack['reqid'], 100.0)
        assert (pos['size'], pos['avg_price']) == (0, 0)


async def test_modify_keeps_reqid(reg_addr, config_dir):
    write_config(config_dir, SIM_FROZEN)
    async with paperboi(reg_addr) as (portal, stream, _):
        msg = order('buy', 99.50)
        ack, _ = await place(stream, msg)
        reqid = ack['reqid']

        await stream.send(order('buy', 99.80, size=2, reqid=reqid, oid=msg['oid']))
        (sub,) = await recv(stream, 1)
        assert kinds([sub]) == ['status:submitted']
        assert (sub['reqid'], sub['remaining']) == (reqid, 2)
        st = await stats(portal)
        assert [(o['reqid'], o['price'], o['size']) for o in st['open_orders']] == [(reqid, 99.8, 2)]

        # modified through the ask: executes at once at the ask, same reqid
        await stream.send(order('buy', 100.50, size=2, reqid=reqid, oid=msg['oid']))
        seq = await recv(stream, 4)
        assert kinds(seq) == ['status:submitted', 'fill', 'status:filled', 'position']
        assert {m['reqid'] for m in seq[:3]} == {reqid}
        assert (seq[1]['price'], seq[1]['size']) == (100.01, 2)
        assert (await stats(portal))['resting_orders'] == 0

        # modifying it again: it is gone
        await stream.send(order('buy', 99.0, reqid=reqid, oid=msg['oid']))
        (err,) = await recv(stream, 1)
        assert (err['name'], err['oid'], err['reqid'], err['symbol'], err['reason']) == (
            'error', msg['oid'], reqid, 'btcusd', 'order already filled')
        await stream.send(order('buy', 99.0, reqid='paper-nope'))
        (err,) = await recv(stream, 1)
        assert (err['reqid'], err['reason']) == ('paper-nope', 'unknown order')


async def test_cancels(reg_addr, config_dir):
    write_config(config_dir, SIM_FROZEN)
    async with paperboi(reg_addr) as (portal, stream, _):
        rest = order('sell', 105.0, size=3)
        ack, _ = await place(stream, rest)
        await stream.send(cancel(rest['oid'], ack['reqid']))
        (st,) = await recv(stream, 1)
        assert kinds([st]) == ['status:cancelled']
        assert (st['reqid'], st['remaining'], st['filled']) == (ack['reqid'], 3, 0)
        assert (await stats(portal))['resting_orders'] == 0

        await stream.send(cancel(rest['oid'], ack['reqid']))       # again
        await stream.send(cancel(rest['oid'], None))               # no reqid
        await stream.send(cancel('who', 'paper-unknown'))           # never existed
        errs = await recv(stream, 3)
        assert [(e['name'], e['oid'], e['reqid'], e['reason']) for e in errs] == [
            ('error', rest['oid'], ack['reqid'], 'order already cancelled'),
            ('error', rest['oid'], None, 'unknown order'),
            ('error', 'who', 'paper-unknown', 'unknown order'),
        ]

        # the cancelled order never fills
        await move_market(portal, 'btcusd', 110.0)
        filled = order('buy', 200.0)
        await stream.send(filled)
        seq = await recv(stream, 5)
        assert kinds(seq) == ['ack', 'status:submitted', 'fill', 'status:filled', 'position']
        assert seq[2]['price'] == 110.01
        await stream.send(cancel(filled['oid'], seq[0]['reqid']))
        (err,) = await recv(stream, 1)
        assert (err['name'], err['reqid'], err['reason']) == ('error', seq[0]['reqid'], 'order already filled')


async def test_bad_messages_are_answered_and_the_loop_continues(reg_addr, config_dir):
    write_config(config_dir, SIM_FROZEN)
    async with paperboi(reg_addr) as (portal, stream, _):
        bad = [
            'garbage',
            12,
            [1, 2],
            {'name': 'order'},                                             # no ids: logged only
            {'name': 'teleport', 'oid': 'b1'},                             # unknown tag
            order('buy', -5.0, oid='b2'),                                  # bad price
            order('buy', 100.0, size=0, oid='b3'),                         # bad size
            {**order('buy', 100.0, oid='b4'), 'reqqid': 7},                # misspelled field
            {'name': 'cancel', 'reqid': 5},                                # no oid, but a reqid
        ]
        for msg in bad:
            await stream.send(msg)
        errs = await recv(stream, 5)
        assert [(e['name'], e['oid'], e['reqid']) for e in errs] == [
            ('error', 'b1', None), ('error', 'b2', None), ('error', 'b3', None),
            ('error', 'b4', None), ('error', None, 5)]
        assert all(e['reason'].startswith('invalid ') for e in errs)

        msg = order('buy', 101.0)
        await stream.send(msg)
        seq = await recv(stream, 5)
        assert kinds(seq) == ['ack', 'status:submitted', 'fill', 'status:filled', 'position']
        st = await stats(portal)
        assert (st['rejected'], st['received'], len(st['requests'])) == (9, 10, 1)


async def test_positions_buy_sell_cross_zero_and_started_value(reg_addr, config_dir):
    write_config(config_dir, SIM_FROZEN)
    async with maybe_open_pikerd(reg_addr):
        async with tractor.open_nursery() as an:
            portal = await an.start_actor('paperboi.sim', enable_modules=PAPER_MODULES)
            try:
                async with dialogue(portal, _paper.trades_dialogue, broker='sim') as (stream, snapshot):
                    assert snapshot["positions"] == []

                    async def trade(action, size, price=None):
                        await stream.send(order(action, price or (1000.0 if action == 'buy' else 1.0), size))
                        *_, fill, _, pos = await recv(stream, 5)
                        return fill['price'], (pos['size'], pos['avg_price'])

                    assert await trade('buy', 2) == (100.01, (2, 100.01))
                    await move_market(portal, 'btcusd', 101.0)    # bid 101.00 / ask 101.01
                    price, (size, avg) = await trade('buy', 2)
                    assert price == 101.01 and size == 4 and avg == pytest.approx(100.51)
                    price, (size, avg) = await trade('sell', 3)   # reduce: average kept
                    assert price == 101.0 and size == 1 and avg == pytest.approx(100.51)
                    assert await trade('sell', 3) == (101.0, (-2, 101.0))   # crossed: restarts
                    await move_market(portal, 'btcusd', 99.0)
                    assert await trade('sell', 1) == (99.0, (-3, pytest.approx(301 / 3)))

                # a new dialogue starts with the engine's positions
                async with dialogue(portal, _paper.trades_dialogue, broker='sim') as (stream, snapshot):
                    assert [(p['symbol'], p['size'], round(p['avg_price'], 6)) for p in snapshot["positions"]] == [
                        ('btcusd', -3, round(301 / 3, 6))]
                    assert await trade('buy', 3) == (99.01, (0, 0))
                st = await stats(portal)
                assert (st['dialogues_opened'], st['dialogues_active']) == (2, 0)
            finally:
                await portal.cancel_actor()


async def test_two_symbols_at_once(reg_addr, config_dir):
    write_config(config_dir, SIM_FROZEN)
    async with paperboi(reg_addr) as (portal, stream, _):
        # both symbols' first orders are held for their own feed, then processed in order
        b_btc, s_btc = order('buy', 99.0), order('sell', 100.5)
        b_eth, s_eth = order('buy', 49.0, symbol='ethusd'), order('sell', 50.5, symbol='ethusd')
        for msg in (b_btc, b_eth, s_btc, s_eth):
            await stream.send(msg)
        msgs = await recv(stream, 8)
        by_oid: dict[str, list[str]] = {}
        reqids = {}
        for m in msgs:
            oid = m['oid'] if m['name'] == 'ack' else m['broker_details']['oid']
            by_oid.setdefault(oid, []).append(kinds([m])[0])
            reqids.setdefault(oid, m['reqid'])
        assert by_oid == {o['oid']: ['ack', 'status:submitted'] for o in (b_btc, b_eth, s_btc, s_eth)}
        assert len(set(reqids.values())) == 4
        st = await stats(portal)
        assert st['feeds'] == {'btcusd': 'live', 'ethusd': 'live'}
        assert st['resting_orders'] == 4

        # moving eth fills only eth's sell
        await set_price('ethusd', 51.0)
        fill, _, pos = await recv(stream, 3)
        assert (fill['reqid'], fill['price'], fill['broker_details']['symbol']) == (reqids[s_eth['oid']], 50.5, 'ethusd')
        assert (pos['symbol'], pos['size'], pos['avg_price']) == ('ethusd', -1, 50.5)
        await set_price('btcusd', 98.0)
        fill, _, pos = await recv(stream, 3)
        assert (fill['reqid'], fill['price']) == (reqids[b_btc['oid']], 99.0)
        assert (pos['symbol'], pos['size'], pos['avg_price']) == ('btcusd', 1, 99.0)
        st = await stats(portal)
        assert sorted(o['oid'] for o in st['open_orders']) == sorted([s_btc['oid'], b_eth['oid']])
        assert sorted((p['symbol'], p['size']) for p in st['positions']) == [('btcusd', 1), ('ethusd', -1)]


async def test_huge_orders_of_one_dialogue_do_not_break_another_dialogues_fills(reg_addr, config_dir):
    """Regression (issue 8): two marketable buys of size 1e306 used to turn the shared position
    into inf/NaN, after which every other client's execution errored and a crossed resting order
    filled with no status at all. Now both are refused, and other orders fill and report."""
    write_config(config_dir, SIM_FROZEN)
    async with paperboi(reg_addr) as (portal, a, _):
        huge = [order('buy', 101.0, size=1e306), order('buy', 101.0, size=1e306)]
        for msg in huge:
            await a.send(msg)
        errs = await recv(a, 2)
        assert kinds(errs) == ['error', 'error']
        assert [e['oid'] for e in errs] == [m['oid'] for m in huge]

        async with dialogue(portal, _paper.trades_dialogue, broker='sim') as (b, snapshot):
            assert snapshot["positions"] == []
            buy = order('buy', 101.0, size=1)
            await b.send(buy)    # the first order for btcusd: held until the feed's first quote
            ack, sub, fill, filled, pos = await recv(b, 5)
            assert kinds([ack, sub, fill, filled, pos]) == [
                'ack', 'status:submitted', 'fill', 'status:filled', 'position']
            assert (ack['oid'], fill['price'], fill['size'], filled['remaining']) == (buy['oid'], 100.01, 1, 0)
            assert (pos['size'], pos['avg_price']) == (1, 100.01)
            (pos_a,) = await recv(a, 1)   # positions go to every dialogue
            assert (pos_a['name'], pos_a['size']) == ('position', 1)

            # a resting order crossed later always reports its fill and status
            ack, _ = await place(b, order('sell', 100.50, size=1))
            await move_market(portal, 'btcusd', 100.60)
            fill, filled, pos = await recv(b, 3)
            assert kinds([fill, filled, pos]) == ['fill', 'status:filled', 'position']
            assert (fill['reqid'], fill['price'], filled['remaining']) == (ack['reqid'], 100.5, 0)
            assert (pos['size'], pos['avg_price']) == (0, 0)

        st = await stats(portal)
        assert st['rejected'] == 2 and st['executions'] == 2 and st['failures'] == 0
        assert all(
            math.isfinite(p['size']) and math.isfinite(p['avg_price']) for p in st['positions'])


async def test_batches_both_ways_when_asked(reg_addr, config_dir):
    """Opened with ``max_batch`` (as emsd does), the engine takes a list of requests as one
    message and sends one request's events as one list: the same events, in the same order, as
    the single form (docs/backends.md)."""
    write_config(config_dir, SIM_FROZEN)
    async with maybe_open_pikerd(reg_addr):
        async with tractor.open_nursery() as an:
            portal = await an.start_actor('paperboi.sim', enable_modules=PAPER_MODULES)
            try:
                async with dialogue(portal, _paper.trades_dialogue, broker='sim', max_batch=64) as (stream, _):
                    buy, sell = order('buy', 101.0, size=2), order('sell', 100.5)
                    await stream.send([buy, sell])
                    messages, events = 0, []
                    with trio.fail_after(10):
                        while len(events) < 7:
                            msg = await stream.receive()
                            if is_heartbeat(msg):
                                continue
                            messages += 1
                            events.extend(msg if isinstance(msg, list) else [msg])
                    assert kinds(events) == ['ack', 'status:submitted', 'fill', 'status:filled',
                                             'position', 'ack', 'status:submitted']
                    assert [e['oid'] for e in events if e['name'] == 'ack'] == [buy['oid'], sell['oid']]
                    assert messages < len(events)  # emitted together: batched
                    st = await stats(portal)
                    assert (st['received'], st['resting_orders'], st['rejected']) == (2, 1, 0)
            finally:
                await portal.cancel_actor()
