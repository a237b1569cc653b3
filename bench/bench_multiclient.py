"""Many clients on one emsd: status fan-out to watchers, and the reconnect snapshot.

Why: SPEC §9 lets any client watch other clients' flows and gives a (re)connecting client its
open orders at once. This measures both against same-run baselines.

(a) **Fan-out.** 10 ``open_ems`` connections in 3 client actors (sub-actors of this process,
    which is pikerd): ``bench_client_0`` holds the owner (name ``placer``, dark mode), and
    ``bench_client_1`` / ``bench_client_2`` hold 5 and 4 watchers (``watch='symbol'``, one
    connection each). The owner places dark orders far from the market and cancels them; every
    ``dark_submitted`` / ``dark_cancelled`` goes to the owner and to all 9 watchers. Measured:
    deliveries per second to the watchers (total across the 9), and per-status latency from the
    owner's ``book.send`` / ``book.cancel`` call to a watcher receiving the Status (wall clock,
    ``time.time_ns`` in both processes), in two modes:

    - ``burst``: 2000 orders back to back, then 2000 cancels (throughput; latency here is mostly
      queueing behind the burst);
    - ``paced``: order, 2 ms, cancel, 2 ms, ... (300 pairs: latency of a lightly loaded emsd).

    Baseline: the same actor layout and message shapes against a bare tractor hub
    (``bench/_relay_actors.py:hub_session``) that answers the owner and copies each answer to
    every watcher, with no validation or state.

    Watchers live in separate client actors (not in this process) so the owner's sends and
    the watchers' decoding don't share one event loop, as with real separate clients. The
    ``client gc`` column counts gen-2 collections in the client actors during a phase and the
    longest GC pause there: one such pause shows up directly as the phase's latency p99/max.

(b) **Reconnect snapshot.** In ``bench_client_0``, a client named ``owner`` places 1000 dark
    orders far from the market and disconnects (default ``keep`` policy: they stay). Then, 10
    times (after one warm-up): time ``open_ems(..., name='owner')`` from the call until it
    yields with ``len(book.open_orders) == 1000``, against ``open_ems`` for a client with 0 open
    orders (``nobody``) in the same loop. Target: <= 100 ms for 1000 orders.

Run: ``uv run python bench/bench_multiclient.py [--quick] [--json] [--reconnect]``
(``--reconnect``: only (b), with 30 reps: for comparing reconnect costs).
"""
from __future__ import annotations

import os
import sys
import time

if __name__ == '__main__':  # children re-import this file: keep their import side-effect free
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BURST = 2000
PACED = 300
PACED_INTERVAL = 0.002
SNAPSHOT_ORDERS = 1000
SNAPSHOT_REPS = 10
RECONNECT_ONLY = False
TARGET_MS = 100.0
WATCHERS = (['w1', 'w2', 'w3', 'w4', 'w5'], ['w6', 'w7', 'w8', 'w9'])
OWNER = 'placer'


async def _phase(owner, watchers: list, n: int, interval: float) -> dict:
    """Run one burst through an owner stream; collect the watchers' receive logs, the IPC
    messages the watchers received and the CPU seconds each actor spent meanwhile."""
    from bench_load import _tree_cpu

    timeout = 60.0
    cpu0 = _tree_cpu()
    await owner.send({'n': n, 'interval': interval, 'timeout': timeout})
    for w in watchers:
        await w.send({'expect': 2 * n, 'timeout': timeout})
    own = await owner.receive()
    rows: list[list] = []
    gcs = [own['gc']]
    ipc = 0
    for w in watchers:
        got = await w.receive()
        rows.extend(got['rows'])
        gcs.append(got['gc'])
        ipc += got['ipc']
    cpu1 = _tree_cpu()
    cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
    return {'own': own, 'rows': rows, 'n': n, 'interval': interval, 'gc': gcs, 'ipc': ipc, 'cpu': cpu}


def _summarize(ph: dict) -> dict:
    from _common import pct

    sends = ph['own']['sends']
    lats, deliveries, foreign, t_last = [], 0, 0, 0
    per_watcher = []
    for rows in ph['rows']:
        per_watcher.append(len(rows))
        for oid, resp, t in rows:
            ts = sends.get(oid)
            if ts is None:
                foreign += 1
                continue
            deliveries += 1
            t_last = max(t_last, t)
            lats.append(t - (ts[1] if resp == 'dark_cancelled' else ts[0]))
    window = (t_last - ph['own']['t0']) / 1e9
    return {
        'expected': 2 * ph['n'] * len(ph['rows']),
        'deliveries': deliveries,
        'foreign': foreign,
        'min_per_watcher': min(per_watcher),
        'window_s': window,
        'rate': deliveries / window if window > 0 else 0.0,
        'p50_ms': pct(lats, .5) / 1e6,
        'p99_ms': pct(lats, .99) / 1e6,
        'max_ms': max(lats) / 1e6,
        'gc_max_ms': max(g['max_ms'] for g in ph['gc']),
        'gc2': sum(g['n2'] for g in ph['gc']),
        'send_s': (ph['own']['t_sent'] - ph['own']['t0']) / 1e9,
        'owner_done_s': (ph['own']['t_own_done'] - ph['own']['t0']) / 1e9,
        'ipc': ph['ipc'],
        'cpu': ph['cpu'],
    }


async def run() -> dict:
    from contextlib import AsyncExitStack

    import tractor

    from _common import FQSN, wire_templates
    from bench import _bench_clients as cl
    from piker_ems.clearing import open_ems
    from piker_ems.data import open_feed
    from piker_ems.service import open_pikerd

    tpl = wire_templates(owner=OWNER)
    order = {**tpl['order'], 'exec_mode': 'dark'}
    cancel = {'action': 'cancel', 'oid': '', 'symbol': FQSN}
    res: dict = {'a': {}, 'b': None}
    addr = os.environ['PIKER_EMS_REGISTRY'].split(':')
    t_start = time.perf_counter()
    async with open_pikerd((addr[0], int(addr[1]))):
        async with open_feed(FQSN) as feed:
            last = feed.first_quotes[FQSN]['last']
        price = round(last * 0.7, 2)  # rests (inside the default 50% price band)
        # bring emsd (and its scan, venue) up before the clients race for it
        async with open_ems(FQSN, mode='dark', name='warmup'):
            pass
        async with tractor.open_nursery() as an:
            await an.start_actor('bench_hub', enable_modules=['bench._relay_actors'])
            clients = [
                await an.start_actor(f'bench_client_{i}', enable_modules=['bench._bench_clients'])
                for i in range(3)
            ]
            res['setup_s'] = time.perf_counter() - t_start

            async with AsyncExitStack() as stack:
                async def session(portal, fn, **kw):
                    ctx, _ = await stack.enter_async_context(portal.open_context(fn, **kw))
                    return await stack.enter_async_context(ctx.open_stream())

                flavours = {
                    'piker_ems': (
                        [await session(clients[1 + i], cl.ems_watchers, fqsn=FQSN, names=names, owner=OWNER)
                         for i, names in enumerate(WATCHERS)],
                        await session(clients[0], cl.ems_owner, fqsn=FQSN, name=OWNER, price=price),
                    ),
                    'bare': (
                        [await session(clients[1 + i], cl.bare_watchers, count=len(names))
                         for i, names in enumerate(WATCHERS)],
                        await session(clients[0], cl.bare_owner, order=order, cancel=cancel,
                                      reply=tpl['status_dark']),
                    ),
                }
                # warm-up, then the measured phases (alternating flavours)
                for name, (ws, owner) in (() if RECONNECT_ONLY else flavours.items()):
                    await _phase(owner, ws, 200, 0.0)
                t_a = time.perf_counter()
                for mode, n, interval in (() if RECONNECT_ONLY else
                                          (('burst', BURST, 0.0), ('paced', PACED, PACED_INTERVAL))):
                    for name, (ws, owner) in flavours.items():
                        res['a'][(mode, name)] = _summarize(await _phase(owner, ws, n, interval))
                res['a_s'] = time.perf_counter() - t_a

            t_b = time.perf_counter()
            async with clients[0].open_context(
                cl.ems_reconnect, fqsn=FQSN, n_orders=SNAPSHOT_ORDERS, reps=SNAPSHOT_REPS,
                price=price,
            ) as (ctx, _):
                res['b'] = await ctx.result()
            res['b_s'] = time.perf_counter() - t_b
            await an.cancel()
    res['total_s'] = time.perf_counter() - t_start
    return res


def _header(hdr: str) -> None:
    print(hdr)
    print('-' * len(hdr))


def _emsd_us_per_status(r: dict, flav: str) -> float:
    """CPU µs of emsd (bare: the hub) per status it delivered (9 watchers + the owner)."""
    cpu = r['cpu'].get('emsd' if flav == 'piker_ems' else 'bench_hub', 0.0)
    return 1e6 * cpu / (r['expected'] * 10 // 9)


def report(res: dict) -> None:
    from _common import pct

    print(f'Python {sys.version.split()[0]}')
    print('(a) status fan-out: 1 owner (bench_client_0) + 9 watchers (5 in bench_client_1, 4 in'
          ' bench_client_2), one connection each; dark order + cancel statuses')
    hdr = (f"{'phase':<22} {'flavour':<10} | {'delivered':>15} | {'window s':>8} | {'deliv/s':>8} |"
           f" {'lat p50 ms':>10} {'p99 ms':>8} {'max ms':>8} | {'owner sent s':>12} {'owner done s':>12}"
           f" | {'client gc':>12}")
    _header(hdr)
    for mode, label in (('burst', f'burst {BURST}+{BURST}'),
                        ('paced', f'paced {PACED}+{PACED} @{PACED_INTERVAL * 1e3:g}ms')):
        if not res['a']:  # --reconnect
            break
        for flav in ('piker_ems', 'bare'):
            r = res['a'][(mode, flav)]
            print(f"{label:<22} {flav:<10} | {r['deliveries']:>7}/{r['expected']:<7} |"
                  f" {r['window_s']:>8.2f} | {r['rate']:>8.0f} | {r['p50_ms']:>10.2f} {r['p99_ms']:>8.2f}"
                  f" {r['max_ms']:>8.2f} | {r['send_s']:>12.2f} {r['owner_done_s']:>12.2f}"
                  f" | {r['gc2']:>2}x {r['gc_max_ms']:>6.1f}ms")
            if r['foreign']:
                print(f'    ({r["foreign"]} statuses for unknown oids)')
        p, b = res['a'][(mode, 'piker_ems')], res['a'][(mode, 'bare')]
        print(f"{'':<22} {'ratio':<10} | {'':>15} | {'':>8} | {p['rate'] / b['rate']:>7.2f}x |"
              f" {p['p50_ms'] / b['p50_ms']:>9.2f}x {p['p99_ms'] / b['p99_ms']:>7.2f}x |")
    print('(ratio = piker_ems / bare; deliveries/s = watcher deliveries / (last watcher receive -'
          ' owner first send);\n client gc = gen-2 collections in the 3 client actors during the'
          ' phase and the longest GC pause of any generation there)')
    if res['a']:
        print()
        print('where the CPU went: seconds of CPU per actor during each phase (emsd column: emsd, or'
              ' bench_hub for bare), and the IPC messages the 9 watchers received (a batch is one)')
        _header(f"{'phase':<22} {'flavour':<10} | {'watcher IPC msgs':>16} {'statuses/msg':>12} |"
                f" {'emsd/hub':>8} {'paperboi':>8} {'owner':>6} {'5 watch':>7} {'4 watch':>7}"
                f" {'root':>6} | {'emsd us/status':>14}")
        for (mode, flav), r in res['a'].items():
            c = r['cpu']
            hub = c.get('emsd', 0.0) if flav == 'piker_ems' else c.get('bench_hub', 0.0)
            print(f"{mode:<22} {flav:<10} | {r['ipc']:>16} {r['deliveries'] / max(r['ipc'], 1):>12.2f} |"
                  f" {hub:>8.2f} {c.get('paperboi.sim', 0.0) if flav == 'piker_ems' else 0.0:>8.2f}"
                  f" {c.get('bench_client_0', 0.0):>6.2f} {c.get('bench_client_1', 0.0):>7.2f}"
                  f" {c.get('bench_client_2', 0.0):>7.2f} {c.get('root', 0.0):>6.2f} |"
                  f" {_emsd_us_per_status(r, flav):>14.1f}")
        print('(emsd us/status: the emsd (hub) CPU of the phase per status it delivered, owner included)')
    print()
    b = res['b']
    ms = lambda xs, q: pct(xs, q) / 1e6  # noqa: E731
    print(f'(b) reconnect snapshot: open_ems() call -> yielded with the start-up snapshot,'
          f' {SNAPSHOT_REPS} reps after 1 warm-up')
    _header(f"{'client':<36} | {'p50 ms':>7} {'p99 ms':>7} | {'close p50 ms':>12}")
    print(f"{'nobody, 0 open orders (baseline)':<36} | {ms(b['base'], .5):>7.1f} {ms(b['base'], .99):>7.1f} |"
          f" {ms(b['base_close'], .5):>12.1f}")
    print(f"{f'owner, {SNAPSHOT_ORDERS} open dark orders':<36} | {ms(b['owner'], .5):>7.1f}"
          f" {ms(b['owner'], .99):>7.1f} | {ms(b['owner_close'], .5):>12.1f}")
    ratio = ms(b['owner'], .5) / ms(b['base'], .5)
    extra = ms(b['owner'], .5) - ms(b['base'], .5)
    verdict = lambda v: 'met' if v <= TARGET_MS else 'NOT met'  # noqa: E731
    print(f'ratio p50 {ratio:.2f}x; snapshot cost over baseline p50 {extra:.1f} ms;'
          f' target <= {TARGET_MS:g} ms for {SNAPSHOT_ORDERS} orders:'
          f" p50 {verdict(ms(b['owner'], .5))}, p99 {verdict(ms(b['owner'], .99))}")
    print(f"setup {res['setup_s']:.1f} s, (a) {res['a_s']:.1f} s, (b) {res['b_s']:.1f} s,"
          f" total {res['total_s']:.1f} s")


def summary(res: dict) -> dict:
    """The numbers run_all.py keeps."""
    from _common import pct

    out: dict = {'bench': 'multiclient', 'burst': BURST, 'paced': PACED}
    for mode in ('burst', 'paced'):
        if (mode, 'piker_ems') not in res['a']:  # --reconnect: (b) only
            continue
        p, b = res['a'][(mode, 'piker_ems')], res['a'][(mode, 'bare')]
        out[mode] = {
            'rate': round(p['rate']), 'bare_rate': round(b['rate']),
            'rate_ratio': round(p['rate'] / b['rate'], 3),
            'p50_ms': round(p['p50_ms'], 2), 'p99_ms': round(p['p99_ms'], 2),
            'bare_p50_ms': round(b['p50_ms'], 2), 'bare_p99_ms': round(b['p99_ms'], 2),
            'p50_ratio': round(p['p50_ms'] / b['p50_ms'], 3),
            'delivered': p['deliveries'], 'expected': p['expected'],
            'watcher_ipc_msgs': p['ipc'], 'bare_watcher_ipc_msgs': b['ipc'],
            'emsd_cpu_us_per_status': round(_emsd_us_per_status(p, 'piker_ems'), 1),
            'hub_cpu_us_per_status': round(_emsd_us_per_status(b, 'bare'), 1),
        }
    b = res['b']
    ms = lambda xs, q: round(pct(xs, q) / 1e6, 1)  # noqa: E731
    out['snapshot'] = {
        'orders': SNAPSHOT_ORDERS, 'reps': SNAPSHOT_REPS,
        'owner_p50_ms': ms(b['owner'], .5), 'owner_p99_ms': ms(b['owner'], .99),
        'base_p50_ms': ms(b['base'], .5), 'base_p99_ms': ms(b['base'], .99),
        'extra_p50_ms': round(ms(b['owner'], .5) - ms(b['base'], .5), 1),
        'extra_p99_ms': round(ms(b['owner'], .99) - ms(b['base'], .99), 1),
    }
    return out


def main() -> None:
    from _common import emit_json, has_flag, isolate, machine_line, reap_check

    if has_flag('quick'):  # fewer orders (the shapes of the phases stay the same)
        globals().update(BURST=500, PACED=100, SNAPSHOT_REPS=5)
    if has_flag('reconnect'):  # only the reconnect measure, more reps
        globals().update(RECONNECT_ONLY=True, SNAPSHOT_REPS=30)
    _, cfg = isolate()
    import trio

    load_before = machine_line()
    try:
        res = trio.run(run)
    finally:  # never leave an actor behind, even on failure
        leaked = reap_check(cfg)
        if leaked:
            print(f'WARNING: killed leftover processes {leaked}')
    report(res)
    print(f'machine: before {load_before}; after {machine_line()}')
    if has_flag('json'):
        emit_json(summary(res))


if __name__ == '__main__':
    main()
