"""emsd survives its broker dying: working orders are told, the venue is reopened and reconciled
(the sim exchange outlives its gateway process, like a real venue)."""
from __future__ import annotations

import os
import signal

import pytest

from piker_ems.clearing import open_ems
from piker_ems.service import open_pikerd

from _ems_helpers import SIM_CALM, collect_until, ems_stats, last_price, next_status, rpc
from _proc import actor_pids
from conftest import write_config

pytestmark = pytest.mark.trio

FQSN = 'btcusd.sim'


async def exchange() -> dict:
    return await rpc('brokerd.sim', 'piker_ems.brokers.sim', 'exchange_stats')


async def test_broker_death_is_reported_and_the_venue_reopens(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        last = await last_price()
        async with open_ems(FQSN, mode='live', name='A') as (book, trades, _):
            working = book.send('buy', round(last - 3, 2), 1)
            dark = book.send('sell', round(last + 3, 2), 1, exec_mode='dark')
            first = {}
            while len(first) < 2:  # the two arrive in either order
                st = await next_status(trades)
                first[st.oid] = st.resp
            assert first == {working: 'broker_submitted', dark: 'dark_submitted'}

            [pid] = actor_pids('brokerd.sim', os.getpid())
            os.kill(pid, signal.SIGKILL)

            lost = await next_status(trades, working, timeout=10)  # heartbeat window ~3 s
            assert lost.resp == 'broker_disconnected' and 'lost' in lost.reason

            # emsd reopens the venue (pikerd respawns brokerd.sim, whose exchange restores its
            # book from its journal) and reconciles: the order is still working there
            back = await next_status(trades, working, timeout=30)
            assert back.resp == 'broker_submitted' and back.brokerd_msg.get('reconciled'), back
            [new_pid] = actor_pids('brokerd.sim', os.getpid())
            assert new_pid != pid

            again = book.send('buy', round(last - 4, 2), 1)
            seq = await collect_until(trades, {'broker_submitted', 'error', 'broker_errored'}, again, timeout=30)
            assert seq[-1].resp == 'broker_submitted', seq
            stats = await ems_stats()
            assert stats['dark'] == 1                    # the dark order still rests in emsd
            assert stats['venues'] == [['sim', 'live']]
            # the new brokerd.sim process was never sent it again ...
            assert [r for r in (await exchange())['requests'] if r['oid'] == working] == []
            # ... and its exchange still works it, once
            assert [o['oid'] for o in (await exchange())['open_orders']].count(working) == 1
