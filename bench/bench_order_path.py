"""Order -> ack round trip through the actor tree, against bare tractor relays in the same run.

Why: the order path is the latency every trader feels. This shows what piker_ems adds on top of
tractor's own message passing along the same actor hops.

Measured (sequential round trips: one order in flight at a time):

- **live (3 actors)**: ``open_ems('btcusd.sim', mode='paper', name='bench')``, ``book.send`` of a
  live buy far below the market (it rests at the paper engine), timed from the ``book.send``
  call to the ``broker_submitted`` Status for that oid arriving on ``trades``:
  client -> emsd -> paperboi.sim -> emsd -> client (paperboi answers ack + submitted). After
  each sample the order is cancelled and its ``broker_cancelled`` awaited (untimed for the
  order row, reported as its own "cancel" row), so no resting orders pile up.
- **dark (2 actors)**: ``book.send`` of a dark buy far below the market -> ``dark_submitted``
  (client -> emsd -> client), then cancel -> ``dark_cancelled``.
- **baselines**: bare ``@tractor.context`` relays with bidirectional streams and no work
  (``bench/_relay_actors.py``): client -> A -> B -> A -> client (B is a child actor of A, like
  paperboi of emsd) and client -> A -> client; the messages are real protocol dicts of the same
  shapes and sizes (Order / BrokerdOrder / BrokerdStatus / Status). B answers one message per
  request, where paperboi answers two (ack + status).

The client is the root actor (pikerd, started here on a free port with a temporary config dir)
in both cases; emsd/paperboi and A/B are its sub-actors. Samples are taken in interleaved
blocks (baseline, piker, baseline, ...) so machine noise hits both alike. The sim market runs
at 5 quotes/s, so quotes barely touch the numbers.

Run: ``uv run python bench/bench_order_path.py [N] [--quick] [--json]`` (default N=2000 per row,
after a warm-up; ``--quick``: 300)
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import asynccontextmanager

if __name__ == '__main__':  # children re-import this file: keep their import side-effect free
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

N = 2000
WARMUP = 200
BLOCK = 250
TIMEOUT = 10.0


async def _wait_for(trades, oid: str, want: str) -> None:
    """Skip to the Status ``want`` for ``oid``; anything contrary is a benchmark failure."""
    from piker_ems.clearing import Status

    while True:
        msg = await trades.receive()
        if isinstance(msg, Status) and msg.oid == oid:
            if msg.resp == want:
                return
            if msg.resp in ('error', 'broker_errored', 'broker_executed', 'broker_filled'):
                raise RuntimeError(f'{oid}: expected {want}, got {msg.resp} ({msg.reason})')


async def _piker_rtt(book, trades, price: float, exec_mode: str) -> tuple[int, int, int]:
    """One order round trip (ns), the sync ``book.send`` cost (ns), one cancel round trip (ns)."""
    import trio

    want_ack, want_cxl = (
        ('broker_submitted', 'broker_cancelled') if exec_mode == 'live'
        else ('dark_submitted', 'dark_cancelled')
    )
    clock = time.perf_counter_ns
    with trio.fail_after(TIMEOUT):
        t0 = clock()
        oid = book.send('buy', price, 1.0, exec_mode=exec_mode)
        t1 = clock()
        await _wait_for(trades, oid, want_ack)
        t2 = clock()
        book.cancel(oid)
        await _wait_for(trades, oid, want_cxl)
        t3 = clock()
    return t2 - t0, t1 - t0, t3 - t2


async def _bare_rtt(stream, msg: dict) -> int:
    clock = time.perf_counter_ns
    t0 = clock()
    await stream.send(msg)
    await stream.receive()
    return clock() - t0


@asynccontextmanager
async def round_trip_rig(tpl: dict):
    """pikerd on the registry address, the bare relays (3 hops and 1, with the real message
    shapes of ``tpl``) and an EMS session on FQSN (paper account): the set-up of this bench and of
    ``trace_hops.py``. Yields ``(bare3, bare1, feed, book, trades)``."""
    import tractor

    from _common import FQSN
    from bench import _relay_actors as relay
    from piker_ems.clearing import open_ems
    from piker_ems.data import open_feed
    from piker_ems.service import open_pikerd

    addr = tuple(os.environ['PIKER_EMS_REGISTRY'].split(':'))
    async with open_pikerd((addr[0], int(addr[1]))):
        async with tractor.open_nursery() as an:
            pa = await an.start_actor('bench_relay_a', enable_modules=['bench._relay_actors'])
            kw = dict(to_b=tpl['brokerd_order'], reply_b=tpl['brokerd_status'])
            async with (
                pa.open_context(relay.relay_a, to_client=tpl['status_live'], hops=3, **kw) as (c3, _),
                c3.open_stream() as s3,
                pa.open_context(relay.relay_a, to_client=tpl['status_dark'], hops=1, **kw) as (c1, _),
                c1.open_stream() as s1,
                open_feed(FQSN) as feed,
                open_ems(FQSN, mode='paper', name='bench') as (book, trades, _),
            ):
                yield s3, s1, feed, book, trades
            await an.cancel()


async def run(n: int) -> dict:
    import trio

    from _common import FQSN, wire_size, wire_templates

    tpl = wire_templates()
    res: dict = {k: [] for k in ('live', 'live_send', 'live_cancel', 'dark', 'dark_send',
                                 'dark_cancel', 'base3', 'base1')}
    res['sizes'] = {k: wire_size(v) for k, v in tpl.items()}
    t_start = time.perf_counter()
    async with round_trip_rig(tpl) as (s3, s1, feed, book, trades):
        last = feed.first_quotes[FQSN]['last']
        price = round(last * 0.7, 2)  # far below the market (inside the default 50% price band): rests, never fills
        res['setup_s'] = time.perf_counter() - t_start
        res['last'] = last

        async def piker_block(count: int, keep: bool) -> None:
            for kind in ('live', 'dark'):
                for _ in range(count):
                    rtt, snd, cxl = await _piker_rtt(book, trades, price, kind)
                    if keep:
                        res[kind].append(rtt)
                        res[f'{kind}_send'].append(snd)
                        res[f'{kind}_cancel'].append(cxl)

        async def bare_block(count: int, keep: bool) -> None:
            for _ in range(count):
                with trio.fail_after(TIMEOUT):
                    ns = await _bare_rtt(s3, tpl['order'])
                if keep:
                    res['base3'].append(ns)
            for _ in range(count):
                with trio.fail_after(TIMEOUT):
                    ns = await _bare_rtt(s1, tpl['order'])
                if keep:
                    res['base1'].append(ns)

        await bare_block(WARMUP, keep=False)
        await piker_block(WARMUP, keep=False)
        t_meas = time.perf_counter()
        done = 0
        while done < n:
            step = min(BLOCK, n - done)
            await bare_block(step, keep=True)
            await piker_block(step, keep=True)
            done += step
        res['measure_s'] = time.perf_counter() - t_meas
        # check that nothing was left resting at the paper engine
        from piker_ems.service import find_service
        from piker_ems.service._auth import call

        async with find_service('paperboi.sim') as pp:
            stats = await call(pp, 'piker_ems.clearing._paper', 'paper_stats')
        res['resting'] = stats['resting_orders']
    res['total_s'] = time.perf_counter() - t_start
    return res


def report(res: dict, n: int) -> None:
    from _common import pct

    us = lambda xs, q: pct(xs, q) / 1000.0  # noqa: E731
    rows = [
        ('live order -> broker_submitted', 'client>emsd>paperboi>emsd>client', 'live', 'base3'),
        ('dark order -> dark_submitted', 'client>emsd>client', 'dark', 'base1'),
    ]
    print(f'Python {sys.version.split()[0]}; sequential round trips, N={n} per row after '
          f'{WARMUP} warm-up; times in microseconds')
    hdr = (f"{'path':<32} | {'piker p50':>9} {'p99':>8} | {'bare p50':>8} {'p99':>8} |"
           f" {'ratio p50':>9} {'p99':>6} | {'hops':<34}")
    print(hdr)
    print('-' * len(hdr))
    for label, hops, pk, bk in rows:
        p50, p99 = us(res[pk], .5), us(res[pk], .99)
        b50, b99 = us(res[bk], .5), us(res[bk], .99)
        print(f'{label:<32} | {p50:>9.0f} {p99:>8.0f} | {b50:>8.0f} {b99:>8.0f} |'
              f' {p50 / b50:>8.2f}x {p99 / b99:>5.2f}x | {hops:<34}')
    print()
    print('piker_ems detail (not in the ratios):')
    for label, key in [
        ('live cancel -> broker_cancelled', 'live_cancel'),
        ('dark cancel -> dark_cancelled', 'dark_cancel'),
        ('book.send() sync call, live', 'live_send'),
        ('book.send() sync call, dark', 'dark_send'),
    ]:
        print(f'  {label:<34} p50 {us(res[key], .5):>7.1f}  p99 {us(res[key], .99):>7.1f}')
    s = res['sizes']
    print(f"wire sizes (msgpack bytes): Order {s['order']}, BrokerdOrder {s['brokerd_order']},"
          f" BrokerdStatus {s['brokerd_status']}, Status live {s['status_live']},"
          f" Status dark {s['status_dark']}")
    print(f"setup {res['setup_s']:.1f} s, measurement {res['measure_s']:.1f} s,"
          f" total {res['total_s']:.1f} s (sim last {res['last']}; orders left resting at"
          f" paperboi: {res['resting']})")


def summary(res: dict) -> dict:
    """The numbers run_all.py keeps (µs)."""
    from _common import pct

    us = lambda xs, q: round(pct(xs, q) / 1000.0, 1)  # noqa: E731
    out = {'bench': 'order_path', 'n': len(res['live'])}
    for key in ('live', 'dark', 'base3', 'base1', 'live_send', 'dark_send', 'live_cancel', 'dark_cancel'):
        out[f'{key}_p50_us'], out[f'{key}_p99_us'] = us(res[key], .5), us(res[key], .99)
    out['live_ratio_p50'] = round(out['live_p50_us'] / out['base3_p50_us'], 3)
    out['dark_ratio_p50'] = round(out['dark_p50_us'] / out['base1_p50_us'], 3)
    out['resting_left'] = res['resting']
    return out


def main() -> None:
    from _common import emit_json, has_flag, isolate, machine_line, positional, reap_check

    n = positional(300 if has_flag('quick') else N)
    _, cfg = isolate()
    import trio

    load_before = machine_line()
    try:
        res = trio.run(run, n)
    finally:  # never leave an actor behind, even on failure
        leaked = reap_check(cfg)
        if leaked:
            print(f'WARNING: killed leftover processes {leaked}')
    report(res, n)
    print(f'machine: before {load_before}; after {machine_line()}')
    if has_flag('json'):
        emit_json(summary(res))


if __name__ == '__main__':
    main()
