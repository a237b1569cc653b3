"""Sustained load: N clients x M mixed orders against one pikerd, vs a bare relay topology.

Why: single round trips (``bench_order_path.py``) say little about a busy emsd. Here every
client actor runs its orders with a fixed number in flight; each order follows one scenario of a
mix (``bench/_load_actors.py``: dark orders, alerts, resting live orders, live and dark
modifies, cancels, cancel-before-ack, marketable orders that fill) from submit to its final
status. Printed: lifecycles/s, emsd CPU seconds per 1000 lifecycles (its utime+stime from
/proc), submit -> final p50/p99, lost (no final status within the timeout) and duplicated
(more than one final status for an oid): both must be 0.

Baseline in the same run: the same client actors, scenarios and concurrency through bare tractor
actors A (the emsd stand-in, a sub-actor of this process) and B (the paper engine stand-in, A's
child), moving per step exactly as many dicts of the same shapes on each link as piker_ems does
(``BARE_STEPS``). Ratio = piker lifecycles/s over bare lifecycles/s. The two runs alternate
(bare, piker, bare, piker ...) so machine noise hits both.

Then the paced run: the same mix at half the saturating rate piker_ems just reached (open loop:
orders start on a clock whatever is in flight), for the submit -> final p99 of a busy-but-not-
saturated emsd.

Run: ``uv run python bench/bench_load.py [--clients N] [--orders M] [--concurrency C]
[--rounds R] [--quick] [--json]``
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

if __name__ == '__main__':  # children re-import this file: keep their import side-effect free
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TIMEOUT = 60.0


def _cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def _actor_names() -> dict[int, str]:
    """This process's descendant actors: pid -> actor name (from tractor's ``--uid`` argument)."""
    from piker_ems.testing import descendants

    out = {}
    for pid in descendants():
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                cmd = f.read().replace(b'\0', b' ').decode(errors='replace')
        except OSError:
            continue
        if "--uid ('" in cmd:
            out[pid] = cmd.split("--uid ('", 1)[1].split("'", 1)[0]
    return out


def _tree_cpu() -> dict[str, float]:
    """CPU seconds of this process and of each descendant actor, by actor name."""
    out = {'root': _cpu_s(os.getpid())}
    for pid, name in _actor_names().items():
        try:
            out[name] = out.get(name, 0.0) + _cpu_s(pid)
        except OSError:
            continue
    return out


def _child_pid(name: str) -> int | None:
    """The pid of this process's descendant actor called ``name``."""
    return next((pid for pid, n in _actor_names().items() if n == name), None)


async def run(args) -> dict:
    import tractor
    import trio

    from _common import FQSN, wire_templates
    from bench import _load_actors as load
    from piker_ems.clearing import open_ems
    from piker_ems.data import open_feed
    from piker_ems.service import find_service, open_pikerd
    from piker_ems.service._auth import call

    tpl = wire_templates()
    addr = tuple(os.environ['PIKER_EMS_REGISTRY'].split(':'))
    res: dict = {'piker': [], 'bare': [], 'paced': None}
    async with open_pikerd((addr[0], int(addr[1]))):
        async with tractor.open_nursery() as an:
            clients = [await an.start_actor(f'load_client_{i}', enable_modules=['bench._load_actors'])
                       for i in range(args.clients)]
            hub = await an.start_actor('load_bare_a', enable_modules=['bench._load_actors'])
            async with (
                open_feed(FQSN) as feed,
                open_ems(FQSN, mode='paper', name='load_probe'),  # emsd and paperboi up
                hub.open_context(load.bare_hub, command=tpl['brokerd_order'],
                                 event=tpl['brokerd_status']) as (hctx, _),
            ):
                last = feed.first_quotes[FQSN]['last']
                emsd_pid = _child_pid('emsd')
                hub_pid = _child_pid('load_bare_a')

                async def one_round(fn, pid: int | None, kwargs_of) -> dict:
                    """Every client runs ``fn(**kwargs_of(i))`` at once; wall time, the CPU of
                    ``pid`` (emsd, or the bare A) and of every actor over the round."""
                    out: list = [None] * len(clients)
                    cpu0 = _cpu_s(pid) if pid else 0.0
                    tree0 = _tree_cpu()
                    t0 = time.perf_counter()
                    async with trio.open_nursery() as n:
                        for i, p in enumerate(clients):
                            async def one(i=i, p=p):
                                out[i] = await p.run(fn, **kwargs_of(i))
                            n.start_soon(one)
                    wall = time.perf_counter() - t0
                    cpu = (_cpu_s(pid) - cpu0) if pid else float('nan')
                    tree = {k: round(v - tree0.get(k, 0.0), 3) for k, v in _tree_cpu().items()}
                    return {'clients': out, 'wall_s': wall, 'cpu_s': cpu, 'tree_cpu': tree}

                async def piker_round(m: int, rate: float = 0.0, tag: str = 'r') -> dict:
                    return await one_round(load.run_piker, emsd_pid, lambda i: dict(
                        name=f'load{i}-{tag}', fqsn=FQSN, m=m, concurrency=args.concurrency,
                        last=last, timeout=TIMEOUT, rate=rate / len(clients)))

                async def bare_round(m: int) -> dict:
                    return await one_round(load.run_bare, hub_pid, lambda i: dict(
                        sid=i, hub='load_bare_a', m=m, concurrency=args.concurrency,
                        request=tpl['order'], status=tpl['status_live'], timeout=TIMEOUT))

                # warm-up: every scenario once per client, both topologies
                await bare_round(len(load.MIX))
                await piker_round(len(load.MIX), tag='w')
                async with find_service('emsd') as ep:
                    s0 = await call(ep, 'piker_ems.clearing._ems', 'ems_stats')
                for r in range(args.rounds):
                    res['bare'].append(await bare_round(args.orders))
                    res['piker'].append(await piker_round(args.orders, tag=f'r{r}'))
                async with find_service('emsd') as ep:
                    s1 = await call(ep, 'piker_ems.clearing._ems', 'ems_stats')
                res['emsd_msgs'] = {k: s1.get(k, 0) - s0.get(k, 0) for k in ('client_msgs', 'venue_events')}
                res['emsd_msgs']['venue_requests'] = (sum(s1['venue_requests'].values())
                                                      - sum(s0['venue_requests'].values()))
                # paced: half the saturating rate reached above
                sat = _rate(res['piker'])
                res['paced_rate'] = sat / 2
                res['paced'] = await piker_round(args.orders, rate=sat / 2, tag='p')
                await hctx.cancel()
            await an.cancel()
    return res


def _rate(rounds: list[dict]) -> float:
    done = sum(len(c['lat_ns']) for r in rounds for c in r['clients'])
    return done / sum(r['wall_s'] for r in rounds)


def summarize(res: dict, args) -> dict:
    from _common import pct
    from bench import _load_actors as load

    def side(rounds: list[dict]) -> dict:
        lat = [x for r in rounds for c in r['clients'] for x in c['lat_ns']]
        started = sum(c['started'] for r in rounds for c in r['clients'])
        final = sum(c['final'] for r in rounds for c in r['clients'])
        done = len(lat)
        cpu = sum(r['cpu_s'] for r in rounds)
        return {
            'lifecycles': done, 'per_s': round(_rate(rounds), 1),
            'p50_ms': round(pct(lat, .5) / 1e6, 2) if lat else None,
            'p99_ms': round(pct(lat, .99) / 1e6, 2) if lat else None,
            'lost': started - final, 'dup': sum(c['dup'] for r in rounds for c in r['clients']),
            'failed': started - done,
            'errors': [e for r in rounds for c in r['clients'] for e in c['errors']][:5],
            'cpu_s_per_1000': round(1000 * cpu / done, 3) if done else None,
            'statuses': sum(c['statuses'] for r in rounds for c in r['clients']),
            'p50_ms_by_scenario': {k: round(pct(v, .5) / 1e6, 2) for k in load.SCENARIOS if (v := [
                x for r in rounds for c in r['clients'] for x in c['by_kind'].get(k, ())])},
        }

    piker, bare = side(res['piker']), side(res['bare'])
    paced = side([res['paced']])
    steps = {k: [sum(col) for col in zip(*v)] for k, v in load.BARE_STEPS.items()}
    per_order = [0, 0, 0, 0]
    n = args.orders * args.clients * args.rounds
    for i in range(args.orders):
        for j, x in enumerate(steps[load.scenario_of(i)]):
            per_order[j] += x * args.clients * args.rounds
    return {
        'bench': 'load', 'clients': args.clients, 'orders_per_client': args.orders,
        'concurrency': args.concurrency, 'rounds': args.rounds, 'mix': load.MIX,
        'piker': piker, 'bare': bare,
        'ratio': round(piker['per_s'] / bare['per_s'], 3) if bare['per_s'] else None,
        'paced': {**paced, 'rate_per_s': round(res['paced_rate'], 1)},
        'bare_msgs': dict(zip(('client_requests', 'venue_requests', 'venue_events', 'statuses'), per_order)),
        'emsd_msgs': res.get('emsd_msgs'), 'lifecycles_planned': n,
        'cpu_by_actor': {'piker': res['piker'][-1].get('tree_cpu'), 'bare': res['bare'][-1].get('tree_cpu')},
    }


def report(out: dict) -> None:
    p, b, q = out['piker'], out['bare'], out['paced']
    print(f"{out['clients']} clients x {out['orders_per_client']} orders x {out['rounds']} rounds, "
          f"{out['concurrency']} in flight per client; mix {'/'.join(out['mix'])}")
    hdr = f"{'':<22} {'lifecycles/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'lost':>5} {'dup':>4} {'CPU s/1000':>11}"
    print(hdr)
    print('-' * len(hdr))
    for label, s in (('piker_ems', p), ('bare relay', b), ('piker_ems paced 1/2', q)):
        print(f"{label:<22} {s['per_s']:>12.1f} {s['p50_ms']:>8} {s['p99_ms']:>8} {s['lost']:>5} "
              f"{s['dup']:>4} {s['cpu_s_per_1000']:>11}")
    print(f"ratio piker/bare lifecycles/s: {out['ratio']:.2f}x  (paced at {q['rate_per_s']}/s)")
    print(f"messages: bare moved {out['bare_msgs']}; emsd counted {out['emsd_msgs']} "
          f"(client statuses received: piker {p['statuses']}, bare {b['statuses']})")
    print(f"CPU s by actor (last round): {out['cpu_by_actor']}")
    print(f"p50 ms by scenario: piker {p['p50_ms_by_scenario']}; bare {b['p50_ms_by_scenario']}")
    for e in p['errors'] + q['errors']:
        print('  error:', e)


def main() -> None:
    from _common import isolate, machine_line, reap_check

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--clients', type=int, default=4)
    ap.add_argument('--orders', type=int, default=200)
    ap.add_argument('--concurrency', type=int, default=8)
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--json', action='store_true')
    ap.add_argument('--quick', action='store_true', help='3 clients x 100 orders, 1 round')
    args = ap.parse_args()
    if args.quick:
        args.clients, args.orders, args.rounds = 3, 100, 1
    _, cfg = isolate()
    import trio

    load_before = os.getloadavg()
    try:
        res = trio.run(run, args)
    finally:
        leaked = reap_check(cfg)
        if leaked:
            print(f'WARNING: killed leftover processes {leaked}')
    out = summarize(res, args)
    out['loadavg_before'], out['loadavg_after'] = load_before, os.getloadavg()
    if args.json:
        report(out)
        print(json.dumps(out))
        return
    report(out)
    print(f'machine: {machine_line()}')


if __name__ == '__main__':
    main()
