"""Group commit and out-of-band WAL checkpoints, in-process, against their own baselines in the
same run (no actors: stable on a loaded machine).

- **emsd**: the 4 venue events of one paper lifecycle (ack, ``submitted``, fill, ``filled``)
  applied with emsd's journal one commit per event (how single messages are handled) vs inside
  ``Router.group()`` (how a venue's list is handled: one commit).
- **paper engine**: new orders through ``DialogueEngine.handle_raw`` with a file journal:
  8 resting orders one by one vs as one list (``journal_group``, how a list from emsd is
  handled), and marketable orders (accept + fill); each with SQLite's automatic WAL checkpoints
  inside commits (``in-commit``, what a venue did before) vs a PASSIVE checkpoint from another
  connection (``out-of-band``: what ``statedb.checkpoint_in_background`` does in a worker thread,
  here every 20 iterations, outside the timing).

Prints µs per order, mean (what CPU and throughput see: it includes the checkpoints) and median.
Run: ``uv run python bench/bench_groups.py [--json] [--quick]``.
"""
from __future__ import annotations

import json
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / 'tests'))


def _stats(samples: list[float]) -> dict:
    tail = samples[len(samples) // 10:]  # warm-up dropped
    return {'mean_us': round(statistics.fmean(tail) / 1e3, 1), 'p50_us': round(statistics.median(tail) / 1e3, 1)}


def emsd_lifecycles(grouped: bool, n: int) -> dict:
    from _router_fakes import FakeClock, FakeConn, FakeScans, FakeVenues
    from piker_ems.clearing._journal import Journal
    from piker_ems.clearing._messages import BrokerdFill, BrokerdOrderAck, BrokerdStatus, Order, to_wire
    from piker_ems.clearing._router import Router

    journal = Journal(Path(tempfile.mkdtemp(prefix='piker_ems_groups_')) / 'emsd.sqlite')
    journal.db.execute('PRAGMA wal_autocheckpoint=0')  # emsd checkpoints in a thread
    clock = FakeClock()
    router = Router(FakeVenues(), FakeScans(100.0), clock=clock, journal=journal)
    conn = FakeConn('bench', 'btcusd.sim', 'sim', 'live')
    conn.push = lambda msg: None
    router.add_client(conn)
    link = router.venues.link(('sim', 'live'))
    out = []
    for i in range(n):
        oid = f'o{i}'
        router.handle_client_msg(conn, to_wire(Order(action='buy', oid=oid, symbol='btcusd.sim', price=99.0,
                                                     size=1.0, exec_mode='live', account='live')))
        events = [to_wire(m) for m in (
            BrokerdOrderAck(oid=oid, reqid=i), BrokerdStatus(reqid=i, status='submitted'),
            BrokerdFill(reqid=i, oid=oid, fill_id=f'f{i}', action='buy', size=1, price=99.0, time_ns=clock()),
            BrokerdStatus(reqid=i, status='filled', filled=1, remaining=0))]
        t0 = time.perf_counter_ns()
        with router.group() if grouped else nullcontext():
            for msg in events:
                router.on_venue_msg(link, msg)
        out.append(time.perf_counter_ns() - t0)
        if i % 20 == 0:
            journal.db.execute('PRAGMA wal_checkpoint(PASSIVE)')
    journal.close()
    return _stats(out)


def _order(action: str, price: float) -> dict:
    return {'name': 'order', 'action': action, 'oid': uuid.uuid4().hex, 'account': 'paper',
            'reqid': None, 'symbol': 'btcusd', 'price': price, 'size': 1.0}


def paper_orders(kind: str, out_of_band: bool, n: int) -> dict:
    from piker_ems.clearing._paper import PaperEngine
    from piker_ems.simvenue._journal import Journal

    path = Path(tempfile.mkdtemp(prefix='piker_ems_groups_')) / 'paper.sqlite'
    engine = PaperEngine('sim', journal=Journal.open(path, 'paper'), fee_bps=0.0)
    engine.feeds['btcusd'] = 'live'  # stand-in for the feed task
    side = None
    if out_of_band:
        engine.core.journal.conn.execute('PRAGMA wal_autocheckpoint=0')
        side = sqlite3.connect(str(path), isolation_level=None)
    engine.on_quote('btcusd', {'bid': 100.0, 'ask': 100.5})
    dialogue = engine.open_dialogue('bench')
    out = []
    for i in range(n):
        if kind == 'marketable':
            reqs = [_order('buy', 101.0) if i % 2 else _order('sell', 99.0)]
        else:
            reqs = [_order('buy', 50.0 + i * 0.01 + k * 0.001) for k in range(8)]
        t0 = time.perf_counter_ns()
        with engine.journal_group() if kind == 'list' else nullcontext():
            for msg in reqs:
                engine.handle_raw(dialogue, msg)
        out.append((time.perf_counter_ns() - t0) / len(reqs))
        while True:  # what the sender task would take
            try:
                dialogue.outbox.receive_nowait()
            except Exception:
                break
        if side is not None and i % 20 == 0:
            side.execute('PRAGMA wal_checkpoint(PASSIVE)').fetchall()
    if side is not None:
        side.close()
    engine.core.journal.close()
    return _stats(out)


def main() -> None:
    import logging
    logging.disable(logging.WARNING)
    quick = '--quick' in sys.argv
    n_emsd, n_mkt, n_rest = (600, 600, 80) if quick else (2000, 2000, 300)
    res = {'bench': 'groups'}
    res['emsd_per_event'] = emsd_lifecycles(False, n_emsd)
    res['emsd_grouped'] = emsd_lifecycles(True, n_emsd)
    for ckpt, oob in (('in-commit', False), ('out-of-band', True)):
        for kind, n in (('single', n_rest), ('list', n_rest), ('marketable', n_mkt)):
            res[f'paper_{kind}_{ckpt}'] = paper_orders(kind, oob, n)
    print('µs per paper lifecycle / order: mean (incl. checkpoints) / p50')
    print(f"emsd, 4 venue events + journal: per event {res['emsd_per_event']['mean_us']}/"
          f"{res['emsd_per_event']['p50_us']}, one group {res['emsd_grouped']['mean_us']}/{res['emsd_grouped']['p50_us']}")
    for kind in ('single', 'list', 'marketable'):
        a, b = res[f'paper_{kind}_in-commit'], res[f'paper_{kind}_out-of-band']
        print(f"paper, {kind:10s}: checkpoints in-commit {a['mean_us']}/{a['p50_us']}, "
              f"out-of-band {b['mean_us']}/{b['p50_us']}")
    if '--json' in sys.argv:
        print(json.dumps(res))


if __name__ == '__main__':
    main()
