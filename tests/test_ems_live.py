"""emsd against the live `sim` exchange (account 'live'): acks, reqids, cancel races, one
dialogue for many clients, triggers with nobody connected, and embedding in a foreign tree."""
from __future__ import annotations

import pytest
import tractor
import trio

from piker_ems.clearing import BrokerdPosition, Status, open_ems
from piker_ems.data import open_feed
from piker_ems.service import open_pikerd

from _ems_helpers import last_price, SIM_CALM, collect_until, next_status, rpc, set_price
from conftest import write_config

pytestmark = pytest.mark.trio

FQSN = 'btcusd.sim'



async def exchange() -> dict:
    return await rpc('brokerd.sim', 'piker_ems.brokers.sim', 'exchange_stats')


async def test_cancel_before_ack_waits_for_the_reqid(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM + 'ack_delay = 0.5\n')
    async with open_pikerd(reg_addr):
        last = await last_price()
        async with open_ems(FQSN, mode='live', name='A') as (book, trades, _):
            oid = book.send('buy', round(last - 3, 2), 1)
            book.cancel(oid)  # the exchange has not acked yet
            seq = await collect_until(trades, {'broker_cancelled', 'error', 'broker_errored'}, oid)
            assert [s.resp for s in seq] == ['broker_submitted', 'broker_cancelled']
            reqid = seq[-1].broker_reqid
            assert isinstance(reqid, int)
            reqs = [r for r in (await exchange())['requests'] if r['oid'] == oid]
            assert [r['name'] for r in reqs] == ['order', 'cancel']
            assert reqs[0]['reqid'] is None and reqs[1]['reqid'] == reqid
            # the cancel left emsd only after the ack, which came >= 0.5 s after the order
            assert reqs[1]['time_ns'] - reqs[0]['time_ns'] >= 0.45e9
            assert (await exchange())['open_orders'] == []


async def test_order_fills_before_the_stashed_cancel_lands(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM + 'ack_delay = 0.3\n')
    async with open_pikerd(reg_addr):
        last = await last_price()
        async with open_ems(FQSN, mode='live', name='A') as (book, trades, _):
            oid = book.send('buy', round(last + 3, 2), 1)   # marketable: fills on arrival
            book.cancel(oid)
            seq = await collect_until(trades, {'broker_executed', 'broker_errored', 'broker_cancelled'}, oid)
            resps = [s.resp for s in seq]
            # the fill wins: exactly one final status, and the cancel's refusal is not another
            assert resps[-1] == 'broker_executed' and resps.count('broker_filled') == 1
            assert 'broker_cancelled' not in resps and 'broker_errored' not in resps
            # the cancel did go out (after the ack) and was refused by the exchange ...
            reqs = [r['name'] for r in (await exchange())['requests'] if r['oid'] == oid]
            assert reqs == ['order', 'cancel']
            # ... and nothing more reaches the client for that oid
            probe = book.send('buy', round(last - 3, 2), 1)
            nxt = await next_status(trades)
            assert (nxt.oid, nxt.resp) == (probe, 'broker_submitted')


async def test_live_modify_keeps_the_reqid(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        last = await last_price()
        async with open_ems(FQSN, mode='live', name='A') as (book, trades, _):
            oid = book.send('sell', round(last + 3, 2), 1)
            first = await next_status(trades, oid)
            assert first.resp == 'broker_submitted'
            book.update(oid, price=round(last + 4, 2), size=2)
            second = await next_status(trades, oid)
            assert second.resp == 'broker_submitted' and second.broker_reqid == first.broker_reqid
            orders = (await exchange())['open_orders']
            assert len(orders) == 1
            assert (orders[0]['reqid'], orders[0]['price'], orders[0]['size']) == (
                first.broker_reqid, round(last + 4, 2), 2)


async def test_three_clients_share_one_dialogue_without_crosstalk(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        last = await last_price()
        es_last = await last_price('es.sim')
        async with (
            open_ems(FQSN, mode='live', name='A') as (a, a_tr, _),
            open_ems(FQSN, mode='live', name='B') as (b, b_tr, _),
            open_ems('es.sim', mode='live', name='C') as (c, c_tr, _),
        ):
            oids = {
                'A': [a.send('buy', round(last - 3, 2), 1), a.send('sell', round(last + 3, 2), 1)],
                'B': [b.send('buy', round(last - 4, 2), 1)],
                'C': [c.send('buy', round(es_last + 3, 2), 5)],  # marketable: fills, moves a position
            }
            got: dict[str, list] = {'A': [], 'B': [], 'C': []}
            positions: dict[str, list] = {'A': [], 'B': [], 'C': []}

            async def watch(who, trades, until):
                with trio.fail_after(10):
                    async for msg in trades:
                        if isinstance(msg, BrokerdPosition):
                            positions[who].append(msg)
                        else:
                            got[who].append(msg)
                        if until():
                            return

            async with trio.open_nursery() as n:
                n.start_soon(watch, 'A', a_tr, lambda: len(got['A']) >= 2 and positions['A'])
                n.start_soon(watch, 'B', b_tr, lambda: len(got['B']) >= 1 and positions['B'])
                n.start_soon(watch, 'C', c_tr, lambda: any(s.resp == 'broker_executed' for s in got['C']) and positions['C'])
            for who in 'ABC':
                assert {s.oid for s in got[who]} == set(oids[who]), who
                assert all(s.owner == who for s in got[who])
            for who in 'ABC':  # the fill's position reaches every client of the broker/account
                assert any(p.symbol == 'es' and p.size == 5 for p in positions[who])
            stats = await exchange()
            assert stats['dialogues_opened'] == 1
            assert len(stats['open_orders']) == 3
            # no duplicates: each client saw each of its statuses once
            for who in 'ABC':
                keys = [(s.oid, s.resp, s.time_ns) for s in got[who]]
                assert len(keys) == len(set(keys))


async def test_dark_order_fires_with_no_client_connected(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        last = await last_price()
        async with open_ems(FQSN, mode='dark', account='live', name='A') as (book, trades, _):
            oid = book.send('buy', round(last + 0.5, 2), 1)
            assert (await next_status(trades, oid)).resp == 'dark_submitted'
        # A is gone; a watcher on another name serves as the barrier
        async with open_ems(FQSN, mode='dark', account='live', name='W', watch='symbol') as (_, w, _):
            await set_price('btcusd', round(last + 1, 2))
            seq = await collect_until(w, {'broker_executed'}, oid)
            assert seq[0].resp in ('dark_submitted', 'dark_triggered')  # snapshot replay, then live
        reqs = [r for r in (await exchange())['requests'] if r['oid'] == oid]
        assert len(reqs) == 1 and reqs[0]['name'] == 'order'
        assert reqs[0]['price'] == round(last + 1.06, 2)


async def test_embedded_in_a_foreign_tractor_tree(reg_addr, config_dir):
    """An app with its own root actor and no pikerd anywhere trades through the EMS."""
    write_config(config_dir, SIM_CALM)
    async with tractor.open_root_actor(name='myapp', arbiter_addr=reg_addr, loglevel='critical'):
        async with open_ems(FQSN, mode='paper', name='embedded') as (book, trades, _):
            async with open_feed(FQSN) as feed:
                ask = feed.first_quotes[FQSN]['ask']
            oid = book.send('buy', round(ask + 3, 2), 1)
            seq = await collect_until(trades, {'broker_executed', 'error'}, oid, timeout=20)
            assert [s.resp for s in seq] == ['broker_submitted', 'broker_filled', 'broker_executed']
