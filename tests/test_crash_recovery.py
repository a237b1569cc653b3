"""Nothing lost, nothing duplicated across crashes (issue 9: the tests).

Real processes, killed with SIGKILL:

- one ``pikerd`` subprocess holding resting dark orders, an alert, a resting order at the sim
  exchange (``account='live'``), a resting paper order and open positions; brokerd.sim,
  paperboi.sim and emsd are killed in turn, then the whole pikerd process group, and a new
  pikerd is started on the same config dir. After each restart the same client name sees every
  open order in its state, positions equal the sum of the venues' journaled fills, a dark order
  fires exactly once, and no venue holds an order twice;
- crash points (``PIKER_EMS_CRASH_AT``, :mod:`piker_ems.faults`) at the dangerous moments:
  emsd after its journal write / before the venue send, emsd after a venue ack / before
  journaling it, a venue after journaling a fill / before reporting it;
- an order placed at the sim exchange by someone else is adopted as ``@external``;
- a duplicate fill id changes nothing (in-process, through a restart of the Router);
- a damaged emsd journal (garbage file, unreadable records, torn WAL tail).

Every wait is bounded; polling (short sleeps inside ``fail_after``) is used only for things
that have no event: a venue's or emsd's counters settling.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import tractor
import trio

from piker_ems.brokers import sim
from piker_ems.clearing import Status
from piker_ems.clearing._client import EmsLost, open_ems
from piker_ems.clearing._statuses import is_final
from piker_ems.clearing._journal import Journal, read_journal
from piker_ems.clearing._messages import BrokerdFill, BrokerdOrderAck, BrokerdOrderInfo, Order, VenueSnapshot
from piker_ems.clearing._router import EXTERNAL_OWNER, Router
from piker_ems.service import find_service, maybe_open_pikerd
from piker_ems.simvenue._positions import Position
from piker_ems.testing import descendants

from _dialogue_helpers import SIM_FROZEN, dialogue, order, recv
from _ems_helpers import rpc, set_price
from _proc import actor_pids, is_alive, start_pikerd, stop_hard, wait_gone
from _router_fakes import FakeScans, FakeVenues, Rig
from conftest import write_config

FQSN = 'btcusd.sim'
SYM = 'btcusd'
EXECUTED = ['dark_triggered', 'broker_submitted', 'broker_filled', 'broker_executed']
RPC_S = 10.0          # bound on one RPC (tractor 0.1.0a5 can hang on a peer that just died)
RECOVER_S = 30.0      # bound on a venue / emsd coming back (heartbeat 3 s + reopen + spawn)


# -- helpers ----------------------------------------------------------------------------------

async def bounded_rpc(service: str, ns: str, fn: str, **kw):
    with trio.fail_after(RPC_S):
        return await rpc(service, ns, fn, **kw)


async def exchange_stats() -> dict:
    return await bounded_rpc('brokerd.sim', 'piker_ems.brokers.sim', 'exchange_stats')


async def paper_stats() -> dict:
    return await bounded_rpc('paperboi.sim', 'piker_ems.clearing._paper', 'paper_stats', broker='sim')


async def ems_positions() -> dict[tuple[str, str], float]:
    rows = await bounded_rpc('emsd', 'piker_ems.clearing._ems', 'ems_positions')
    return {(r['account'], r['symbol']): r['size'] for r in rows if r['size']}


async def move_price(price: float) -> None:
    with trio.fail_after(RPC_S):
        await set_price(SYM, price)


async def statuses_until(trades, want: dict[str, str], seen: dict | None = None,
                         timeout: float = RECOVER_S) -> dict[str, list[str]]:
    """Read the trades stream until each oid in ``want`` got its status; every status read
    is kept per oid in ``seen`` (snapshot statuses included: they come first)."""
    seen = seen if seen is not None else defaultdict(list)
    with trio.fail_after(timeout):
        while not all(resp in seen[oid] for oid, resp in want.items()):
            msg = await trades.receive()
            if isinstance(msg, Status):
                seen[msg.oid].append(msg.resp)
    return seen


async def expect_lost(trades, timeout: float = 10.0) -> EmsLost:
    with trio.fail_after(timeout):
        with pytest.raises(EmsLost) as info:
            while True:
                await trades.receive()
    return info.value


def fills_sum(db: Path) -> dict[tuple[str, str], float]:
    """Positions (size) recomputed from a venue journal's fills alone."""
    out: dict[tuple[str, str], Position] = {}
    with sqlite3.connect(db) as conn:
        for account, symbol, action, size, price, fee in conn.execute(
                'SELECT account, symbol, action, size, price, fee FROM fills ORDER BY seq'):
            pos = out.get((account, symbol)) or Position(account, symbol)
            out[(account, symbol)] = pos.after(action, size, price, fee)
    return {k: p.size for k, p in out.items() if p.size}


def venue_rows(db: Path, table: str, oid: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(f'SELECT COUNT(*) FROM {table} WHERE oid = ?', (oid,)).fetchone()[0]


def no_oid_twice(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        dup = conn.execute('SELECT oid, COUNT(*) FROM orders GROUP BY oid HAVING COUNT(*) > 1').fetchall()
        fdup = conn.execute('SELECT fill_id, COUNT(*) FROM fills GROUP BY fill_id HAVING COUNT(*) > 1').fetchall()
    assert dup == [] and fdup == [], (db.name, dup, fdup)


async def positions_match_fills(state: Path) -> dict:
    """emsd's positions (what clients see) == the sum of both venues' journaled fills."""
    expected: dict = {}
    for name in ('paper.sim.sqlite', 'sim-exchange.sqlite'):
        if (state / name).exists():
            expected.update(fills_sum(state / name))
    with trio.fail_after(RECOVER_S):   # a position message may trail the fill's status
        while (got := await ems_positions()) != expected:
            await trio.sleep(0.1)
    return got


async def venues_hold_once(state: Path, live: set[str], paper: set[str]) -> None:
    """The sim exchange and the paper engine each work exactly the expected orders, once."""
    x = await exchange_stats()
    p = await paper_stats()
    x_oids = Counter(o['oid'] for o in x['open_orders'])
    p_oids = Counter(o['oid'] for o in p['open_orders'])
    assert x_oids == Counter(live), x['open_orders']
    assert p_oids == Counter(paper), p['open_orders']
    assert x['duplicates'] == 0 and p['duplicates'] == 0, (x['requests'], p['requests'])  # never re-sent
    for name in ('paper.sim.sqlite', 'sim-exchange.sqlite'):
        no_oid_twice(state / name)


async def snapshot_of(name: str, **kw) -> dict[str, str]:
    """What a (re)connecting client named ``name`` sees at start-up: oid -> last status."""
    with trio.fail_after(RECOVER_S):
        async with open_ems(FQSN, name=name, **kw) as (book, _, _):
            return {s['oid']: s['resp'] for s in book.open_orders}


async def fire_dark_once(trades, oid: str, price: float, state: Path) -> None:
    """Cross a resting dark sell: it triggers and executes exactly once."""
    await move_price(price)
    seen = await statuses_until(trades, {oid: 'broker_executed'})
    assert [r for r in seen[oid] if r != 'dark_submitted'] == EXECUTED, seen[oid]  # (snapshot first)
    assert venue_rows(state / 'paper.sim.sqlite', 'orders', oid) == 1
    assert venue_rows(state / 'paper.sim.sqlite', 'fills', oid) == 1


async def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    await trio.to_thread.run_sync(wait_gone, [pid])


@pytest.fixture
def daemon(reg_addr, tmp_path, config_dir, monkeypatch):
    """Start/restart a real ``pikerd`` subprocess (own process group) on the test's port and
    config dir; stopped (or reaped) at the end."""
    procs = []

    def start(env: dict[str, str] | None = None):
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)   # the subprocess (and its actors) inherit it
        proc = start_pikerd(reg_addr[1], tmp_path / f'pikerd-{len(procs)}.log')
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                kids = descendants(proc.pid)
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                    wait_gone(kids)
                except Exception:
                    stop_hard(proc)


def client(reg_addr, name: str = 'test.client'):
    return maybe_open_pikerd(reg_addr, name=name)


# -- kill -9 each process, then the whole tree -------------------------------------------------

def test_kill_each_process_then_the_whole_tree(reg_addr, config_dir, daemon):
    write_config(config_dir, SIM_FROZEN)
    state = config_dir / 'state'
    pikerd = daemon()
    o: dict = {}

    async def first_life():
        async with client(reg_addr):
            async with open_ems(FQSN, mode='dark', name='trader') as (book, trades, _):
                # dark sells above the market: each later phase fires one of them
                o['dark'] = [book.send('sell', 101.0 + i, 1) for i in range(4)]
                o['alert'] = book.send('alert', 150.0)
                o['live'] = book.send('buy', 80.0, 1, exec_mode='live', account='live')
                o['paper'] = book.send('buy', 81.0, 1, exec_mode='live', account='paper')
                paper_pos = book.send('buy', 100.5, 2, exec_mode='live', account='paper')
                live_pos = book.send('buy', 100.5, 1, exec_mode='live', account='live')
                await statuses_until(trades, {
                    **{d: 'dark_submitted' for d in o['dark']}, o['alert']: 'alert_submitted',
                    o['live']: 'broker_submitted', o['paper']: 'broker_submitted',
                    paper_pos: 'broker_executed', live_pos: 'broker_executed'})
                o['open'] = {**{d: 'dark_submitted' for d in o['dark']}, o['alert']: 'alert_submitted',
                             o['live']: 'broker_submitted', o['paper']: 'broker_submitted'}
                assert await positions_match_fills(state) == {('paper', SYM): 2, ('live', SYM): 1}

                # someone else trades at the sim exchange, without emsd
                with trio.fail_after(RPC_S):
                    async with find_service('brokerd.sim') as portal:
                        async with dialogue(portal, sim.trades_dialogue) as (stream, _):
                            ext = {**order('buy', 70.0, oid='ext-order-1'), 'account': 'live'}
                            await stream.send(ext)
                            ack, _ = await recv(stream, 2)
                            assert ack['name'] == 'ack'

                # 1. brokerd.sim: emsd reconnects and reconciles; the exchange kept its book
                [pid] = actor_pids('brokerd.sim', pikerd.pid)
                await kill(pid)
                seen = await statuses_until(trades, {o['live']: 'broker_disconnected'})
                seen[o['live']].clear()
                await statuses_until(trades, {o['live']: 'broker_submitted'}, seen)
                assert await snapshot_of('trader') == o['open']
                await venues_hold_once(state, {o['live'], 'ext-order-1'}, {o['paper']})
                await positions_match_fills(state)
                # ... and the external order was adopted: a watcher sees it, a controller cancels it
                async with open_ems(FQSN, name='boss', watch='all', control_others=True) as (boss, btrades, _):
                    ext_snap = [s for s in boss.open_orders if s['oid'] == 'ext-order-1']
                    assert [(s['owner'], s['resp']) for s in ext_snap] == [(EXTERNAL_OWNER, 'broker_submitted')]
                    boss.cancel('ext-order-1')
                    await statuses_until(btrades, {'ext-order-1': 'broker_cancelled'})
                await venues_hold_once(state, {o['live']}, {o['paper']})
                await fire_dark_once(trades, o['dark'][0], 101.0, state)
                del o['open'][o['dark'][0]]
                await positions_match_fills(state)

                # 2. paperboi.sim: emsd respawns it; it restores its book and positions
                [pid] = actor_pids('paperboi.sim', pikerd.pid)
                await kill(pid)
                seen = await statuses_until(trades, {o['paper']: 'broker_disconnected'})
                seen[o['paper']].clear()
                await statuses_until(trades, {o['paper']: 'broker_submitted'}, seen)
                assert await snapshot_of('trader') == o['open']
                await venues_hold_once(state, {o['live']}, {o['paper']})
                await positions_match_fills(state)
                await fire_dark_once(trades, o['dark'][1], 102.0, state)
                del o['open'][o['dark'][1]]

                # 3. emsd (its paperboi goes with it): the connected client is told ...
                [pid] = actor_pids('emsd', pikerd.pid)
                os.kill(pid, signal.SIGKILL)
                lost = await expect_lost(trades)
                assert lost.reason
            await trio.to_thread.run_sync(wait_gone, [pid])
            # ... the market crosses a dark order while no emsd runs: it fires once after
            await move_price(103.0)
            async with open_ems(FQSN, mode='dark', name='trader') as (book, trades, _):
                snap = {s['oid']: s['resp'] for s in book.open_orders}
                gap = o['dark'][2]
                del o['open'][gap]
                assert {k: v for k, v in snap.items() if k != gap} == o['open']
                # (it may have fired before we connected: then its end is in the snapshot)
                if snap.get(gap) != 'broker_executed':
                    seen = await statuses_until(trades, {gap: 'broker_executed'})
                    assert seen[gap].count('dark_triggered') <= 1
                assert venue_rows(state / 'paper.sim.sqlite', 'orders', gap) == 1
                assert venue_rows(state / 'paper.sim.sqlite', 'fills', gap) == 1
                # the live orders were reconciled with the reopened venues
                with trio.fail_after(RECOVER_S):
                    while await snapshot_of('trader') != o['open']:
                        await trio.sleep(0.1)
                await venues_hold_once(state, {o['live']}, {o['paper']})
                assert await positions_match_fills(state) == {('paper', SYM): -1, ('live', SYM): 1}

    trio.run(first_life)

    # 4. the whole tree at once, then a new pikerd on the same config dir
    group = [pikerd.pid, *descendants(pikerd.pid)]
    os.killpg(pikerd.pid, signal.SIGKILL)
    pikerd.wait(timeout=5)
    wait_gone(group)
    pikerd = daemon()

    async def second_life():
        async with client(reg_addr):
            with trio.fail_after(RECOVER_S):
                while await snapshot_of('trader') != o['open']:
                    await trio.sleep(0.1)   # live orders: until both venues reconciled
            await venues_hold_once(state, {o['live']}, {o['paper']})
            assert await positions_match_fills(state) == {('paper', SYM): -1, ('live', SYM): 1}
            async with open_ems(FQSN, mode='dark', name='trader') as (book, trades, _):
                await fire_dark_once(trades, o['dark'][3], 104.0, state)
            del o['open'][o['dark'][3]]
            assert await snapshot_of('trader') == o['open']
            assert await positions_match_fills(state) == {('paper', SYM): -2, ('live', SYM): 1}
            await venues_hold_once(state, {o['live']}, {o['paper']})

    trio.run(second_life)


# -- in-process: the Router with fakes and a real journal ---------------------------------------

def live_order(oid: str, price: float = 99.0, size: float = 2.0, action: str = 'buy') -> dict:
    return Order(action=action, oid=oid, symbol=FQSN, price=price, size=size,
                 exec_mode='live', account='live').model_dump(mode='json')


def journaled_router(path: Path, clock=None) -> tuple[Router, FakeVenues, FakeScans, Journal]:
    journal = Journal(path)
    venues, scans = FakeVenues(), FakeScans(100.0)
    router = Router(venues, scans, clock=clock or time.time_ns, journal=journal)
    return router, venues, scans, journal


def test_a_duplicate_fill_changes_nothing_even_across_a_restart(tmp_path):
    from _router_fakes import FakeClock, FakeConn

    clock = FakeClock()
    router, venues, _, journal = journaled_router(tmp_path / 'emsd.sqlite', clock)
    alice = FakeConn('alice', FQSN, 'sim', 'live')
    router.add_client(alice)
    router.handle_client_msg(alice, live_order('o1'))
    link = venues.link(('sim', 'live'))
    fill = BrokerdFill(reqid=7, oid='o1', fill_id='f1', action='buy', size=1, price=99.0,
                       time_ns=clock()).model_dump(mode='json')
    router.on_venue_msg(link, BrokerdOrderAck(oid='o1', reqid=7).model_dump(mode='json'))
    router.on_venue_msg(link, fill)
    router.on_venue_msg(link, fill)                 # the venue replays its stream
    assert alice.resps('o1').count('broker_filled') == 1
    assert router.orders['o1'].machine.filled == 1
    journal.close()

    # emsd restarts; the venue reconnects listing that fill again, then replays it once more
    router, venues, _, journal = journaled_router(tmp_path / 'emsd.sqlite', clock)
    assert router.restore(journal.load())['live'] == 1
    alice = FakeConn('alice', FQSN, 'sim', 'live')
    router.add_client(alice)
    info = BrokerdOrderInfo(reqid=7, oid='o1', account='live', symbol=SYM, action='buy', price=99.0,
                            size=2, filled=1, status='open')
    link = venues.reconnect(('sim', 'live'), VenueSnapshot(orders=[info], fills=[fill], since_ns=0))
    router.on_venue_msg(link, fill)
    st = router.orders['o1']
    assert (st.machine.filled, st.machine.state) == (1, 'partially_filled')
    assert 'broker_filled' not in alice.resps('o1') and link.sent == []
    # a new fill id still counts, and completes the order
    router.on_venue_msg(link, {**fill, 'fill_id': 'f2'})
    assert alice.resps('o1')[-2:] == ['broker_filled', 'broker_executed']
    journal.close()


def test_a_venue_batch_is_one_journal_commit_before_anything_leaves(tmp_path):
    """A venue's batch (ack, status, fill, status) is applied in one group: another reader of
    the journal sees none of it until the group commits, while its statuses wait in the
    client's outbox (no writer can run inside the synchronous group); then all of it at once,
    and a restart restores the filled order."""
    from _router_fakes import FakeClock, FakeConn
    from piker_ems.clearing._messages import BrokerdStatus

    clock = FakeClock()
    path = tmp_path / 'emsd.sqlite'
    router, venues, _, journal = journaled_router(path, clock)
    alice = FakeConn('alice', FQSN, 'sim', 'live')
    router.add_client(alice)
    router.handle_client_msg(alice, live_order('o1', size=1.0))
    link = venues.link(('sim', 'live'))

    def journaled_state() -> str:  # as a restarted emsd would read it
        return read_journal(path)['o1'].record['machine']['state']

    before = journaled_state()
    batch = [m.model_dump(mode='json') for m in (
        BrokerdOrderAck(oid='o1', reqid=7),
        BrokerdStatus(reqid=7, status='submitted'),
        BrokerdFill(reqid=7, oid='o1', fill_id='f1', action='buy', size=1, price=99.0, time_ns=clock()),
        BrokerdStatus(reqid=7, status='filled', filled=1, remaining=0),
    )]
    with router.group():
        for msg in batch:
            router.on_venue_msg(link, msg)
        assert alice.resps('o1')[-2:] == ['broker_filled', 'broker_executed']  # queued only
        assert journaled_state() == before          # not committed yet: nothing has left
    assert router.grouped == 1
    assert journaled_state() == router.orders['o1'].machine.state == 'filled'
    journal.close()
    router, _, _, journal = journaled_router(path, clock)
    rows = {r.oid: r for r in journal.load()}
    assert 'o1' not in rows or rows['o1'].final  # restored as finished, never as working
    journal.close()


def test_an_order_queued_while_its_venue_opens_is_sent_once():
    """Regression: the reconciliation of a dialogue's first open re-sent the new orders that
    were queued on that very dialogue while it opened (they went out twice; the sim venues'
    idempotency by oid hid it)."""
    rig = Rig()
    alice = rig.client('alice', account='live')
    link = rig.venue(('sim', 'live'))               # opening: commands queue on it
    rig.send(alice, live_order('o1'))
    rig.send(alice, live_order('o2', price=98.0))
    rig.send(alice, {'action': 'cancel', 'oid': 'o2', 'symbol': FQSN})   # waits for the ack
    link.snapshot = VenueSnapshot(since_ns=rig.clock())
    rig.router.on_venue_open(link)                   # open: the venue knows none of them yet
    assert [(c.name, c.oid) for c in link.sent] == [('order', 'o1'), ('order', 'o2')]
    # nothing was decided for them either: o2 is not 'cancelled before it reached the venue'
    # (its order goes out first; its cancel waits for the ack)
    assert [rig.router.orders[o].state for o in ('o1', 'o2')] == ['pending_new', 'pending_cancel']
    assert not any(is_final(r) for r in alice.resps())


def write_dark_orders(path: Path, n: int, owner: str = 'trader', wal_copy: Path | None = None,
                      garble_first: bool = False) -> list[str]:
    """Journal ``n`` dark buys far below the sim market (through a Router with fakes).
    With ``wal_copy``, the store, its WAL and the order log are copied while the writer still
    holds them (nothing folded or checkpointed), as a ``kill -9`` leaves them; ``garble_first``
    overwrites the first order's record in the store with garbage (a complete transaction)."""
    router, _, _, journal = journaled_router(path)
    journal.db.execute('PRAGMA wal_autocheckpoint=0')
    conn = Rig().client(owner)   # a connection object only (it belongs to another rig)
    router.add_client(conn)
    oids = []
    for i in range(n):
        oid = f'dark-{i:03d}'
        router.handle_client_msg(conn, Order(action='buy', oid=oid, symbol=FQSN, price=50.0 + i * 0.01,
                                             size=1, exec_mode='dark', account='paper').model_dump(mode='json'))
        oids.append(oid)
        if garble_first and i == 1:
            journal.fold()  # (emsd folds the log into the store twice a second)
            journal.db.execute("UPDATE orders SET record = '{not json' WHERE oid = 'dark-000'")
    if wal_copy is not None:
        wal_copy.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ('', '-wal', '-log'):
            shutil.copy(path.with_name(path.name + suffix), wal_copy.with_name(wal_copy.name + suffix))
    journal.close()
    return oids


def test_a_torn_or_garbled_journal_keeps_every_complete_record(tmp_path, caplog):
    src, crash = tmp_path / 'live' / 'emsd.sqlite', tmp_path / 'crash' / 'emsd.sqlite'
    src.parent.mkdir()
    oids = write_dark_orders(src, 20, wal_copy=crash)
    tear(crash)                                      # the last write is torn
    journal = Journal(crash)
    assert journal.moved_aside is None
    # one complete record is garbage, one is JSON that is no order
    journal.db.execute("UPDATE orders SET record = '{not json' WHERE oid = 'dark-000'")
    journal.db.execute("UPDATE orders SET record = '{\"machine\": 1}' WHERE oid = 'dark-001'")
    with caplog.at_level(logging.INFO):
        rows = journal.load()
        router = Router(FakeVenues(), FakeScans(100.0), clock=time.time_ns, journal=journal)
        counts = router.restore(rows)
    kept = [r.oid for r in rows]
    assert kept == oids[1:len(kept) + 1] and 16 <= len(kept) < 19   # only the torn tail is lost
    assert counts == {'dark': len(kept) - 1, 'live': 0, 'unseen': 0, 'bad': 1}
    assert len(router.scans.get(FQSN)) == len(kept) - 1               # re-armed
    logged = '\n'.join(r.getMessage() for r in caplog.records)
    assert 'dropping unreadable record of order dark-000' in logged
    assert 'cannot restore order dark-001' in logged
    journal.close()


# -- crash points ---------------------------------------------------------------------------------

POINTS = ('emsd.after_journal', 'emsd.before_ack_journal', 'venue.after_fill_journal')


def test_crash_points_lose_nothing_and_duplicate_nothing(reg_addr, config_dir, tmp_path, daemon):
    """Every daemon of the tree gets all three crash points; each is disarmed by its marker
    file (which exists) until the test deletes the marker right before the moment it means."""
    write_config(config_dir, SIM_FROZEN)
    state = config_dir / 'state'
    markers = {p: tmp_path / f'crash-{p}' for p in POINTS}
    for m in markers.values():
        m.write_text('disarmed')
    pikerd = daemon({'PIKER_EMS_CRASH_AT': ','.join(f'{p}@{m}' for p, m in markers.items())})

    def arm(point: str) -> None:
        markers[point].unlink()

    def fired(point: str) -> bool:
        return markers[point].exists()

    async def crash_emsd(point: str, send) -> str:
        """Arm ``point``, place an order with ``send(book)``: emsd dies, the client is told."""
        async with open_ems(FQSN, mode='live', account='live', name='bot') as (book, trades, _):
            [pid] = actor_pids('emsd', pikerd.pid)
            arm(point)
            oid = send(book)
            await expect_lost(trades)
        assert fired(point)
        await trio.to_thread.run_sync(wait_gone, [pid])
        return oid

    async def main():
        async with client(reg_addr):
            # 1. emsd journaled a new live order and died before sending it: sent once, later
            live1 = await crash_emsd('emsd.after_journal', lambda b: b.send('buy', 80.0, 1))
            # ... and a dark order journaled before its status left: it rests
            dark = await crash_emsd('emsd.after_journal', lambda b: b.send('buy', 90.0, 1, exec_mode='dark'))
            # 2. the venue acked a new order and emsd died before journaling the ack: bound by oid
            live2 = await crash_emsd('emsd.before_ack_journal', lambda b: b.send('buy', 79.0, 1))

            async with open_ems(FQSN, mode='live', account='live', name='bot') as (book, trades, _):
                snap = {s['oid']: s['resp'] for s in book.open_orders}
                assert snap.keys() == {live1, dark, live2} and snap[dark] == 'dark_submitted'
                seen = defaultdict(list)
                for s in book.open_orders:
                    seen[s['oid']].append(s['resp'])
                await statuses_until(trades, {live1: 'broker_submitted', live2: 'broker_submitted'}, seen)
                x = await exchange_stats()
                assert Counter(o['oid'] for o in x['open_orders']) == Counter([live1, live2])
                assert x['duplicates'] == 0
                assert [r['oid'] for r in x['requests'] if r['name'] == 'order'].count(live1) == 1
                no_oid_twice(state / 'sim-exchange.sqlite')
                stats = await bounded_rpc('emsd', 'piker_ems.clearing._ems', 'ems_stats')
                assert stats['dark'] == 1 and stats['phases'] == {'dark': 1, 'live': 2}

                # 3. the paper engine journaled a fill and died before reporting it
                paper = book.send('buy', 99.0, 2, account='paper')
                await statuses_until(trades, {paper: 'broker_submitted'}, seen)
                [boi] = actor_pids('paperboi.sim', pikerd.pid)
                arm('venue.after_fill_journal')
                await move_price(98.9)                       # crosses the paper buy only
                await statuses_until(trades, {paper: 'broker_executed'}, seen)
                assert fired('venue.after_fill_journal') and not is_alive(boi)
                assert 'broker_disconnected' in seen[paper]  # it was learned on reconnecting
                assert seen[paper].count('broker_filled') == 1
                assert venue_rows(state / 'paper.sim.sqlite', 'fills', paper) == 1
                no_oid_twice(state / 'paper.sim.sqlite')
                assert await positions_match_fills(state) == {('paper', SYM): 2}
                p = await paper_stats()
                assert p['duplicates'] == 0 and p['open_orders'] == []
            assert all(fired(p) for p in POINTS)

    trio.run(main)


def tear(db: Path, cut: int = 100) -> None:
    """Cut the end off the journal's order log, as ``kill -9`` in the middle of a write would."""
    log_file = db.with_name(db.name + '-log')
    with open(log_file, 'r+b') as f:
        f.truncate(log_file.stat().st_size - cut)


def complete_records(db: Path, tmp: Path) -> set[str]:
    """The oids a restart recovers from ``db``, its WAL and its order log (read on a copy)."""
    tmp.mkdir()
    for suffix in ('', '-wal', '-log'):
        shutil.copy(db.with_name(db.name + suffix), tmp / f'probe.sqlite{suffix}')
    return set(read_journal(tmp / 'probe.sqlite'))


def test_emsd_starts_on_a_damaged_journal(reg_addr, config_dir, tmp_path, daemon):
    write_config(config_dir, SIM_FROZEN)
    state = config_dir / 'state'
    state.mkdir()
    (state / 'emsd.sqlite').write_bytes(b'\x00garbage, not a database' * 400)
    # a second journal, torn as kill -9 mid-write leaves it, with one unreadable record
    torn = tmp_path / 'torn' / 'emsd.sqlite'
    oids = write_dark_orders(tmp_path / 'src' / 'emsd.sqlite', 20, wal_copy=torn, garble_first=True)
    tear(torn)
    complete = complete_records(torn, tmp_path / 'probe')
    assert 16 <= len(complete) < 20 and complete == set(oids[:len(complete)])
    pikerd = daemon()

    async def main():
        async with client(reg_addr):
            # 1. a file that is not a database: moved aside, emsd starts empty and works
            async with open_ems(FQSN, mode='dark', name='trader') as (book, trades, _):
                assert book.open_orders == []
                oid = book.send('buy', 60.0, 1)
                await statuses_until(trades, {oid: 'dark_submitted'})
                stats = await bounded_rpc('emsd', 'piker_ems.clearing._ems', 'ems_stats')
                assert stats['journal']['open'] == 1
            [aside] = state.glob('emsd.sqlite.corrupt-*')
            assert aside.read_bytes().startswith(b'\x00garbage')
            # 2. emsd dies; its journal is replaced by the torn one; the next client respawns it
            [pid] = actor_pids('emsd', pikerd.pid)
            await kill(pid)
            for suffix in ('', '-wal', '-shm', '-log'):
                state.joinpath('emsd.sqlite' + suffix).unlink(missing_ok=True)
            for suffix in ('', '-wal', '-log'):
                shutil.copy(torn.with_name(torn.name + suffix), state / f'emsd.sqlite{suffix}')
            snap = await snapshot_of('trader')
            assert snap == {o: 'dark_submitted' for o in complete - {'dark-000'}}
            stats = await bounded_rpc('emsd', 'piker_ems.clearing._ems', 'ems_stats')
            assert stats['dark'] == len(complete) - 1

    trio.run(main)
    log = (tmp_path / 'pikerd-0.log').read_text()
    assert 'is damaged' in log and 'moved aside' in log
    assert 'dropping unreadable record of order dark-000' in log


def test_a_torn_log_tail_is_logged(tmp_path, caplog):
    src, crash = tmp_path / 'live' / 'emsd.sqlite', tmp_path / 'crash' / 'emsd.sqlite'
    src.parent.mkdir()
    write_dark_orders(src, 5, wal_copy=crash)
    tear(crash)
    with caplog.at_level(logging.INFO):
        journal = Journal(crash)
        rows = journal.load()
        journal.close()
    assert [r.oid for r in rows] == [f'dark-{i:03d}' for i in range(4)]
    assert any('dropping an incomplete last write' in r.getMessage() for r in caplog.records)
