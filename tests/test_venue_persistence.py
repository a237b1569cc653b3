"""Simulated venues outlive their process (issue 9, item 2 and the venue side of item 3).

The journal (piker_ems.simvenue._journal) in-process first: restore, idempotency by oid,
``since_ns`` snapshots, damage handling, write failures. Then real processes killed with
SIGKILL: paperboi and brokerd.sim's exchange come back with the same resting orders (which
still fill), positions equal to the sum of their journaled fills, and no reused ids.
"""
from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest
from _dialogue_helpers import drain
import tractor
import trio

from piker_ems.service._auth import call, endpoint_name, make_auth
from piker_ems.brokers.sim._exchange import SimExchange
from piker_ems.brokers.sim._venue import SimVenue
from piker_ems.clearing._messages import VenueSnapshot
from piker_ems.clearing._paper import PaperEngine
from piker_ems.simvenue._clock import FakeClock
from piker_ems.simvenue._dialogue import DialogueEngine
from piker_ems.simvenue._journal import Journal, JournalError, SCHEMA_VERSION
from piker_ems.simvenue._positions import Position
from piker_ems.brokers import sim
from piker_ems.clearing import _paper
from piker_ems.data import open_feed
from piker_ems.service import find_service, maybe_open_pikerd, maybe_spawn_brokerd
from piker_ems.service._daemon import DEATHSIG_MODULE
from piker_ems.service._ipc import abandon_context

from _dialogue_helpers import SIM_FROZEN, cancel, kinds, order, recv
from _proc import wait_gone
from conftest import write_config




def exchange(path: Path, clock=None, fee_bps: float = 0.0) -> SimExchange:
    kw = {'clock': clock} if clock is not None else {}
    return SimExchange(SimVenue(), 0.0, 0.0, journal=Journal.open(path, 'sim'), fee_bps=fee_bps, **kw)


def paper(path: Path, fee_bps: float = 0.0) -> PaperEngine:
    e = PaperEngine('sim', journal=Journal.open(path, 'paper'), fee_bps=fee_bps)
    e.feeds['btcusd'] = 'live'   # stand-in for the feed task (no actor here)
    return e


def sum_of_fills(db: Path) -> dict[tuple[str, str], Position]:
    """Positions recomputed from the journaled fills alone."""
    out: dict[tuple[str, str], Position] = {}
    with sqlite3.connect(db) as conn:
        for account, symbol, action, size, price, fee in conn.execute(
            'SELECT account, symbol, action, size, price, fee FROM fills ORDER BY seq'
        ):
            pos = out.get((account, symbol)) or Position(account, symbol)
            out[(account, symbol)] = pos.after(action, size, price, fee)
    return {k: p for k, p in out.items() if p.size != 0}


def journaled_positions(db: Path) -> dict[tuple[str, str], Position]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute('SELECT account, symbol, size, avg_price, realized_pnl, fees FROM positions')
        return {(r[0], r[1]): Position(*r) for r in rows if r[2] != 0}


def same_positions(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        pytest.approx((p.size, p.avg_price, p.realized_pnl, p.fees)) == (b[k].size, b[k].avg_price,
                                                                          b[k].realized_pnl, b[k].fees)
        for k, p in a.items())


# -- in-process: the journal ----------------------------------------------------------------

def test_restart_restores_book_positions_counters_and_fees(tmp_path):
    db = tmp_path / 'x.sqlite'
    x = exchange(db, fee_bps=10)
    d = x.open_dialogue('a')
    start = x.venue.market('btcusd').bid
    ask = x.venue.market('btcusd').ask
    buy = order('buy', start + 50, size=2)
    x.handle_raw(d, buy)                                 # fills at the ask
    ack, sub, fill, filled, pos = drain(d)
    assert kinds([ack, sub, fill, filled, pos]) == ['ack', 'status:submitted', 'fill', 'status:filled', 'position']
    assert (fill['fill_id'], fill['oid'], fill['fee']) == ('sim-1', buy['oid'], pytest.approx(ask * 2 * 10 / 1e4))
    assert (pos['fees'], pos['realized_pnl']) == (fill['fee'], 0)
    rest_buy, rest_sell = order('buy', start - 5), order('sell', start + 5, size=3)
    x.handle_raw(d, rest_buy)
    x.handle_raw(d, rest_sell)
    acks = [m for m in drain(d) if m['name'] == 'ack']
    assert [a['reqid'] for a in acks] == [2, 3]
    x.handle_raw(d, order('buy', start - 3, size=1, reqid=2, oid=rest_buy['oid']))   # modify
    x.handle_raw(d, order('sell', start + 1, size=1))  # ... and one order cancelled
    ack4 = [m for m in drain(d) if m['name'] == 'ack'][0]
    x.handle_raw(d, cancel(ack4['oid'], 4))
    assert kinds(drain(d)) == ['status:cancelled']
    x.core.journal.close()

    y = exchange(db, fee_bps=10)
    assert [(o.reqid, o.oid, o.price, o.size) for o in y.core.book.orders()] == [
        (3, rest_sell['oid'], start + 5, 3), (2, rest_buy['oid'], start - 3, 1)]
    assert [(p.size, p.avg_price, p.fees) for p in y.core.positions.all()] == [(2, ask, fill['fee'])]
    assert y.core.closed(4) == 'cancelled' and y.core.closed(1) == 'filled'
    d2 = y.open_dialogue('b')
    y.handle_raw(d2, order('sell', start - 20, size=1))   # marketable: new ids continue
    ack, _, fill2, _, pos2 = drain(d2)
    assert (ack['reqid'], fill2['fill_id']) == (5, 'sim-2')
    assert pos2['realized_pnl'] == pytest.approx(start - ask) and pos2['size'] == 1
    y.handle_raw(d2, cancel('x', 4))
    assert drain(d2)[0]['reason'] == 'order already cancelled'
    assert same_positions(sum_of_fills(db), journaled_positions(db))


def test_paper_restart_restores_and_never_reuses_ids(tmp_path):
    db = tmp_path / 'paper.sqlite'
    p = paper(db)
    p.on_quote('btcusd', {'bid': 100.0, 'ask': 100.5})
    d = p.open_dialogue('a')
    p.handle_raw(d, order('buy', 101.0, size=2))
    p.handle_raw(d, order('sell', 102.0))
    msgs = drain(d)
    fill_ids = {m['fill_id'] for m in msgs if m['name'] == 'fill'}
    resting = [o.reqid for o in p.core.book.orders()]
    p.core.journal.close()

    q = paper(db)
    assert [o.reqid for o in q.core.book.orders()] == resting
    q.on_quote('btcusd', {'bid': 102.5, 'ask': 103.0})      # the restored sell fills
    d = q.open_dialogue('b')
    q.on_quote('btcusd', {'bid': 103.0, 'ask': 103.5})
    q.handle_raw(d, order('buy', 104.0))
    new_ids = {m['fill_id'] for m in drain(d) if m['name'] == 'fill'}
    assert fill_ids == {'paper.sim-1'} and len(new_ids) == 1 and not (new_ids & fill_ids)
    assert q.core.last_fill == 3 and q.core.positions.get('paper', 'btcusd').size == 2
    assert same_positions(sum_of_fills(db), journaled_positions(db))


def test_a_duplicate_new_order_is_not_a_second_order(tmp_path):
    db = tmp_path / 'x.sqlite'
    x = exchange(db)
    d = x.open_dialogue('a')
    start = x.venue.market('btcusd').bid
    msg = order('buy', start - 5)
    x.handle_raw(d, msg)
    ack, _ = drain(d)
    x.handle_raw(d, msg)                                        # emsd re-sends after its crash
    assert drain(d) == [{**ack}]
    assert len(x.core.book) == 1 and x.stats()['duplicates'] == 1
    x.core.journal.close()
    y = exchange(db)                                          # also across a restart
    d = y.open_dialogue('b')
    y.handle_raw(d, msg)
    assert drain(d) == [ack] and len(y.core.book) == 1
    y.venue.market('btcusd').set_price(start - 10)            # it fills once
    assert kinds(drain(d)) == ['fill', 'status:filled', 'position']
    y.handle_raw(d, msg)                                        # still the same order after it filled
    assert drain(d) == [ack] and len(y.core.book) == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute('SELECT COUNT(*) FROM orders').fetchone() == (1,)
        assert conn.execute('SELECT COUNT(*) FROM fills').fetchone() == (1,)


def test_snapshot_since_ns_has_exactly_the_fills_and_ended_orders_after_it(tmp_path):
    clock = FakeClock(start_ns=1_000)
    x = exchange(tmp_path / 'x.sqlite', clock=clock)
    d = x.open_dialogue('a')
    start = x.venue.market('btcusd').bid
    ask = x.venue.market('btcusd').ask

    x.handle_raw(d, order('buy', ask + 1))                    # t=1000: filled (reqid 1)
    x.handle_raw(d, order('sell', start + 9))                 # resting (reqid 2), stays open
    x.handle_raw(d, order('sell', start + 8))                 # reqid 3, cancelled at t=2000
    clock.set(2_000)
    x.handle_raw(d, cancel('c', 3))
    clock.set(3_000)
    x.handle_raw(d, order('buy', ask + 1))                    # t=3000: filled (reqid 4)
    drain(d)

    def snap(since):
        s = VenueSnapshot.model_validate(x.core.snapshot(since))
        return ({o.reqid: o.status for o in s.orders}, [(f.reqid, f.fill_id, f.time_ns) for f in s.fills])

    assert snap(None) == ({2: 'open'}, [])
    assert snap(0) == ({1: 'filled', 2: 'open', 3: 'cancelled', 4: 'filled'},
                       [(1, 'sim-1', 1000), (4, 'sim-2', 3000)])
    assert snap(2_000) == ({2: 'open', 3: 'cancelled', 4: 'filled'}, [(4, 'sim-2', 3000)])
    assert snap(2_001) == ({2: 'open', 4: 'filled'}, [(4, 'sim-2', 3000)])
    assert snap(3_001) == ({2: 'open'}, [])
    full = x.core.snapshot(0)
    assert full['orders'][0]['oid'] and full['fills'][0]['oid'] and full['since_ns'] == 0
    assert [p['size'] for p in full['positions']] == [2]


def test_a_file_that_is_not_a_database_is_moved_aside(tmp_path, caplog):
    db = tmp_path / 'state' / 'sim-exchange.sqlite'
    db.parent.mkdir()
    db.write_bytes(b'this is not a database at all' * 200)
    with caplog.at_level(logging.ERROR):
        x = exchange(db)
    assert x.core.journal.moved_aside is not None
    aside = list(db.parent.glob('sim-exchange.sqlite.corrupt-*'))
    assert aside == [x.core.journal.moved_aside] and aside[0].read_bytes().startswith(b'this is not')
    assert any('moved aside' in r.getMessage() for r in caplog.records)
    assert len(x.core.book) == 0 and x.core.positions.all() == []
    # ids after the damage start from the clock, so none issued before it can come again
    d = x.open_dialogue('a')
    x.handle_raw(d, order('buy', x.venue.market('btcusd').ask + 1))
    ack, _, fill, *_ = drain(d)
    assert ack['reqid'] > 1_000_000_000_000 and int(fill['fill_id'].split('-')[1]) > 1_000_000_000_000


def test_a_torn_wal_tail_keeps_every_complete_transaction(tmp_path):
    """kill -9 mid-write: copy the database and its WAL while the writer is open (nothing
    checkpointed), tear the WAL's last frame: every complete transaction before it survives."""
    db = tmp_path / 'live.sqlite'
    x = exchange(db)
    x.core.journal.conn.execute('PRAGMA wal_autocheckpoint=0')
    d = x.open_dialogue('a')
    ask = x.venue.market('btcusd').ask
    for _ in range(20):
        x.handle_raw(d, order('buy', ask + 1))
    drain(d)
    crash = tmp_path / 'crash'
    crash.mkdir()
    shutil.copy(db, crash / 'x.sqlite')
    shutil.copy(db.with_name(db.name + '-wal'), crash / 'x.sqlite-wal')
    wal = crash / 'x.sqlite-wal'
    with open(wal, 'r+b') as f:
        f.truncate(wal.stat().st_size - 100)     # the last frame is torn
    y = exchange(crash / 'x.sqlite')
    assert y.core.journal.moved_aside is None
    kept = y.core.positions.get('paper', 'btcusd').size
    assert 15 <= kept < 20                       # only the torn (last) transaction is lost
    assert y.core.last_fill == kept
    assert same_positions(sum_of_fills(crash / 'x.sqlite'), journaled_positions(crash / 'x.sqlite'))


def test_a_failed_journal_write_answers_an_error_and_changes_nothing(tmp_path):
    class Broken(Journal):
        fail = False

        def fill(self, **kw):
            if self.fail:
                raise sqlite3.OperationalError('disk I/O error')
            return super().fill(**kw)

        def accept(self, order):
            if self.fail:
                raise sqlite3.OperationalError('disk I/O error')
            return super().accept(order)

    j = Broken.memory('sim')
    ids = itertools.count(1)
    e = DialogueEngine('sim', lambda: next(ids), journal=j)
    e.on_quote('btcusd', {'bid': 100.0, 'ask': 100.5})
    d = e.open_dialogue('a')
    e.handle_raw(d, order('sell', 101.0))
    ack, _ = drain(d)
    j.fail = True
    e.handle_raw(d, order('buy', 99.0))
    (err,) = drain(d)
    assert err['name'] == 'error' and 'could not record the order' in err['reason']
    e.on_quote('btcusd', {'bid': 101.5, 'ask': 102.0})        # crosses the resting sell
    (err,) = drain(d)
    assert (err['name'], err['reqid']) == ('error', ack['reqid']) and 'could not record the fill' in err['reason']
    assert e.core.positions.all(include_flat=True) == [] and len(e.core.book) == 0


def test_one_request_list_is_one_commit_and_nothing_is_queued_before_it(tmp_path):
    """Group commit: a list of requests (emsd's backlog, handled in one group as ``serve``
    does), a marketable one's fill included, is journaled with one commit, and its events reach
    the dialogue only after it."""
    db = tmp_path / 'p.sqlite'
    e = paper(db)
    e.on_quote('btcusd', {'bid': 100.0, 'ask': 100.5})
    d = e.open_dialogue('a')
    j = e.core.journal
    reader = sqlite3.connect(db)
    seen_inside = []
    commits = j.commits
    with e.journal_group():
        e.handle_raw(d, order('buy', 101.0))             # marketable: accept + fill
        e.handle_raw(d, order('sell', 102.0))            # rests
        seen_inside.append(reader.execute('SELECT count(*) FROM orders').fetchone()[0])
        seen_inside.append(len(drain(d)))
    assert seen_inside == [0, 0]                         # not on disk yet, nothing queued
    assert j.commits == commits + 1
    assert reader.execute('SELECT count(*) FROM orders').fetchone()[0] == 2
    assert kinds(drain(d)) == ['ack', 'status:submitted', 'fill', 'status:filled', 'position',
                               'ack', 'status:submitted']
    reader.close()


def test_a_failed_group_commit_tells_nothing_and_reloads_from_the_journal(tmp_path):
    """If the group's commit fails nothing of it reached the dialogue: the engine reloads what
    is on disk (the earlier order, no position) and answers each order of the group with an
    error."""
    e = paper(tmp_path / 'p.sqlite')
    e.on_quote('btcusd', {'bid': 100.0, 'ask': 100.5})
    d = e.open_dialogue('a')
    e.handle_raw(d, order('sell', 102.0))
    first_ack, _ = drain(d)
    j = e.core.journal

    class FailingCommit:  # the connection as seen by the journal: COMMIT fails (disk full)
        def __init__(self, conn):
            self.conn = conn

        def execute(self, sql, *args):
            if sql == 'COMMIT':
                raise sqlite3.OperationalError('database or disk is full')
            return self.conn.execute(sql, *args)

    real = j.conn
    j.conn = FailingCommit(real)
    buy = order('buy', 101.0)
    with e.journal_group():                             # as a list of requests is handled
        e.handle_raw(d, buy)                            # marketable: accept + fill
    j.conn = real
    out = drain(d)
    assert kinds(out) == ['error'] and out[0]['oid'] == buy['oid']
    assert [o.oid for o in e.core.book.orders()] == [first_ack['oid']]   # what is on disk
    assert e.core.positions.all(include_flat=True) == [] and e.failures == 1


def test_a_newer_schema_is_refused_not_overwritten(tmp_path):
    db = tmp_path / 'x.sqlite'
    Journal.open(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(JournalError, match='newer'):
        Journal.open(db)
    assert not list(tmp_path.glob('*.corrupt-*'))


# -- real processes: kill -9 and restart ----------------------------------------------------

PAPER_MODULES = [DEATHSIG_MODULE, 'piker_ems.clearing._paper']


async def _set_price(symbol: str, price: float) -> None:
    async with find_service('brokerd.sim') as portal:
        await call(portal, 'piker_ems.brokers.sim', 'set_price', symbol=symbol, price=price)


async def _kill(ctx, pid: int) -> None:
    """SIGKILL the venue's process and give up its context without waiting on it."""
    os.kill(pid, signal.SIGKILL)
    await trio.to_thread.run_sync(wait_gone, [pid])
    await abandon_context(ctx)


@pytest.mark.trio
async def test_paperboi_killed_restores_orders_positions_and_ids(reg_addr, config_dir):
    write_config(config_dir, SIM_FROZEN + '\n[paper]\nfee_bps = 5\n')
    db = config_dir / 'state' / 'paper.sim.sqlite'
    with trio.fail_after(60):
        async with maybe_open_pikerd(reg_addr):
            async with tractor.open_nursery() as an:
                # first life: an open position and two resting orders, then kill -9
                portal = await an.start_actor('paperboi.sim', enable_modules=PAPER_MODULES)
                try:
                    async with portal.open_context(_paper.trades_dialogue, broker='sim', auth=make_auth(endpoint_name(_paper.trades_dialogue))) as (ctx, snap):
                        assert snap['positions'] == snap['orders'] == []
                        async with ctx.open_stream() as stream:
                            await stream.send(order('buy', 101.0, size=2))
                            *_, fill, _, pos = await recv(stream, 5)
                            assert (fill['fill_id'], fill['fee']) == ('paper.sim-1', pytest.approx(100.01 * 2 * 5e-4))
                            rest = [order('buy', 99.0), order('sell', 101.0, size=3)]
                            acks = []
                            for msg in rest:
                                await stream.send(msg)
                                ack, _ = await recv(stream, 2)
                                acks.append(ack)
                            st = await call(portal, 'piker_ems.clearing._paper', 'paper_stats')
                            assert st['journal_path'] == str(db)
                            await _kill(ctx, st['pid'])
                except* (trio.BrokenResourceError, trio.ClosedResourceError, tractor.ContextCancelled,
                         trio.EndOfChannel):
                    pass

                # second life: the same broker and config dir
                portal = await an.start_actor('paperboi.sim', enable_modules=PAPER_MODULES)
                try:
                    async with portal.open_context(_paper.trades_dialogue, broker='sim', since_ns=0, auth=make_auth(endpoint_name(_paper.trades_dialogue))) as (ctx, snap):
                        snap = VenueSnapshot.model_validate(snap)
                        assert {o.reqid: (o.oid, o.status) for o in snap.orders} == {
                            acks[0]['reqid']: (rest[0]['oid'], 'open'),
                            acks[1]['reqid']: (rest[1]['oid'], 'open'),
                            fill['reqid']: (fill['oid'], 'filled'),
                        }
                        assert [f.fill_id for f in snap.fills] == ['paper.sim-1']
                        (p,) = snap.positions
                        assert (p.size, p.avg_price, p.fees) == (2, 100.01, pytest.approx(fill['fee']))
                        async with ctx.open_stream() as stream:
                            st = await call(portal, 'piker_ems.clearing._paper', 'paper_stats')
                            assert (st['restored_orders'], st['resting_orders']) == (2, 2)
                            # the restored sell still fills on a crossing quote
                            with trio.fail_after(10):
                                while st['feeds'].get('btcusd') != 'live':
                                    await trio.sleep(0.01)
                                    st = await call(portal, 'piker_ems.clearing._paper', 'paper_stats')
                            await _set_price('btcusd', 101.5)
                            fill2, filled, pos = await recv(stream, 3)
                            assert (fill2['reqid'], fill2['price'], fill2['fill_id']) == (
                                acks[1]['reqid'], 101.0, 'paper.sim-2')
                            assert (pos['size'], pos['realized_pnl']) == (-1, pytest.approx(2 * (101.0 - 100.01)))
                            # the duplicate of a restored order is not a second order
                            await stream.send(rest[0])
                            (dup,) = await recv(stream, 1)
                            assert (dup['name'], dup['reqid']) == ('ack', acks[0]['reqid'])
                            await stream.send(order('buy', 200.0))   # new ids are new
                            ack, _, fill3, *_ = await recv(stream, 5)
                            assert ack['reqid'] not in {a['reqid'] for a in acks} and fill3['fill_id'] == 'paper.sim-3'
                        await ctx.cancel()
                finally:
                    await portal.cancel_actor()
    assert same_positions(sum_of_fills(db), journaled_positions(db))
    assert journaled_positions(db) == {}      # 2 - 3 + 1: flat again


@pytest.mark.trio
async def test_brokerd_sim_killed_its_exchange_comes_back(reg_addr, config_dir):
    write_config(config_dir, SIM_FROZEN)
    db = config_dir / 'state' / 'sim-exchange.sqlite'
    with trio.fail_after(60):
        async with maybe_open_pikerd(reg_addr):
            async with maybe_spawn_brokerd('sim') as portal:
                async with open_feed('btcusd.sim'):
                    try:
                        async with portal.open_context(sim.trades_dialogue, auth=make_auth(endpoint_name(sim.trades_dialogue))) as (ctx, snap):
                            async with ctx.open_stream() as stream:
                                await stream.send(order('sell', 99.0, size=2))     # short 2 @ 100.00
                                *_, fill, _, pos = await recv(stream, 5)
                                assert (fill['fill_id'], pos['size']) == ('sim-1', -2)
                                rest = order('buy', 99.5)
                                await stream.send(rest)
                                ack, _ = await recv(stream, 2)
                                assert ack['reqid'] == 2
                                st = await call(portal, 'piker_ems.brokers.sim', 'exchange_stats')
                                first_pid = st['pid']
                                await _kill(ctx, first_pid)
                    except* (trio.BrokenResourceError, trio.ClosedResourceError, tractor.ContextCancelled,
                             trio.EndOfChannel):
                        pass

            # pikerd spawns a fresh brokerd.sim: the venue is still there
            async with maybe_spawn_brokerd('sim') as portal:
                st = await call(portal, 'piker_ems.brokers.sim', 'exchange_stats')
                assert st['pid'] != first_pid and st['resting_orders'] == 1
                async with open_feed('btcusd.sim'):
                    async with portal.open_context(sim.trades_dialogue, auth=make_auth(endpoint_name(sim.trades_dialogue))) as (ctx, snap):
                        snap = VenueSnapshot.model_validate(snap)
                        assert [(o.reqid, o.oid, o.status) for o in snap.orders] == [(2, rest['oid'], 'open')]
                        assert [(p.size, p.avg_price) for p in snap.positions] == [(-2, 100.0)]
                        assert snap.fills == []           # no since_ns: no fills
                        async with ctx.open_stream() as stream:
                            await stream.send(rest)        # re-sent: the same order
                            (dup,) = await recv(stream, 1)
                            assert (dup['name'], dup['reqid']) == ('ack', 2)
                            await call(portal, 'piker_ems.brokers.sim', 'set_price', symbol='btcusd', price=99.0)
                            fill, filled, pos = await recv(stream, 3)
                            assert (fill['reqid'], fill['price'], fill['fill_id']) == (2, 99.5, 'sim-2')
                            assert (pos['size'], pos['realized_pnl']) == (-1, pytest.approx(0.5))
                            await stream.send(order('buy', 200.0))
                            ack, *_ = await recv(stream, 5)
                            assert ack['reqid'] == 3      # never a reused reqid
                        await ctx.cancel()
    assert same_positions(sum_of_fills(db), journaled_positions(db))
