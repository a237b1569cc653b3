"""What emsd's order journal costs, and how fast a restart recovers.

(a) **Journal cost on the order path.** The same sequential round trips as
``bench_order_path.py`` (a live buy far below the market -> ``broker_submitted`` through
client -> emsd -> paperboi -> emsd -> client, and a dark buy -> ``dark_submitted``; each then
cancelled), under three configurations measured in the same run, in interleaved blocks (emsd is
restarted with the next configuration between blocks, so machine noise hits all alike):

- ``off``: ``[emsd] persist = false`` and ``[paper] persist = false`` (the baseline);
- ``emsd``: ``[emsd] persist = true`` (emsd writes the order's row before each status and venue
  command leaves: 1 write per dark order, 2 per live order: pending_new, then working);
- ``emsd+paper``: also the paper engine's journal (the defaults).

``journal_sync`` is the default ``normal`` (a commit is one WAL append, no fsync).

(b) **Recovery time.** 10 000 open dark orders are journaled (through a Router with in-process
fakes), then ``Journal(path)`` + ``load()`` + ``Router.restore()`` (re-arming every order in
its dark book) is timed, best and worst of 5. Then a real pikerd is started on that journal and
the time from ``open_ems`` (which spawns emsd, restores, opens the feed and the venue) to the
client holding its start-up snapshot of 10 000 orders is measured once.

Run: ``uv run python bench/bench_journal.py [N] [--quick] [--json]`` (default N=1000 round trips per row and
configuration, after a warm-up)
"""
from __future__ import annotations

import os
import sys
import time

if __name__ == '__main__':  # children re-import this file: keep their import side-effect free
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

N = 1000
WARMUP = 100
BLOCKS = 4
RECOVER_N = 10_000
CONFIGS = {
    'off': '[emsd]\npersist = false\n[paper]\npersist = false\n',
    'emsd': '[emsd]\npersist = true\n[paper]\npersist = false\n',
    'emsd+paper': '[emsd]\npersist = true\n[paper]\npersist = true\n',
}


def write_config(cfg, sim_config: str, extra: str) -> None:
    (cfg / 'piker_ems.toml').write_text(sim_config + extra)


async def order_path(n: int, cfg) -> dict:
    import tractor  # noqa: F401
    import trio

    from _common import FQSN, SIM_CONFIG
    from bench_order_path import _piker_rtt
    from piker_ems.clearing import open_ems
    from piker_ems.data import open_feed
    from piker_ems.service import open_pikerd

    from bench_load import _child_pid, _cpu_s

    res = {name: {'live': [], 'dark': [], 'live_cpu_s': 0.0, 'live_n': 0} for name in CONFIGS}
    addr = tuple(os.environ['PIKER_EMS_REGISTRY'].split(':'))
    async with open_pikerd((addr[0], int(addr[1]))) as services:
        async with open_feed(FQSN) as feed:
            price = round(feed.first_quotes[FQSN]['last'] * 0.7, 2)  # rests, never fills (inside the default 50% price band)

            async def block(name: str, count: int, keep: bool) -> None:
                write_config(cfg, SIM_CONFIG, CONFIGS[name])
                if 'emsd' in services.list():
                    await services.cancel_service('emsd')   # the next client respawns it
                async with open_ems(FQSN, mode='paper', name='bench') as (book, trades, _):
                    for mode in ('live', 'dark'):
                        # CPU of emsd + paperboi over the live rows: robust to a loaded machine
                        pids = [p for p in (_child_pid('emsd'), _child_pid('paperboi.sim')) if p]
                        cpu0 = sum(_cpu_s(p) for p in pids)
                        for _ in range(count):
                            rtt, _, _ = await _piker_rtt(book, trades, price, mode)
                            if keep:
                                res[name][mode].append(rtt)
                        if keep and mode == 'live' and len(pids) == 2:
                            res[name]['live_cpu_s'] += sum(_cpu_s(p) for p in pids) - cpu0
                            res[name]['live_n'] += count
                    from piker_ems.service import find_service
                    async with find_service('emsd') as portal:
                        from piker_ems.service._auth import call
                        stats = await call(portal, 'piker_ems.clearing._ems', 'ems_stats')
                    res[name]['journal'] = stats.get('journal')

            for name in CONFIGS:
                await block(name, WARMUP, keep=False)
            per = max(1, n // BLOCKS)
            for _ in range(BLOCKS):
                for name in CONFIGS:
                    await block(name, per, keep=True)
    return res


def journal_dark_orders(path, n: int) -> None:
    """``n`` open dark orders of owner ``bench`` in emsd's journal at ``path``."""
    from piker_ems.clearing._journal import Journal
    from piker_ems.clearing._messages import Order
    from piker_ems.clearing._orders import ClientConn
    from piker_ems.clearing._router import Router
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests'))
    from _router_fakes import FakeScans, FakeVenues

    from _common import FQSN

    journal = Journal(path)
    router = Router(FakeVenues(), FakeScans(100.0), clock=time.time_ns, journal=journal)
    conn = ClientConn('bench', FQSN, 'sim', 'paper')
    router.add_client(conn)
    journal.db.execute('BEGIN')   # one transaction for the set-up only (speed)
    for i in range(n):
        router.handle_client_msg(conn, Order(
            action='buy' if i % 2 else 'sell', oid=f'{i:032x}', symbol=FQSN,
            price=(1.0 + (i % 500) * 0.01) if i % 2 else (1e6 + (i % 500) * 0.01), size=1.0,
            exec_mode='dark', account='paper').model_dump(mode='json'))
    journal.db.execute('COMMIT')
    journal.close()


def recover_in_process(path, repeat: int = 5) -> list[float]:
    from piker_ems.clearing._journal import Journal
    from piker_ems.clearing._router import Router
    from _router_fakes import FakeScans, FakeVenues

    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        journal = Journal(path)
        router = Router(FakeVenues(), FakeScans(100.0), clock=time.time_ns, journal=journal)
        counts = router.restore(journal.load())
        out.append(time.perf_counter() - t0)
        assert counts['dark'] == RECOVER_N, counts
        journal.close()
    return out


async def recover_emsd() -> tuple[float, int]:
    import trio

    from _common import FQSN
    from piker_ems.clearing import open_ems
    from piker_ems.service import open_pikerd

    addr = tuple(os.environ['PIKER_EMS_REGISTRY'].split(':'))
    async with open_pikerd((addr[0], int(addr[1]))):
        with trio.fail_after(60):
            t0 = time.perf_counter()
            async with open_ems(FQSN, mode='dark', name='bench') as (book, _, _):
                took = time.perf_counter() - t0
                return took, len(book.open_orders)


def main() -> None:
    from _common import SIM_CONFIG, emit_json, has_flag, isolate, machine_line, pct, positional, reap_check

    quick = has_flag('quick')
    n = positional(150 if quick else N)
    if quick:
        globals().update(RECOVER_N=2000, WARMUP=50, BLOCKS=2)
    _, cfg = isolate()
    import logging

    import trio

    logging.getLogger('piker_ems').setLevel(logging.WARNING)
    load_before = machine_line()
    try:
        res = trio.run(order_path, n, cfg)
    finally:
        leaked = reap_check(None)
        if leaked:
            print(f'WARNING: killed leftover processes {leaked}')

    us = lambda xs, q: pct(xs, q) / 1000.0  # noqa: E731
    print(f'Python {sys.version.split()[0]}; sequential round trips, N={len(res["off"]["live"])} per row'
          f' and configuration ({BLOCKS} interleaved blocks, after {WARMUP} warm-up); microseconds')
    hdr = f"{'path':<32} | {'config':<10} | {'p50':>6} {'p99':>7} | {'vs off p50':>10} {'p99':>6}"
    print(hdr)
    print('-' * len(hdr))
    for mode, label in (('live', 'live order -> broker_submitted'), ('dark', 'dark order -> dark_submitted')):
        b50, b99 = us(res['off'][mode], .5), us(res['off'][mode], .99)
        for name in CONFIGS:
            p50, p99 = us(res[name][mode], .5), us(res[name][mode], .99)
            print(f'{label:<32} | {name:<10} | {p50:>6.0f} {p99:>7.0f} | {p50 / b50:>9.2f}x {p99 / b99:>5.2f}x')
    print(f"emsd journal after the last 'emsd+paper' block: {res['emsd+paper'].get('journal')}")
    summary = {'bench': 'journal', 'n': len(res['off']['live'])}
    for mode in ('live', 'dark'):
        b50 = us(res['off'][mode], .5)
        summary[mode] = {name: {'p50_us': round(us(res[name][mode], .5), 1),
                                'p99_us': round(us(res[name][mode], .99), 1),
                                'vs_off_p50': round(us(res[name][mode], .5) / b50, 3)} for name in CONFIGS}
    # what the journal costs the live order path: (with - without) / with, at p50
    live = summary['live']
    summary['journal_share_of_live_p50'] = {
        name: round(1 - live['off']['p50_us'] / live[name]['p50_us'], 3) for name in ('emsd', 'emsd+paper')}
    print(f"journal share of the live order path p50 (target <= 0.10): {summary['journal_share_of_live_p50']}")
    cpu = {name: res[name]['live_cpu_s'] / max(1, res[name]['live_n']) * 1e6 for name in CONFIGS}
    summary['live_cpu_us_per_order'] = {k: round(v, 1) for k, v in cpu.items()}
    summary['journal_share_of_live_cpu'] = {
        name: round(1 - cpu['off'] / cpu[name], 3) if cpu[name] else None for name in ('emsd', 'emsd+paper')}
    print(f"emsd + paperboi CPU per live order (submit + cancel round trips, us): {summary['live_cpu_us_per_order']};"
          f" journal share: {summary['journal_share_of_live_cpu']}")

    # (b) recovery
    state = cfg / 'state'
    state.mkdir(exist_ok=True)
    for name in os.listdir(state):
        os.remove(state / name)
    write_config(cfg, SIM_CONFIG, '')
    path = state / 'emsd.sqlite'
    t0 = time.perf_counter()
    journal_dark_orders(path, RECOVER_N)
    print(f'\nrecovery: journaled {RECOVER_N} open dark orders in {time.perf_counter() - t0:.2f} s'
          f' ({os.path.getsize(path) / 1e6:.1f} MB)')
    times = recover_in_process(path)
    print(f'  Journal open + load() + Router.restore() (re-arm): best {min(times) * 1e3:.0f} ms,'
          f' worst {max(times) * 1e3:.0f} ms of {len(times)}')
    try:
        took, seen = trio.run(recover_emsd)
    finally:
        leaked = reap_check(cfg)
        if leaked:
            print(f'WARNING: killed leftover processes {leaked}')
    print(f'  pikerd up -> open_ems (spawn emsd, restore, feed, venue) -> start-up snapshot of'
          f' {seen} orders: {took * 1e3:.0f} ms')
    print(f'machine: before {load_before}; after {machine_line()}')
    summary['recovery'] = {'orders': RECOVER_N, 'in_process_best_ms': round(min(times) * 1e3),
                           'emsd_snapshot_ms': round(took * 1e3)}
    if has_flag('json'):
        emit_json(summary)


if __name__ == '__main__':
    main()
