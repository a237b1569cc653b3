"""emsd end to end: dark book, commands, routing, broker-event translation (SPEC §5).

Each test runs its own pikerd on a free port with a calm `sim` market (tiny random walk), reads
the current price from a feed and moves the market with `set_price` to cross triggers, so every
sequence is deterministic. Statuses are awaited with `trio.fail_after`, never slept on.
"""
from __future__ import annotations

import pytest
import trio

from piker_ems.clearing import BrokerdPosition, Status, open_ems
from piker_ems.service import open_pikerd

from _ems_helpers import last_price, SIM_CALM, collect_until, ems_stats, next_status, set_price
from conftest import write_config

pytestmark = pytest.mark.trio

FQSN = 'btcusd.sim'
TERMINAL = {'broker_executed', 'alert_triggered', 'dark_cancelled', 'broker_cancelled', 'error'}



async def test_dark_buy_above_last_triggers_fills_and_positions(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        async with open_ems(FQSN, mode='dark', name='alice') as (book, trades, positions):
            assert positions == []
            last = await last_price()
            oid = book.send('buy', round(last + 0.50, 2), 1)
            first = await next_status(trades, oid)
            assert first.resp == 'dark_submitted'
            assert first.req.price == round(last + 0.50, 2) and first.owner == 'alice'

            await set_price('btcusd', round(last + 1.00, 2))  # ask prints at +1.01
            seq = await collect_until(trades, TERMINAL, oid)
            assert [s.resp for s in seq] == [
                'dark_triggered', 'broker_submitted', 'broker_filled', 'broker_executed']
            trig = seq[0]
            assert trig.trigger_price == round(last + 1.01, 2)
            # released 5 ticks through the triggering tick, on the tick grid
            assert trig.req.price == round(last + 1.06, 2)
            fill = seq[2].brokerd_msg
            assert fill['size'] == 1 and fill['price'] <= trig.req.price

            with trio.fail_after(5):
                async for msg in trades:
                    if isinstance(msg, BrokerdPosition):
                        break
            assert (msg.symbol, msg.size, msg.avg_price) == ('btcusd', 1, fill['price'])


async def test_dark_sell_below_last_triggers_on_bid(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        async with open_ems(FQSN, mode='dark', name='alice') as (book, trades, _):
            last = await last_price()
            oid = book.send('sell', round(last - 0.50, 2), 2)
            assert (await next_status(trades, oid)).resp == 'dark_submitted'
            await set_price('btcusd', round(last - 1.00, 2))  # bid prints at -1.00
            seq = await collect_until(trades, TERMINAL, oid)
            assert [s.resp for s in seq] == [
                'dark_triggered', 'broker_submitted', 'broker_filled', 'broker_executed']
            assert seq[0].trigger_price == round(last - 1.00, 2)
            assert seq[0].req.price == round(last - 1.05, 2)
            assert seq[2].brokerd_msg['price'] >= seq[0].req.price


async def test_alert_triggers_without_touching_the_broker(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        async with open_ems(FQSN, mode='dark', name='alice') as (book, trades, _):
            last = await last_price()
            oid = book.send('alert', round(last + 0.40, 2))
            assert (await next_status(trades, oid)).resp == 'alert_submitted'
            await set_price('btcusd', round(last + 1.00, 2))
            seq = await collect_until(trades, TERMINAL, oid)
            assert [s.resp for s in seq] == ['alert_triggered']
            assert seq[0].trigger_price == round(last + 1.00, 2)  # alerts watch trades only
            stats = await ems_stats()
            assert stats['venue_requests'] == {'sim.paper': 0}


async def test_dark_cancel_never_fires(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        async with open_ems(FQSN, mode='dark', name='alice') as (book, trades, _):
            last = await last_price()
            oid = book.send('buy', round(last + 0.50, 2), 1)
            assert (await next_status(trades, oid)).resp == 'dark_submitted'
            book.cancel(oid)
            assert (await next_status(trades, oid)).resp == 'dark_cancelled'
            # barrier: an alert at the same level fires on the same crossing
            barrier = book.send('alert', round(last + 0.50, 2))
            assert (await next_status(trades, barrier)).resp == 'alert_submitted'
            await set_price('btcusd', round(last + 1.00, 2))
            st = await next_status(trades)
            assert (st.oid, st.resp) == (barrier, 'alert_triggered')
            book.cancel(oid)  # cancelling again: refused, the order is closed
            st = await next_status(trades, oid)
            assert st.resp == 'error' and 'closed' in st.reason
            stats = await ems_stats()
            assert stats['dark'] == 0 and stats['venue_requests'] == {'sim.paper': 0}


async def test_dark_modify_rearms_at_new_price(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        async with open_ems(FQSN, mode='dark', name='alice') as (book, trades, _):
            last = await last_price()
            oid = book.send('alert', round(last + 0.30, 2))
            assert (await next_status(trades, oid)).resp == 'alert_submitted'
            book.update(oid, price=round(last + 2.00, 2))
            st = await next_status(trades, oid)
            assert st.resp == 'alert_submitted' and st.req.price == round(last + 2.00, 2)
            barrier = book.send('alert', round(last + 0.30, 2))
            await next_status(trades, barrier)
            await set_price('btcusd', round(last + 1.00, 2))  # crosses the old level only
            st = await next_status(trades)
            assert (st.oid, st.resp) == (barrier, 'alert_triggered')
            await set_price('btcusd', round(last + 2.50, 2))
            st = await next_status(trades)
            assert (st.oid, st.resp, st.trigger_price) == (oid, 'alert_triggered', round(last + 2.50, 2))


async def test_invalid_messages_get_errors_and_connection_keeps_trading(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    bad = [
        ({'action': 'buy', 'oid': 'm1', 'symbol': FQSN, 'price': 1.0}, 'size'),          # missing size
        ({'action': 'buy', 'oid': 'm2', 'symbol': FQSN, 'price': 1.0, 'size': -1}, 'size'),
        ({'action': 'short', 'oid': 'm3', 'symbol': FQSN, 'price': 1.0, 'size': 1}, 'action'),
        ({'action': 'cancel', 'oid': 'nope', 'symbol': FQSN}, 'unknown order'),
        ('not a dict', 'expected a message dict'),
        ({'action': 'buy', 'oid': 'm4', 'symbol': 'btcusd', 'price': 1.0, 'size': 1}, 'broker suffix'),
        ({'action': 'buy', 'oid': 'm5', 'symbol': 'x.doggy', 'price': 1.0, 'size': 1}, 'doggy'),
    ]
    async with open_pikerd(reg_addr):
        async with open_ems(FQSN, mode='dark', name='alice') as (book, trades, _):
            for msg, needle in bad:
                book.send_raw(msg)
                st = await next_status(trades)
                assert st.resp == 'error', (msg, st)
                assert needle in st.reason, (needle, st.reason)
                assert 'emsd failed' not in st.reason  # user errors are not reported as crashes
                if isinstance(msg, dict):
                    assert st.oid == msg['oid']
            last = await last_price()
            oid = book.send('alert', round(last + 0.3, 2))
            assert (await next_status(trades, oid)).resp == 'alert_submitted'
            stats = await ems_stats()
            assert stats['rejected_client_msgs'] == 6


async def test_cancel_all_500_from_sync_code(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        async with open_ems(FQSN, mode='dark', name='alice') as (book, trades, _):
            last = await last_price()
            oids = [book.send('buy', round(last - 5 - i * 0.01, 2), 1) for i in range(500)]
            submitted = set()
            with trio.fail_after(30):
                while len(submitted) < 500:
                    st = await next_status(trades)
                    assert st.resp == 'dark_submitted'
                    submitted.add(st.oid)
            for oid in oids:  # a burst from sync code: never blocks, never raises
                book.cancel(oid)
            cancelled = set()
            with trio.fail_after(30):
                while len(cancelled) < 500:
                    st = await next_status(trades)
                    assert st.resp == 'dark_cancelled'
                    cancelled.add(st.oid)
            assert cancelled == set(oids)
            assert (await ems_stats())['dark'] == 0


async def test_open_ems_with_unknown_broker_is_a_clear_error(reg_addr):
    from piker_ems.brokers import NoBrokerBackend

    with pytest.raises(NoBrokerBackend, match="no broker backend named 'doggy'; available: binance, sim$"):
        async with open_ems('xbt.doggy', name='alice'):
            pass


async def test_commands_queued_before_leaving_still_reach_emsd(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        last = await last_price()
        async with open_ems(FQSN, mode='dark', name='alice') as (book, trades, _):
            oids = [book.send('buy', round(last - 3 - i * 0.01, 2), 1) for i in range(50)]
            for oid in oids:
                book.cancel(oid)  # queued; we leave at once without waiting for answers
        stats = await ems_stats()
        assert stats['dark'] == 0 and stats['phases'] == {'done': 50}
