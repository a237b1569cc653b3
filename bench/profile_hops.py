"""Where the time of one order goes, hop by hop, measured in-process (no actors, no IPC).

Why: under a loaded machine the actor benches are noisy; the CPU work each process does for one
order is not. Each hop below is the exact code a process runs for one message, timed with
``time.perf_counter_ns`` over many repetitions (median per call), plus a cProfile table of its
top functions:

- ``client.send``: ``OrderBook.send`` (checks the order, makes its wire dict; the caller's time);
- ``client.send+orders``: the same plus the ``Order`` object, made when ``book.orders`` is read;
- ``tractor.fmt``: what tractor 0.1.0a5 formats per message whatever the log level (``send``:
  the sent dict, ``received``: the raw bytes, ``Delivering``: the decoded dict);
- ``msgpack``: encode + decode of the message (tractor's codec);
- ``emsd.submit_live`` / ``emsd.submit_dark``: ``Router.handle_client_msg`` of a new order with
  in-process fake venues/scans (parse, machine, statuses, wire dicts, routing), with and without
  the journal;
- ``emsd.venue_ack`` / ``emsd.venue_status``: ``Router.on_venue_msg`` of the paper engine's ack
  and ``submitted`` status;
- ``client.read``: ``parse_ems_msg`` of a live ``Status`` (what the client's reader does);
- ``emsd.snapshot_1000``: ``Router.open_orders`` for an owner with 1000 open orders, and the
  formatting tractor does on it; ``client.parse_snapshot_1000``: validating its 1000 statuses
  (what the client did before yielding until round 3), ``client.open_snapshot_1000``: what it does
  now (unpack, queue; validated when read).

Run: ``uv run python bench/profile_hops.py [--json] [--profile]`` (``--profile`` adds the
cProfile tables).
"""
from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / 'tests'))

REPS = 2000


def timeit(fn, reps: int = REPS) -> float:
    """Median µs per call of ``fn()`` (each call timed on its own)."""
    samples = []
    clock = time.perf_counter_ns
    for _ in range(reps):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    samples.sort()
    return samples[len(samples) // 2] / 1000.0


def profile_table(fn, reps: int = 500, top: int = 8) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(reps):
        fn()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).sort_stats('tottime')
    stats.print_stats(top)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith('ncalls'))
    return '\n'.join(lines[start:start + top + 1])


def build() -> dict:
    """The callables of every hop, on shared fakes."""
    import msgspec
    import trio

    from _router_fakes import Rig
    from piker_ems.clearing import _client
    from piker_ems.clearing._journal import Journal
    from piker_ems.clearing._messages import (
        BrokerdOrderAck, BrokerdStatus, Order, parse_ems_msg, to_wire,
    )

    enc, dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
    hops: dict = {}

    tx, rx = trio.open_memory_channel(float('inf'))
    book = _client.OrderBook(fqsn='btcusd.sim', account='paper', exec_mode='live', name='bench', _tx=tx)

    def client_send():  # the caller's synchronous cost
        book.send('buy', 50.0, 1.0)
        rx.receive_nowait()
        book._orders.clear()
        book._pending.clear()
    hops['client.send'] = client_send

    def client_send_orders():  # plus the Order object, made when book.orders is read
        book.send('buy', 50.0, 1.0)
        rx.receive_nowait()
        book.orders.clear()
    hops['client.send+orders'] = client_send_orders

    rig = Rig(last=100.0)
    conn = rig.client('bench')
    conn.push = lambda msg: None  # delivery cost is the queue push only
    ack_tpl = {}

    def new_order(exec_mode: str) -> dict:
        return to_wire(Order(action='buy', oid=os.urandom(16).hex(), symbol='btcusd.sim', price=50.0,
                             size=1.0, exec_mode=exec_mode, account='paper' if exec_mode != 'live' else 'live'))

    live_msgs = [new_order('live') for _ in range(REPS * 2 + 1000)]
    dark_msgs = [new_order('dark') for _ in range(REPS * 2 + 1000)]
    it_live, it_dark = iter(live_msgs), iter(dark_msgs)
    hops['emsd.submit_live'] = lambda: rig.router.handle_client_msg(conn, next(it_live))
    hops['emsd.submit_dark'] = lambda: rig.router.handle_client_msg(conn, next(it_dark))

    jdir = Path(tempfile.mkdtemp(prefix='piker_ems_prof_'))
    jrig = Rig(last=100.0)
    jrig.router.journal = Journal(jdir / 'emsd.sqlite')
    jconn = jrig.client('bench')
    jconn.push = lambda msg: None
    jit = iter([new_order('live') for _ in range(REPS * 2 + 1000)])
    hops['emsd.submit_live+journal'] = lambda: jrig.router.handle_client_msg(jconn, next(jit))

    # venue events for orders already submitted
    link = rig.venue(('sim', 'live'))
    acks = []
    for i in range(REPS * 2 + 1000):
        msg = new_order('live')
        rig.router.handle_client_msg(conn, msg)
        acks.append((to_wire(BrokerdOrderAck(oid=msg['oid'], reqid=f'r{i}', account='live')),
                     to_wire(BrokerdStatus(reqid=f'r{i}', status='submitted', account='live',
                                           remaining=1.0, broker_details={'name': 'paperboi'}))))
    ia, ist = iter(acks), iter(acks)
    hops['emsd.venue_ack'] = lambda: rig.router.on_venue_msg(link, next(ia)[0])
    hops['emsd.venue_status'] = lambda: rig.router.on_venue_msg(link, next(ist)[1])

    from _common import wire_templates
    tpl = wire_templates()
    status = tpl['status_live']
    hops['client.read'] = lambda: parse_ems_msg(status)
    blob = enc.encode(status)
    hops['msgpack.status'] = lambda: dec.decode(enc.encode(status))
    hops['tractor.fmt.status'] = lambda: (f'send `{status}`', f'received {blob}',
                                          f'Delivering {status} from x')
    order = tpl['order']
    oblob = enc.encode(order)
    hops['tractor.fmt.order'] = lambda: (f'send `{order}`', f'received {oblob}', f'Delivering {order} from x')

    # the reconnect snapshot: 1000 dark orders of one owner
    srig = Rig(last=100.0)
    sconn = srig.client('owner')
    sconn.push = lambda msg: None
    for _ in range(1000):
        srig.router.handle_client_msg(sconn, to_wire(Order(
            action='buy', oid=os.urandom(16).hex(), symbol='btcusd.sim', price=50.0, size=1.0,
            exec_mode='dark')))
    snap = srig.router.open_orders(fqsn='btcusd.sim', broker='sim', owner='owner')
    assert len(snap) == 1000, len(snap)
    hops['emsd.snapshot_1000'] = lambda: srig.router.open_orders(fqsn='btcusd.sim', broker='sim', owner='owner')
    started = {'positions': [], 'orders': snap}
    sblob = enc.encode(started)
    hops['tractor.fmt.snapshot_1000'] = lambda: (f'send `{started}`', f'received {sblob}',
                                                 f'Delivering {started} from x')
    hops['client.parse_snapshot_1000'] = lambda: [parse_ems_msg(s) for s in snap]
    from piker_ems.clearing import _messages as msgs
    sblob_packed = msgs.pack_snapshot(snap)
    if hasattr(_client, 'queue_snapshot'):  # what open_ems does before it yields (round 3)
        def client_open_snapshot():
            qtx, qrx = trio.open_memory_channel(float('inf'))
            qbook = _client.OrderBook(fqsn='btcusd.sim', account='paper', exec_mode='dark',
                                      name='owner', _tx=qtx, open_orders=msgs.unpack_snapshot(sblob_packed))
            _client.queue_snapshot(qbook, qtx)
        hops['client.open_snapshot_1000'] = client_open_snapshot
    from piker_ems.clearing import _messages as msgs
    if hasattr(msgs, 'pack_snapshot'):
        packed = {'positions': [], 'orders_packed': msgs.pack_snapshot(snap)}
        pblob = enc.encode(packed)
        hops['tractor.fmt.snapshot_1000_packed'] = lambda: (
            f'send `{packed}`', f'received {pblob}', f'Delivering {packed} from x')
    return hops


def main() -> None:
    import logging
    import warnings

    warnings.filterwarnings('ignore')
    logging.disable(logging.WARNING)
    as_json = '--json' in sys.argv
    with_profile = '--profile' in sys.argv
    hops = build()
    results = {}
    tables = {}
    for name, fn in hops.items():
        reps = 50 if '1000' in name else REPS
        for _ in range(min(reps, 50)):
            fn()  # warm-up
        results[name] = round(timeit(fn, reps), 2)
        if with_profile:
            tables[name] = profile_table(fn, reps=20 if '1000' in name else 300)
    if not as_json:
        print(f"{'hop':<36} {'median µs/call':>14}")
        for name, us in results.items():
            print(f'{name:<36} {us:>14.2f}')
        for name, table in tables.items():
            print(f'\n### {name}\n{table}')
    else:
        print(json.dumps({'bench': 'profile_hops', 'us_per_call': results}))


if __name__ == '__main__':
    main()
