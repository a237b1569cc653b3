"""brokerd.sim's live ``trades_dialogue``: the simulated exchange, spoken to with raw Brokerd*
messages (int reqids, configurable ack/fill latency, cancel only by reqid).

Each test runs its own pikerd, finds ``brokerd.sim`` through ``maybe_spawn_brokerd`` and holds a
feed on the traded symbol. The market is frozen (no random walk, one-tick spread) and only moves
through ``set_price``, so prices are exact.
"""
from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from piker_ems.service._auth import call
from piker_ems.brokers import sim
from piker_ems.data import open_feed
from piker_ems.service import maybe_open_pikerd, maybe_spawn_brokerd

from _dialogue_helpers import SIM_FROZEN, cancel, dialogue, kinds, order, recv
from conftest import write_config

pytestmark = pytest.mark.trio


@asynccontextmanager
async def exchange(reg_addr, symbol: str = 'btcusd'):
    """pikerd here, brokerd.sim found or spawned, a feed on ``symbol``, the dialogue open."""
    async with maybe_open_pikerd(reg_addr):
        async with maybe_spawn_brokerd('sim') as portal:
            async with open_feed(f'{symbol}.sim'):
                async with dialogue(portal, sim.trades_dialogue) as (stream, snapshot):
                    yield portal, stream, snapshot












async def stats(portal) -> dict:
    return await call(portal, 'piker_ems.brokers.sim', 'exchange_stats')


async def set_price(portal, symbol: str, price: float) -> dict:
    return await call(portal, 'piker_ems.brokers.sim', 'set_price', symbol=symbol, price=price)


async def test_ack_int_reqids_and_fills(reg_addr, config_dir):
    write_config(config_dir, SIM_FROZEN)
    async with exchange(reg_addr) as (portal, stream, snapshot):
        assert snapshot["positions"] == []
        buy = order('buy', 101.0, size=2)
        await stream.send(buy)
        ack, sub, fill, filled, pos = await recv(stream, 5)
        assert kinds([ack, sub, fill, filled, pos]) == [
            'ack', 'status:submitted', 'fill', 'status:filled', 'position']
        assert (ack['oid'], ack['reqid']) == (buy['oid'], 1) and isinstance(ack['reqid'], int)
        assert (sub['reqid'], sub['remaining']) == (1, 2)
        assert (fill['reqid'], fill['price'], fill['size'], fill['action']) == (1, 100.01, 2, 'buy')
        assert (filled['filled'], filled['remaining']) == (2, 0)
        assert (pos['broker'], pos['symbol'], pos['size'], pos['avg_price']) == ('sim', 'btcusd', 2, 100.01)

        # a resting sell is matched by the market itself (set_price calls the exchange's listener)
        sell = order('sell', 100.5, size=2)
        await stream.send(sell)
        ack, sub = await recv(stream, 2)
        assert (ack['reqid'], sub['status']) == (2, 'submitted')
        assert [o['reqid'] for o in (await stats(portal))['open_orders']] == [2]
        await set_price(portal, 'btcusd', 100.7)
        fill, filled, pos = await recv(stream, 3)
        assert (fill['reqid'], fill['price']) == (2, 100.5)
        assert (pos['size'], pos['avg_price']) == (0, 0)

        st = await stats(portal)
        assert (st['dialogues_opened'], st['dialogues_active'], st['open_orders']) == (1, 1, [])
        assert (st['ack_delay'], st['fill_delay']) == (0.0, 0.0)


async def test_ack_delay_and_cancel_only_by_reqid(reg_addr, config_dir):
    write_config(config_dir, SIM_FROZEN + 'ack_delay = 0.3\n')
    async with exchange(reg_addr) as (portal, stream, _):
        rest = order('buy', 99.0)
        t0 = trio.current_time()
        await stream.send(rest)
        # a cancel before the ack: the exchange cannot know which order is meant
        await stream.send(cancel(rest['oid'], None))
        (err,) = await recv(stream, 1)
        assert (err['name'], err['oid'], err['reqid'], err['reason']) == (
            'error', rest['oid'], None, 'unknown order')
        ack, sub = await recv(stream, 2)
        assert trio.current_time() - t0 >= 0.3
        assert kinds([ack, sub]) == ['ack', 'status:submitted']
        reqid = ack['reqid']
        assert (await stats(portal))['open_orders'] == [{
            'reqid': reqid, 'oid': rest['oid'], 'account': 'paper', 'action': 'buy',
            'symbol': 'btcusd', 'price': 99.0, 'size': 1.0, 'filled': 0.0}]

        # the cancel with the acked reqid works (cancels are not delayed)
        await stream.send(cancel(rest['oid'], reqid))
        (st,) = await recv(stream, 1)
        assert kinds([st]) == ['status:cancelled'] and (st['reqid'], st['remaining']) == (reqid, 1)
        await stream.send(cancel(rest['oid'], reqid))
        (err,) = await recv(stream, 1)
        assert (err['reqid'], err['reason']) == (reqid, 'order already cancelled')
        await stream.send(cancel('x', 999))
        (err,) = await recv(stream, 1)
        assert (err['oid'], err['reqid'], err['reason']) == ('x', 999, 'unknown order')

        st = await stats(portal)
        assert st['ack_delay'] == 0.3 and st['open_orders'] == []
        assert [(r['name'], r['oid'], r['reqid']) for r in st['requests']] == [
            ('order', rest['oid'], None),
            ('cancel', rest['oid'], None),
            ('cancel', rest['oid'], reqid),
            ('cancel', rest['oid'], reqid),
            ('cancel', 'x', 999),
        ]
        # the journal orders what the exchange received and sent: the reqid-carrying cancel
        # arrived only after the ack went out
        events = [(j['dir'], j['name'], j['reqid']) for j in st['journal'] if j['oid'] == rest['oid']]
        assert events[:6] == [
            ('in', 'order', None), ('in', 'cancel', None), ('out', 'error', None),
            ('out', 'ack', reqid), ('out', 'status', reqid), ('in', 'cancel', reqid)]


async def test_modify_leaves_one_open_order(reg_addr, config_dir):
    write_config(config_dir, SIM_FROZEN)
    async with exchange(reg_addr) as (portal, stream, _):
        sell = order('sell', 102.0, size=1)
        await stream.send(sell)
        ack, _ = await recv(stream, 2)
        reqid = ack['reqid']
        for px, size in [(101.5, 2), (101.0, 3)]:
            await stream.send(order('sell', px, size=size, reqid=reqid, oid=sell['oid']))
            (sub,) = await recv(stream, 1)
            assert kinds([sub]) == ['status:submitted'] and (sub['reqid'], sub['remaining']) == (reqid, size)
        st = await stats(portal)
        assert [(o['reqid'], o['oid'], o['price'], o['size']) for o in st['open_orders']] == [
            (reqid, sell['oid'], 101.0, 3)]

        # modified through the bid: executes at the bid under the same reqid
        await stream.send(order('sell', 99.0, size=3, reqid=reqid, oid=sell['oid']))
        seq = await recv(stream, 4)
        assert kinds(seq) == ['status:submitted', 'fill', 'status:filled', 'position']
        assert (seq[1]['reqid'], seq[1]['price'], seq[1]['size']) == (reqid, 100.0, 3)
        assert (await stats(portal))['open_orders'] == []
        await stream.send(order('sell', 99.0, reqid=reqid, oid=sell['oid']))
        (err,) = await recv(stream, 1)
        assert (err['name'], err['reason']) == ('error', 'order already filled')


async def test_fill_delay(reg_addr, config_dir):
    write_config(config_dir, SIM_FROZEN + 'fill_delay = 0.3\n')
    async with exchange(reg_addr) as (portal, stream, _):
        buy = order('buy', 101.0)
        await stream.send(buy)
        ack, sub = await recv(stream, 2)
        t0 = trio.current_time()
        # executed already (it left the book): too late to cancel
        await stream.send(cancel(buy['oid'], ack['reqid']))
        err, fill, filled, pos = await recv(stream, 4)
        assert (err['name'], err['reason']) == ('error', 'order already filled')
        assert kinds([fill, filled, pos]) == ['fill', 'status:filled', 'position']
        assert trio.current_time() - t0 >= 0.25
        assert (fill['price'], pos['size']) == (100.01, 1)


async def test_dialogues_counted_positions_kept_and_bad_messages(reg_addr, config_dir):
    write_config(config_dir, SIM_FROZEN)
    async with maybe_open_pikerd(reg_addr):
        async with maybe_spawn_brokerd('sim') as portal:
            async with open_feed('btcusd.sim'):
                async with dialogue(portal, sim.trades_dialogue) as (stream, snapshot):
                    assert snapshot["positions"] == []
                    for bad in ['junk', {'name': 'order', 'oid': 'b1'}, {'name': 'cancel', 'oid': 'b2', 'reqid': 1.5}]:
                        await stream.send(bad)
                    errs = await recv(stream, 2)
                    assert [(e['name'], e['oid']) for e in errs] == [('error', 'b1'), ('error', 'b2')]
                    await stream.send(order('sell', 1.0, size=2))
                    *_, pos = await recv(stream, 5)
                    assert (pos['size'], pos['avg_price']) == (-2, 100.0)
                async with dialogue(portal, sim.trades_dialogue) as (stream, snapshot):
                    assert [(p['symbol'], p['size'], p['avg_price']) for p in snapshot["positions"]] == [('btcusd', -2, 100.0)]
                    await stream.send(order('buy', 200.0))
                    ack, *_ = await recv(stream, 5)
                    assert ack['reqid'] == 2   # ids keep increasing across dialogues
                st = await stats(portal)
                assert (st['dialogues_opened'], st['dialogues_active'], st['rejected']) == (2, 0, 3)
                assert st['watched'] == ['btcusd']


async def test_an_execution_that_would_overflow_the_position_fails_only_that_order(reg_addr, config_dir):
    """A marketable sell at an absurd (finite) bid would make the position inf: the exchange
    answers an error for that reqid, books nothing, and the next orders fill normally."""
    write_config(config_dir, SIM_FROZEN)
    async with exchange(reg_addr) as (portal, stream, _):
        await set_price(portal, 'btcusd', 1e300)
        bad = order('sell', 1.0, size=1e12)
        await stream.send(bad)
        ack, sub, err = await recv(stream, 3)
        assert kinds([ack, sub, err]) == ['ack', 'status:submitted', 'error']
        assert (err['reqid'], err['oid']) == (ack['reqid'], bad['oid'])
        st = await stats(portal)
        assert st['positions'] == [] and st['open_orders'] == []
        assert (st['executions'], st['failed_executions']) == (0, 1)

        await stream.send(cancel(bad['oid'], ack['reqid']))   # it is not working anymore
        (cerr,) = await recv(stream, 1)
        assert (cerr['name'], cerr['reason']) == ('error', 'order already rejected')

        await set_price(portal, 'btcusd', 100.0)
        await stream.send(order('buy', 101.0, size=2))
        ack, sub, fill, filled, pos = await recv(stream, 5)
        assert kinds([ack, sub, fill, filled, pos]) == [
            'ack', 'status:submitted', 'fill', 'status:filled', 'position']
        assert (fill['price'], pos['size'], pos['avg_price']) == (100.01, 2, 100.01)
