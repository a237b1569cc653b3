"""Multi-player (SPEC §9): ownership and watching, reconnect snapshots, disconnect policies."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from piker_ems.clearing import Status, open_ems
from piker_ems.service import open_pikerd

from _ems_helpers import last_price, SIM_CALM, collect_until, ems_stats, next_status, set_price
from conftest import write_config

pytestmark = pytest.mark.trio

FQSN = 'btcusd.sim'



async def drain(trades, seconds: float = 0.0) -> list:
    """Whatever is already queued on a trades stream (no waiting beyond ``seconds``)."""
    out = []
    with trio.move_on_after(seconds):
        while True:
            try:
                out.append(trades.receive_nowait())
            except trio.WouldBlock:
                if seconds == 0:
                    break
                out.append(await trades.receive())
    return out


async def test_watcher_sees_owner_flows_other_symbols_see_nothing(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        last = await last_price()
        async with (
            open_ems(FQSN, mode='dark', name='A') as (a_book, a_trades, _),
            open_ems(FQSN, mode='dark', name='W', watch='symbol') as (_, w_trades, _),
            open_ems('es.sim', mode='dark', name='B') as (b_book, b_trades, _),
        ):
            dark = a_book.send('buy', round(last - 3, 2), 1)
            live = a_book.send('buy', round(last - 3, 2), 2, exec_mode='live')  # rests in paper
            b_oid = b_book.send('alert', 1.0)
            assert (await next_status(b_trades, b_oid)).resp == 'alert_submitted'

            a_seen = await collect_until(a_trades, {'broker_submitted'}, live)
            w_seen = [await next_status(w_trades, dark), *await collect_until(w_trades, {'broker_submitted'}, live)]
            for st in w_seen:
                assert st.owner == 'A' and st.req is not None and st.req.oid == st.oid
            assert w_seen[0].resp == 'dark_submitted' and w_seen[-1].resp == 'broker_submitted'
            assert w_seen[-1].req.size == 2

            a_book.cancel(dark)
            assert (await next_status(w_trades, dark)).resp == 'dark_cancelled'
            assert (await next_status(a_trades, dark)).resp == 'dark_cancelled'
            # B (another symbol, not watching) got only its own status; A and W nothing of B's
            assert [m.oid for m in await drain(b_trades) if isinstance(m, Status)] == []
            assert b_oid not in {m.oid for m in await drain(a_trades) + await drain(w_trades) if isinstance(m, Status)}
            assert all(st.oid in (dark, live) for st in a_seen)


async def test_watcher_control_is_refused_unless_session_allows(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        last = await last_price()
        async with (
            open_ems(FQSN, mode='dark', name='A') as (a_book, a_trades, _),
            open_ems(FQSN, mode='dark', name='W', watch='symbol') as (w_book, w_trades, _),
            open_ems(FQSN, mode='dark', name='M', watch='symbol', control_others=True) as (m_book, m_trades, _),
        ):
            oid = a_book.send('sell', round(last + 3, 2), 1)
            assert (await next_status(a_trades, oid)).resp == 'dark_submitted'
            assert (await next_status(w_trades, oid)).resp == 'dark_submitted'
            await next_status(m_trades, oid)

            w_book.cancel(oid)
            refused = await next_status(w_trades, oid)
            assert refused.resp == 'error' and 'not yours' in refused.reason and refused.req is None
            assert (await ems_stats())['dark'] == 1

            m_book.update(oid, price=round(last + 4, 2))  # the moderator may modify ...
            st = await next_status(a_trades, oid)
            assert st.resp == 'dark_submitted' and st.req.price == round(last + 4, 2)
            m_book.cancel(oid)                            # ... and cancel
            assert (await next_status(a_trades, oid)).resp == 'dark_cancelled'


async def test_reconnect_snapshot_holds_exactly_its_orders_with_current_state(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        last = await last_price()
        async with open_ems(FQSN, mode='dark', name='A') as (book, trades, _):
            resting = book.send('buy', round(last - 3, 2), 1)
            alert = book.send('alert', round(last - 4, 2))
            fills_later = book.send('buy', round(last + 0.5, 2), 1)
            for oid in (resting, alert, fills_later):
                await next_status(trades, oid)
        async with open_ems(FQSN, mode='dark', name='other', watch='symbol') as (obook, otrades, _):
            other = obook.send('alert', round(last + 9, 2))
            await next_status(otrades, other)
            await set_price('btcusd', round(last + 1, 2))  # fills A's order while A is away
            await collect_until(otrades, {'broker_executed'}, fills_later)
            async with open_ems(FQSN, mode='dark', name='A') as (book, trades, _):
                snap = {s['oid']: s for s in book.open_orders}
                assert set(snap) == {resting, alert, fills_later}   # not 'other's order
                assert snap[resting]['resp'] == 'dark_submitted'
                assert snap[alert]['resp'] == 'alert_submitted'
                assert snap[fills_later]['resp'] == 'broker_executed'
                assert snap[fills_later]['brokerd_msg']['filled'] == 1
                # the adopted orders are A's again: it can cancel them
                book.cancel(resting)
                # the snapshot is also replayed first on the stream; then the cancel arrives
                replay = await collect_until(trades, {'dark_cancelled'}, resting)
                assert [s.resp for s in replay] == ['dark_submitted', 'dark_cancelled']
            async with open_ems(FQSN, mode='dark', name='A') as (book, _, _):
                assert {s['oid'] for s in book.open_orders} == {alert}  # the fill was reported once


def _spawn_client(port: int, name: str, policy: str, dark: float, live: float) -> subprocess.Popen:
    script = Path(__file__).with_name('_ems_client_proc.py')
    return subprocess.Popen(
        [sys.executable, str(script), str(port), name, policy, str(dark), str(live)],
        stdout=subprocess.PIPE, text=True, env={**os.environ},
    )


@pytest.mark.parametrize('policy', ['cancel', 'cancel-dark', 'keep'])
async def test_disconnect_policy_on_sigkill(reg_addr, config_dir, policy):
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        last = await last_price()
        async with open_ems(FQSN, mode='dark', name='W', watch='symbol') as (_, w_trades, _):
            proc = _spawn_client(reg_addr[1], 'A', policy, round(last - 3, 2), round(last - 3, 2))
            try:
                line = await trio.to_thread.run_sync(proc.stdout.readline)
                oids = json.loads(line)
                proc.send_signal(signal.SIGKILL)
                await trio.to_thread.run_sync(proc.wait)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if policy == 'keep':
                # emsd notices the dead client (heartbeat send fails); no event tells us when,
                # so poll its client count, bounded
                with trio.fail_after(10):
                    while (await ems_stats())['clients'] != 1:
                        await trio.sleep(0.1)
                stats = await ems_stats()
                assert stats['dark'] == 1 and stats['phases'].get('live') == 1
                # and they fire normally with nobody connected for A
                await set_price('btcusd', round(last - 3.5, 2))
                seen = {}
                with trio.fail_after(10):
                    while len(seen) < 2:
                        st = await next_status(w_trades)
                        if st.resp in ('broker_executed',):
                            seen[st.oid] = st.resp
                assert set(seen) == {oids['dark'], oids['live']}
                return
            expected = {oids['dark']: 'dark_cancelled'}
            if policy == 'cancel':
                expected[oids['live']] = 'broker_cancelled'
            got = {}
            with trio.fail_after(10):  # heartbeat window (~1-3 s) plus the venue round trip
                while len(got) < len(expected):
                    st = await next_status(w_trades)
                    if st.resp in ('dark_cancelled', 'broker_cancelled'):
                        assert st.owner == 'A'
                        got[st.oid] = st.resp
            assert got == expected
            stats = await ems_stats()
            assert stats['dark'] == 0
            assert stats['phases'].get('live', 0) == (1 if policy == 'cancel-dark' else 0)
