"""Quote arrival -> triggered ``BrokerdOrder`` ready to leave emsd (the dark path's own latency).

Why: a dark order is only as good as the time from the quote that crosses it to the venue
command leaving emsd. This runs emsd's own code for that path in one trio process: the real
:class:`~piker_ems.clearing._scan.DarkScan` (its ``on_quote``), the real Router (trigger,
state machine, statuses to the owner) with the real journal (write-ahead, as emsd runs by
default), and a venue link whose writer task turns the command into its wire dict, as emsd's
venue writer does right before ``stream.send``. Timed: ``on_quote`` called -> wire dict made
in the writer task (so the task switch through the link's queue is included; the IPC send
itself is not: that is tractor's, measured by the actor benches).

``RESTING`` other dark orders rest far from the market throughout (the book's scan cost does
not grow with them, see ``bench_darkbook.py``). Baseline in the same run: the same quote handed
through the same kind of queue to a writer task that makes a same-sized dict (no book, no
machine, no journal): what trio alone costs for the hop.

Run: ``uv run python bench/bench_trigger.py [N] [--quick] [--json] [--no-journal]``
"""
from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / 'tests'))
sys.path.insert(0, str(HERE))

N = 2000
RESTING = 1000


class _Scans:
    """Real DarkScans with a known symbol and last price (no feed)."""

    def __init__(self, last: float) -> None:
        self.last = last
        self.scans: dict = {}
        self.sink = None

    def bind(self, sink) -> None:
        self.sink = sink

    def get(self, fqsn: str):
        from piker_ems.clearing._scan import DarkScan
        from piker_ems.symbols import Symbol

        scan = self.scans.get(fqsn)
        if scan is None:
            scan = self.scans[fqsn] = DarkScan(fqsn)
            sym, broker = fqsn.rsplit('.', 1)
            scan.symbol = Symbol(key=sym, broker=broker, tick_size=0.01, lot_size=0.001)
            scan.last = self.last
            scan.ready.set()
            scan.sink = self.sink
        return scan

    def peek(self, fqsn: str):
        return self.scans.get(fqsn)

    def close(self, fqsn: str) -> None:
        pass

    def all(self) -> list:
        return list(self.scans.values())


async def run(n: int) -> dict:
    import trio

    from _router_fakes import FakeConn, FakeVenues
    from piker_ems.clearing._journal import Journal
    from piker_ems.clearing._messages import Order, to_wire
    from piker_ems.clearing._router import Router

    tx, rx = trio.open_memory_channel(math.inf)
    venues = FakeVenues()
    venues.observer = lambda link, cmd: tx.send_nowait(cmd)
    scans = _Scans(last=100.0)
    jdir = Path(tempfile.mkdtemp(prefix='piker_ems_trigger_'))
    journal = None if '--no-journal' in sys.argv else Journal(jdir / 'emsd.sqlite')
    router = Router(venues, scans, clock=time.time_ns, journal=journal)
    conn = FakeConn('bench', 'btcusd.sim', 'sim', 'paper')
    conn.push = lambda msg: None  # the owner's queue push only (no parsing on our side)
    router.add_client(conn)
    for i in range(RESTING):
        router.handle_client_msg(conn, to_wire(Order(
            action='buy', oid=f'rest{i}', symbol='btcusd.sim', price=50.0 - i * 0.01, size=1.0,
            exec_mode='dark')))
    scan = scans.get('btcusd.sim')
    piker: list[int] = []
    bare: list[int] = []
    done = trio.Event()
    tpl = to_wire(Order(action='buy', oid='x' * 32, symbol='btcusd.sim', price=1.0, size=1.0))

    async def writer() -> None:
        nonlocal done
        async for cmd in rx:
            if isinstance(cmd, dict):   # the baseline: a same-sized dict copy
                wire = dict(cmd)
            else:
                wire = to_wire(cmd)     # what emsd's venue writer sends
            assert wire
            done.set()

    clock = time.perf_counter_ns
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        if journal is not None:  # as emsd does: WAL checkpoints in a worker thread
            from piker_ems.clearing._ems import _checkpoints
            nursery.start_soon(_checkpoints, journal)
        for i in range(n + 200):
            oid = f'd{i}'
            router.handle_client_msg(conn, to_wire(Order(
                action='buy', oid=oid, symbol='btcusd.sim', price=90.0, size=1.0, exec_mode='dark')))
            quote = {'ticks': [{'type': 'ask', 'price': 89.99, 'size': 1.0}], 'last': 100.0}
            done = trio.Event()
            t0 = clock()
            scan.on_quote(quote)
            await done.wait()
            t1 = clock()
            done = trio.Event()
            t2 = clock()
            tx.send_nowait(tpl)
            await done.wait()
            t3 = clock()
            if i >= 200:
                piker.append(t1 - t0)
                bare.append(t3 - t2)
            st = router.orders[oid]
            assert st.machine.live, st.machine.state
        nursery.cancel_scope.cancel()
    assert len(scan) == RESTING
    return {'piker': piker, 'bare': bare}


def main() -> None:
    import warnings

    import trio

    from _common import pct

    warnings.filterwarnings('ignore')
    as_json = '--json' in sys.argv
    args = [a for a in sys.argv[1:] if not a.startswith('--')]
    n = int(args[0]) if args else (500 if '--quick' in sys.argv else N)
    res = trio.run(run, n)
    us = lambda xs, q: pct(xs, q) / 1000.0  # noqa: E731
    out = {
        'bench': 'trigger', 'n': n, 'resting': RESTING,
        'p50_us': round(us(res['piker'], .5), 1), 'p99_us': round(us(res['piker'], .99), 1),
        'bare_p50_us': round(us(res['bare'], .5), 1), 'bare_p99_us': round(us(res['bare'], .99), 1),
    }
    if as_json:
        print(json.dumps(out))
        return
    print(f'quote -> triggered BrokerdOrder wire dict in emsd ({n} triggers, {RESTING} other '
          f'dark orders resting, journal on): p50 {out["p50_us"]:.1f} us  p99 {out["p99_us"]:.1f} us')
    print(f'bare trio queue hop (same run):                           p50 {out["bare_p50_us"]:.1f} us'
          f'  p99 {out["bare_p99_us"]:.1f} us   (target: p99 <= 1000 us)')


if __name__ == '__main__':
    main()
