"""emsd survives its broker dying: working orders are reported, the venue reopens on demand."""
from __future__ import annotations

import os
import signal

import pytest

from piker_ems.clearing import open_ems
from piker_ems.service import open_pikerd

from _ems_helpers import SIM_CALM, collect_until, ems_stats, last_price, next_status
from _proc import actor_pids
from conftest import write_config

pytestmark = pytest.mark.trio

FQSN = 'btcusd.sim'


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
            assert lost.resp == 'broker_errored' and 'lost' in lost.reason

            again = book.send('buy', round(last - 3, 2), 1)   # reopens the venue, new brokerd
            seq = await collect_until(trades, {'broker_submitted', 'error', 'broker_errored'}, again, timeout=30)
            assert seq[-1].resp == 'broker_submitted', seq
            [new_pid] = actor_pids('brokerd.sim', os.getpid())
            assert new_pid != pid
            stats = await ems_stats()
            assert stats['dark'] == 1                    # the dark order still rests in emsd
            assert stats['venues'] == [['sim', 'live']]
