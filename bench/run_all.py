"""Every benchmark in one command: one table, ``bench/results.json``, and README's numbers.

Why: numbers in README must come from a script anyone can rerun. This runs each bench as its
own process (``--json``: its last stdout line is one JSON object), keeps what it printed,
checks the issue-13 targets against same-run baselines, records the machine (CPU model, cores,
load average before/after each bench and the whole run, Python and package versions, commit).

- ``uv run python bench/run_all.py``: quick mode (a few minutes);
- ``uv run python bench/run_all.py --full``: the sizes README quotes;
- ``--only order_path,load``: a subset; ``--readme``: also rewrite README's Benchmarks block
  (between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``) from the new results;
  ``--readme-only``: rewrite it from the existing ``bench/results.json`` without running.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / 'results.json'
README = ROOT / 'README.md'
BEGIN, END = '<!-- bench:begin -->', '<!-- bench:end -->'

#: name -> (script, quick args, full args)
BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    'profile_hops': ('profile_hops.py', [], []),
    'darkbook': ('bench_darkbook.py', ['--quick'], []),
    'trigger': ('bench_trigger.py', ['--quick'], []),
    'order_path': ('bench_order_path.py', ['--quick'], []),
    'multiclient': ('bench_multiclient.py', ['--quick'], []),
    'journal': ('bench_journal.py', ['--quick'], []),
    'load': ('bench_load.py', ['--quick'], ['--clients', '10', '--orders', '1000', '--rounds', '1']),
    'trace_hops': ('trace_hops.py', ['200'], ['600']),
}
TIMEOUT_S = 1800


def machine() -> dict:
    cpu = 'unknown'
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ('piker_ems', 'tractor', 'trio', 'msgspec', 'pydantic', 'pydantic-core'):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001 - not a git checkout
        commit = None
    return {
        'cpu_model': cpu, 'cores': os.cpu_count(), 'platform': platform.platform(),
        'python': sys.version.split()[0], 'packages': versions, 'commit': commit,
    }


def run_bench(name: str, full: bool) -> dict:
    script, quick_args, full_args = BENCHES[name]
    cmd = [sys.executable, str(HERE / script), '--json', *(full_args if full else quick_args)]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, err, rc = exc.stdout or '', f'timed out after {TIMEOUT_S}s', -1
        out = out.decode() if isinstance(out, bytes) else out
    took = time.perf_counter() - t0
    result = None
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if rc == 0 and lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            pass
    return {
        'cmd': ' '.join(['python', f'bench/{script}', *cmd[3:]]), 'rc': rc, 'seconds': round(took, 1),
        'loadavg_before': [round(x, 2) for x in load_before],
        'loadavg_after': [round(x, 2) for x in os.getloadavg()],
        'result': result, 'output': '\n'.join(lines[:-1] if result else lines)[-6000:],
        'stderr_tail': None if result else (err or '')[-3000:],
    }


def _get(results: dict, path: str):
    cur = results.get(path.split('.', 1)[0], {}).get('result')
    for part in path.split('.')[1:]:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


#: (label, value path, unit, comparison, target): the issue-13 targets, checked on every run
TARGETS = [
    ('live order -> broker_submitted p50, vs bare relay', 'order_path.live_ratio_p50', 'x', '<=', 1.25),
    ('dark order -> dark_submitted p50, vs bare echo', 'order_path.dark_ratio_p50', 'x', '<=', 1.15),
    ('book.send() synchronous cost p50', 'order_path.live_send_p50_us', 'µs', '<=', 10.0),
    ('burst fan-out to 9 watchers, rate vs bare hub', 'multiclient.burst.rate_ratio', 'x', '>=', 0.9),
    ('paced owner -> watcher p50, vs bare hub', 'multiclient.paced.p50_ratio', 'x', '<=', 1.5),
    ('reconnect with 1000 open orders, p99 over none', 'multiclient.snapshot.extra_p99_ms', 'ms', '<=', 15.0),
    ('sustained mixed lifecycles/s, vs bare topology', 'load.ratio', 'x', '>=', 0.8),
    ('submit -> final p99 at half the saturating rate', 'load.paced.p99_ms', 'ms', '<=', 50.0),
    ('lost + duplicated lifecycles (saturated and paced)', 'load.__lost_dup', '', '<=', 0),
    ('quote -> triggered BrokerdOrder inside emsd, p99', 'trigger.p99_us', 'µs', '<=', 1000.0),
    ('journal share of the live order path p50', 'journal.journal_share_of_live_p50.emsd+paper', '', '<=', 0.10),
]


def targets(results: dict) -> list[dict]:
    rows = []
    for label, path, unit, op, target in TARGETS:
        if path == 'load.__lost_dup':
            parts = [_get(results, f'load.{s}.{k}') for s in ('piker', 'paced') for k in ('lost', 'dup')]
            value = None if any(p is None for p in parts) else sum(parts)
        else:
            value = _get(results, path)
        met = None if value is None else (value <= target if op == '<=' else value >= target)
        rows.append({'measure': label, 'value': value, 'unit': unit, 'target': f'{op} {target:g}{unit}',
                     'met': met, 'source': path})
    return rows


def table(rows: list[dict]) -> str:
    out = ['| measure | this run | target | met |', '|---|---:|---:|:---:|']
    for r in rows:
        v = r['value']
        shown = '—' if v is None else (f'{v:.3g}{r["unit"]}' if isinstance(v, float) else f'{v}{r["unit"]}')
        out.append(f"| {r['measure']} | {shown} | {r['target']} | "
                   f"{'—' if r['met'] is None else ('yes' if r['met'] else 'no')} |")
    return '\n'.join(out)


def detail(results: dict) -> str:
    """A few same-run absolute numbers behind the ratios."""
    lines = []
    op = results.get('order_path', {}).get('result')
    if op:
        lines.append(f"- order path (µs, p50/p99): live {op['live_p50_us']:.0f}/{op['live_p99_us']:.0f} vs bare "
                     f"{op['base3_p50_us']:.0f}/{op['base3_p99_us']:.0f}; dark {op['dark_p50_us']:.0f}/"
                     f"{op['dark_p99_us']:.0f} vs bare {op['base1_p50_us']:.0f}/{op['base1_p99_us']:.0f}; "
                     f"book.send {op['live_send_p50_us']:.1f}/{op['live_send_p99_us']:.1f}")
    mc = results.get('multiclient', {}).get('result')
    if mc:
        b, p, s = mc['burst'], mc['paced'], mc['snapshot']
        lines.append(f"- fan-out: burst {b['rate']}/s vs bare {b['bare_rate']}/s; paced p50 {p['p50_ms']} ms vs "
                     f"bare {p['bare_p50_ms']} ms; reconnect with {s['orders']} orders p50/p99 "
                     f"{s['owner_p50_ms']}/{s['owner_p99_ms']} ms vs none {s['base_p50_ms']}/{s['base_p99_ms']} ms")
    ld = results.get('load', {}).get('result')
    if ld:
        p, b, q = ld['piker'], ld['bare'], ld['paced']
        lines.append(f"- load ({ld['clients']} clients x {ld['orders_per_client']} orders, {ld['concurrency']} in "
                     f"flight each): {p['per_s']}/s vs bare {b['per_s']}/s; submit->final p50/p99 "
                     f"{p['p50_ms']}/{p['p99_ms']} ms; emsd CPU {p['cpu_s_per_1000']} s per 1000 lifecycles "
                     f"(bare A: {b['cpu_s_per_1000']}); paced at {q['rate_per_s']}/s: p50/p99 "
                     f"{q['p50_ms']}/{q['p99_ms']} ms; lost {p['lost'] + q['lost']}, duplicated {p['dup'] + q['dup']}")
    tr = results.get('trigger', {}).get('result')
    if tr:
        lines.append(f"- quote -> BrokerdOrder in emsd: p50/p99 {tr['p50_us']}/{tr['p99_us']} µs "
                     f"(bare trio hop {tr['bare_p50_us']}/{tr['bare_p99_us']} µs)")
    jr = results.get('journal', {}).get('result')
    if jr:
        lv = jr['live']
        lines.append(f"- journal, live order p50: off {lv['off']['p50_us']} µs, emsd {lv['emsd']['p50_us']} µs, "
                     f"emsd+paper {lv['emsd+paper']['p50_us']} µs; share of emsd+paperboi CPU per live "
                     f"order: {jr.get('journal_share_of_live_cpu')}")
    th = results.get('trace_hops', {}).get('result')
    if th:
        for kind, sp in th['split'].items():
            ins = ', '.join(f'{k} {v:.0f}' for k, v in sp['in_us'].items())
            bins = ', '.join(f'{k} {v:.0f}' for k, v in sp['bare_in_us'].items())
            lines.append(f"- where a {kind} round trip goes (µs, medians, `bench/trace_hops.py`): "
                         f"{sp['total_us']:.0f} = wire {sp['wire_us']:.0f} + in {ins}; bare "
                         f"{sp['bare_total_us']:.0f} = wire {sp['bare_wire_us']:.0f} + in {bins}")
    return '\n'.join(lines)


def readme_block(doc: dict) -> str:
    m = doc['machine']
    lb, la = doc['loadavg_before'], doc['loadavg_after']
    # (only the load before counts: the benches themselves raise the average they leave behind)
    loaded = lb[0] > 0.5 * (m['cores'] or 1)
    note = (f"\n**Measured under load** (load average {lb[0]:.2f} before, {la[0]:.2f} after, on "
            f"{m['cores']} cores): absolute numbers and p99s are inflated; rerun on a quiet machine.\n"
            if loaded else '')
    return (
        f"{BEGIN}\n"
        f"Generated by `uv run python bench/run_all.py {'--full ' if doc['mode'] == 'full' else ''}--readme` "
        f"on {doc['date']} (commit {m['commit']}, {doc['mode']} mode): {m['cpu_model']}, {m['cores']} cores, "
        f"Python {m['python']}, tractor {m['packages'].get('tractor')}, trio {m['packages'].get('trio')}, "
        f"pydantic {m['packages'].get('pydantic')}, msgspec {m['packages'].get('msgspec')}; load average "
        f"{lb[0]:.2f} before, {la[0]:.2f} after. Full results: `bench/results.json`.\n{note}\n"
        f"{table(doc['targets'])}\n\n{detail(doc['benches'])}\n"
        f"{END}"
    )


def write_readme(doc: dict) -> None:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f'README.md has no {BEGIN} ... {END} block')
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + readme_block(doc) + tail)
    print(f'README.md benchmarks block rewritten from {RESULTS.relative_to(ROOT)}')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--full', action='store_true', help='the sizes README quotes (long)')
    ap.add_argument('--only', default='', help='comma-separated bench names: ' + ', '.join(BENCHES))
    ap.add_argument('--readme', action='store_true', help="also rewrite README's Benchmarks block")
    ap.add_argument('--readme-only', action='store_true', help='rewrite it from the existing results.json')
    args = ap.parse_args()
    if args.readme_only:
        write_readme(json.loads(RESULTS.read_text()))
        return
    names = [n for n in args.only.split(',') if n] or list(BENCHES)
    unknown = set(names) - set(BENCHES)
    if unknown:
        raise SystemExit(f'unknown bench(es): {", ".join(sorted(unknown))}; known: {", ".join(BENCHES)}')
    doc = {
        'date': dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'mode': 'full' if args.full else 'quick', 'machine': machine(),
        'loadavg_before': [round(x, 2) for x in os.getloadavg()], 'benches': {},
    }
    for name in names:
        print(f'running {name} ...', flush=True)
        doc['benches'][name] = r = run_bench(name, args.full)
        status = 'ok' if r['result'] is not None else f"FAILED (rc {r['rc']})"
        print(f"  {status} in {r['seconds']} s, load {r['loadavg_before'][0]} -> {r['loadavg_after'][0]}")
        if r['result'] is None:
            print('  ' + (r['stderr_tail'] or r['output'] or '')[-1500:].replace('\n', '\n  '))
    doc['loadavg_after'] = [round(x, 2) for x in os.getloadavg()]
    doc['targets'] = targets(doc['benches'])
    RESULTS.write_text(json.dumps(doc, indent=1, default=float) + '\n')
    print()
    print(table(doc['targets']))
    print()
    print(detail(doc['benches']))
    m = doc['machine']
    print(f"\n{m['cpu_model']}, {m['cores']} cores; load average {doc['loadavg_before'][0]} before, "
          f"{doc['loadavg_after'][0]} after; wrote {RESULTS.relative_to(ROOT)}")
    if args.readme:
        write_readme(doc)
    if any(r['result'] is None for r in doc['benches'].values()):
        raise SystemExit(1)


if __name__ == '__main__':
    main()
