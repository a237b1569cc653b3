"""Where an order's round trip goes, hop by hop, in the real actor processes, against tractor's own.

Why: ``bench_order_path.py`` says the live and dark round trips take 2–2.5× a bare tractor relay
over the same hops; this says which part of each round trip is tractor's (its framing, msgpack,
its debug strings, the socket and the receiving actor's wake-up: the same in both) and which is
ours (the work inside emsd, paperboi and the client between a message arriving and the next
leaving).

How: every actor process loads ``bench/hoptrace/sitecustomize.py``, which timestamps each IPC
message as it is sent (``tx``, before encoding; ``txd``, after the socket write) and as it is
received (``rx``, a whole frame read, before decoding), with the host's monotonic clock shared
by all processes. The bench runs sequential round trips (one in flight, as
``bench_order_path.py``): a live order to ``broker_submitted``, a dark order to
``dark_submitted``, and the bare relays (``bench/_relay_actors.py``) with the same message
shapes. For each kind it prints the median time of every step from the caller's ``send()`` to
the caller holding the answer, and the same steps' sum as "wire" (tx → rx on the far side:
encode, syscalls, wake-up, read, tractor's per-frame debug string) or "in actor" (rx → next tx
in one process: tractor's receive loop and feeder channel, then our work, then tractor's send
debug string).

Run: ``uv run python bench/trace_hops.py [N] [--json]`` (default N=400 round trips per kind).
The tracing itself adds a few µs per message to both sides alike.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == '__main__' and 'PIKER_HOPTRACE_DIR' not in os.environ:
    # re-exec with the tracer on PYTHONPATH so this process and every actor it spawns load it
    os.environ['PIKER_HOPTRACE_DIR'] = tempfile.mkdtemp(prefix='piker_hoptrace_')
    os.environ['PYTHONPATH'] = os.pathsep.join(
        [os.path.join(HERE, 'hoptrace'), os.path.dirname(HERE), os.environ.get('PYTHONPATH', '')])
    os.execv(sys.executable, [sys.executable, *sys.argv])

if __name__ == '__main__':
    sys.path.insert(0, os.path.dirname(HERE))

N = 400
WARMUP = 100
TIMEOUT = 10.0
BARE_OID = 'f' * 32
BARE_REQID = 'paper-000000'  # wire_templates()' BrokerdStatus reqid, as _what() shortens it


async def workload(n: int) -> None:
    import sitecustomize
    import trio

    from _common import FQSN, wire_templates
    from bench_order_path import _wait_for, round_trip_rig

    mark = sitecustomize.mark
    tpl = wire_templates(oid=BARE_OID)
    async with round_trip_rig(tpl) as (s3, s1, feed, book, trades):
        price = round(feed.first_quotes[FQSN]['last'] * 0.7, 2)  # rests, never fills

        async def piker(kind: str, keep: bool) -> None:
            ack, cxl = (('broker_submitted', 'broker_cancelled') if kind == 'live'
                        else ('dark_submitted', 'dark_cancelled'))
            with trio.fail_after(TIMEOUT):
                if keep:
                    mark(f'start {kind}')
                oid = book.send('buy', price, 1.0, exec_mode=kind)
                await _wait_for(trades, oid, ack)
                if keep:
                    mark(f'end {kind} {oid[:12]}')
                book.cancel(oid)
                await _wait_for(trades, oid, cxl)

        async def bare(kind: str, stream, keep: bool) -> None:  # noqa: ANN001
            with trio.fail_after(TIMEOUT):
                if keep:
                    mark(f'start {kind}')
                await stream.send(tpl['order'])
                await stream.receive()
                if keep:
                    mark(f'end {kind} {BARE_OID[:12]}')

        for i in range(WARMUP + n):
            keep = i >= WARMUP
            await bare('bare3', s3, keep)
            await piker('live', keep)
            await bare('bare1', s1, keep)
            await piker('dark', keep)


def load_events(trace_dir: str) -> list[tuple[int, str, str, str]]:
    """All processes' events as (t_ns, process, dir, what), in time order."""
    out = []
    for fn in os.listdir(trace_dir):
        with open(os.path.join(trace_dir, fn)) as f:
            d = json.load(f)
        out.extend((t, d['name'], dr, what) for t, dr, what in d['events'])
    out.sort()
    return out


def round_trips(events: list) -> dict[str, list[list]]:
    """Per kind, each round trip's steps: [(t - t_start, process, dir, what), ...] for the
    messages about that round trip's order (its oid), from the start mark to the end mark."""
    out: dict[str, list[list]] = {}
    starts = [(i, e) for i, e in enumerate(events) if e[2] == 'mark' and e[3].startswith('start ')]
    for i, (t0, _, _, label) in starts:
        kind = label.split()[1]
        steps, j = [], i + 1
        while j < len(events) and not (events[j][2] == 'mark' and events[j][3].startswith('end ')):
            j += 1
        if j == len(events):
            break
        oid = events[j][3].split()[2]
        open_fn: dict[tuple[str, str], int] = {}
        fns: dict[str, float] = {}
        for t, proc, dr, what in events[i + 1:j]:
            if dr == 'fn>':
                open_fn[(proc, what)] = t
                continue
            if dr == 'fn<':
                t_in = open_fn.pop((proc, what), None)
                if t_in is not None:
                    k = f'{proc} {what}'
                    fns[k] = fns.get(k, 0) + (t - t_in)
                continue
            if dr == 'txd':
                if steps and steps[-1][1] == proc and steps[-1][2] == 'tx':
                    steps[-1][4] = t - t0
                continue
            # (the bare venue's answer carries the template's reqid, not the oid)
            if dr in ('tx', 'rx') and (oid in what or (kind.startswith('bare') and BARE_REQID in what)):
                steps.append([t - t0, proc, dr, what, None])
        steps.append([events[j][0] - t0, 'root', 'end', kind, fns])
        out.setdefault(kind, []).append(steps)
    return out


def shape(steps: list) -> tuple:
    return tuple((p, d, w.split(':')[0]) for _, p, d, w, _ in steps[:-1])


def summarize(trips: list[list]) -> dict:
    """The most common sequence of steps and the median time of each (µs from the send call)."""
    by_shape: dict[tuple, list] = {}
    for s in trips:
        by_shape.setdefault(shape(s), []).append(s)
    common, same = max(by_shape.items(), key=lambda kv: len(kv[1]))
    rows = []
    for k, (proc, dr, what) in enumerate(common + (('root', 'end', ''),)):
        at = statistics.median(s[k][0] for s in same) / 1000
        ends = [s[k][4] for s in same if isinstance(s[k][4], int)]
        rows.append({'proc': proc, 'dir': dr, 'what': what, 'at_us': round(at, 1),
                     'sent_us': round(statistics.median(ends) / 1000, 1) if ends else None})
    total = statistics.median(s[-1][0] for s in trips) / 1000
    names = sorted({k for s in same for k in s[-1][4]})
    fns = {k: round(statistics.median(s[-1][4].get(k, 0) for s in same) / 1000, 1) for k in names}
    return {'n': len(trips), 'n_common': len(same), 'shapes': len(by_shape), 'rows': rows,
            'total_us': round(total, 1), 'functions_us': fns}


def segments(summary: dict) -> list[dict]:
    """Consecutive steps as segments: wire (tx in one process → rx in another) or in actor."""
    rows = summary['rows']
    out = []
    prev = {'proc': 'root', 'dir': 'call', 'what': 'send()', 'at_us': 0.0}
    for r in rows:
        if prev['dir'] == 'tx' and r['dir'] == 'rx' and prev['proc'] != r['proc']:
            where = 'wire'
        else:
            where = f"in {r['proc']}"
        out.append({'from': f"{prev['proc']} {prev['dir']} {prev['what']}",
                    'to': f"{r['proc']} {r['dir']} {r['what']}",
                    'where': where, 'us': round(r['at_us'] - prev['at_us'], 1)})
        prev = r
    return out


def report(summaries: dict[str, dict]) -> None:
    pairs = [('live', 'bare3'), ('dark', 'bare1')]
    for ours, bare in pairs:
        if ours not in summaries or bare not in summaries:
            continue
        for kind in (ours, bare):
            s = summaries[kind]
            print(f'\n{kind}: median of {s["n"]} round trips ({s["n_common"]} of the most common '
                  f'shape, {s["shapes"]} shapes), total {s["total_us"]:.0f} µs')
            print(f'  {"segment":<62} {"where":<14} {"µs":>7}')
            for seg in segments(s):
                print(f'  {seg["from"] + " -> " + seg["to"]:<62} {seg["where"]:<14} {seg["us"]:>7.1f}')
            by = {}
            for seg in segments(s):
                key = 'wire' if seg['where'] == 'wire' else seg['where']
                by[key] = by.get(key, 0) + seg['us']
            print('  sums: ' + ', '.join(f'{k} {v:.0f}' for k, v in by.items()))
            for k, v in s['functions_us'].items():
                print(f'  timed: {k:<60} {v:>7.1f}')


def main() -> None:
    from _common import emit_json, has_flag, isolate, machine_line, positional, reap_check

    n = positional(N)
    _, cfg = isolate()
    import trio

    print(f'machine: {machine_line()}')
    trace_dir = os.environ['PIKER_HOPTRACE_DIR']
    try:
        trio.run(workload, n)
    finally:
        leaked = reap_check(cfg)
        if leaked:
            print(f'WARNING: killed leftover processes {leaked}')
    import sitecustomize

    sitecustomize.dump()  # this process's own events (the actors wrote theirs as they exited)
    events = load_events(trace_dir)
    trips = round_trips(events)
    summaries = {k: summarize(v) for k, v in trips.items()}
    report(summaries)
    print(f'\nmachine after: {machine_line()}')
    split = splits(summaries)
    for pair, sp in split.items():
        print(f"{pair}: {sp['total_us']:.0f} µs vs {sp['bare_total_us']:.0f} µs bare; wire "
              f"{sp['wire_us']:.0f} vs {sp['bare_wire_us']:.0f}; in actors "
              + ', '.join(f'{k} {v:.0f}' for k, v in sp['in_us'].items())
              + ' vs ' + ', '.join(f'{k} {v:.0f}' for k, v in sp['bare_in_us'].items()))
    if has_flag('json'):
        emit_json({'bench': 'trace_hops', 'n': n, 'split': split,
                   'kinds': {k: {**s, 'segments': segments(s)} for k, s in summaries.items()}})


def splits(summaries: dict[str, dict]) -> dict[str, dict]:
    """Per pair (ours vs bare): the round trip's median total, its wire part and each process's
    in-actor part (µs)."""
    def parts(kind: str) -> tuple[float, dict[str, float]]:
        wire, inside = 0.0, {}
        for seg in segments(summaries[kind]):
            if seg['where'] == 'wire':
                wire += seg['us']
            else:
                who = seg['where'][3:]
                inside[who] = round(inside.get(who, 0.0) + seg['us'], 1)
        return round(wire, 1), inside

    out = {}
    for ours, bare in (('live', 'bare3'), ('dark', 'bare1')):
        if ours in summaries and bare in summaries:
            (w, ins), (bw, bins) = parts(ours), parts(bare)
            out[ours] = {'total_us': summaries[ours]['total_us'], 'bare_total_us': summaries[bare]['total_us'],
                         'wire_us': w, 'bare_wire_us': bw, 'in_us': ins, 'bare_in_us': bins,
                         'functions_us': summaries[ours]['functions_us']}
    return out


if __name__ == '__main__':
    main()
