"""A client learns at once that the EMS is gone (issue 8, item 6).

emsd cancelled through pikerd, or SIGKILLed: the trades stream raises ``EmsLost`` (with a
reason) within the heartbeat window, instead of ending like a normal close or hanging, and
leaving ``open_ems`` afterwards returns within a bound.
"""
from __future__ import annotations

import os
import signal

import pytest
import trio

from _ems_helpers import SIM_CALM
from _proc import actor_pids, wait_gone
from conftest import write_config
from piker_ems.clearing import Status
from piker_ems.clearing._client import EmsLost, open_ems
from piker_ems.clearing._statuses import ALERT_SUBMITTED
from piker_ems.service import open_pikerd
from piker_ems.service._ipc import HEARTBEAT_TIMEOUT_S

pytestmark = pytest.mark.trio

#: leaving open_ems after the EMS was lost must take at most this long
EXIT_BOUND_S = 3.0


async def _place_alert(book, trades) -> None:
    oid = book.send('alert', 1.0)
    with trio.fail_after(15):
        async for msg in trades:
            if isinstance(msg, Status) and msg.oid == oid:
                assert msg.resp == ALERT_SUBMITTED
                break


async def _expect_lost(trades, within: float) -> tuple[EmsLost, float]:
    start = trio.current_time()
    with trio.fail_after(within):
        with pytest.raises(EmsLost) as info:
            async for _ in trades:
                pass
    return info.value, trio.current_time() - start


async def test_cancel_service_emsd_raises_emslost_and_exit_is_bounded(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr) as services:
        with trio.fail_after(60):  # a hang anywhere fails the test
            async with open_ems('btcusd.sim', name='bot') as (book, trades, _):
                await _place_alert(book, trades)
                async with trio.open_nursery() as n:
                    n.start_soon(services.cancel_service, 'emsd')
                    err, took = await _expect_lost(trades, within=HEARTBEAT_TIMEOUT_S + 2)
                assert 'emsd' in err.reason and err.reason == str(err)
                # the stream stays lost: a second receive raises again, with the same reason
                with trio.fail_after(1), pytest.raises(EmsLost, match='emsd'):
                    await trades.receive()
                leaving = trio.current_time()
            left = trio.current_time() - leaving
        assert left < EXIT_BOUND_S
        print(f'cancel_service -> EmsLost in {took:.3f}s ({err.reason}); exit in {left:.3f}s')
        assert 'emsd' not in services.list()


async def test_sigkill_emsd_raises_emslost_and_exit_is_bounded(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        with trio.fail_after(60):
            async with open_ems('btcusd.sim', name='bot') as (book, trades, _):
                await _place_alert(book, trades)
                [pid] = actor_pids('emsd')
                os.kill(pid, signal.SIGKILL)
                err, took = await _expect_lost(trades, within=HEARTBEAT_TIMEOUT_S + 2)
                leaving = trio.current_time()
            left = trio.current_time() - leaving
        assert left < EXIT_BOUND_S
        print(f'SIGKILL -> EmsLost in {took:.3f}s ({err.reason}); exit in {left:.3f}s')
        wait_gone([pid])


async def test_client_exit_stays_clean_and_quiet(reg_addr, config_dir):
    """Leaving normally never reports a lost EMS, and emsd keeps serving the next client."""
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr) as services:
        for _ in range(2):
            with trio.fail_after(30):
                async with open_ems('btcusd.sim', name='bot') as (book, trades, _):
                    await _place_alert(book, trades)
                    leaving = trio.current_time()
                assert trio.current_time() - leaving < EXIT_BOUND_S
            assert trades.lost is None
        assert 'emsd' in services.list()
