"""Per-tick scan cost of the heap DarkBook vs a naive per-order predicate scan.

Why: SPEC 5.4 requires the dark-book scan cost per tick not to grow with the number of resting
orders. This script shows it, measured against the baseline it replaces (a collection of
per-order closures, every one checked on every tick) in the same run, at 10, 1_000 and 100_000
resting orders.

Workload (realistic for a dark book): resting orders and alerts sit far from the market, so most
ticks fire nothing; the price random-walks on a 0.01 grid with a mix of bid/ask/last/trade and
size ticks; about 1 tick in 100 an existing order is modified to just next to the market so it
fires soon after, and every fired order is re-armed far away so N stays constant. Both books get
the identical operation stream (each in its own pass) and must fire the same oids on every tick.

Only the ``on_tick`` call is timed (``time.perf_counter_ns`` around it, so each sample includes
~0.05-0.1 us of timer overhead). The naive 100k case runs fewer ticks to keep the total < 60 s.

Run: ``uv run python bench/bench_darkbook.py [--quick] [--json]``
"""
from __future__ import annotations

import random
import sys
import time

from piker_ems.clearing._darkbook import TICK_FILTERS, DarkBook

WATCH = {
    action: frozenset(tt for tt, acts in TICK_FILTERS.items() if action in acts)
    for action in ('buy', 'sell', 'alert')
}
TICK_TYPES = ['bid', 'ask', 'last', 'trade', 'bsize', 'asize']
ACTIONS = ['buy', 'sell', 'alert']


class NaiveBook:
    """Baseline: one predicate closure per resting order, all evaluated on every tick."""

    def __init__(self) -> None:
        self.preds: dict = {}

    def arm(self, oid: str, action: str, trigger: float, last: float) -> None:
        types = WATCH[action]
        if trigger >= last:
            def pred(tt, p, types=types, trigger=trigger):
                return tt in types and p >= trigger
        else:
            def pred(tt, p, types=types, trigger=trigger):
                return tt in types and p <= trigger
        self.preds.pop(oid, None)
        self.preds[oid] = pred

    def on_tick(self, tick_type: str, price: float) -> list[str]:
        fired = [oid for oid, pred in self.preds.items() if pred(tick_type, price)]
        for oid in fired:
            del self.preds[oid]
        return fired


def far_trigger(rng: random.Random, price: float) -> float:
    """A trigger 5..50 away from the market, either side."""
    return round(price + rng.choice((-1, 1)) * rng.uniform(5.0, 50.0), 2)


def pct(samples: list[int], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))] / 1000.0  # ns -> us


def drive(book, n: int, ticks: int, seed: int, record: list | None = None,
          expect: list | None = None) -> list[int]:
    """Run the workload against ``book`` (a DarkBook or a NaiveBook); return per-tick ns.

    Each book gets its own pass (interleaving them would let the naive 100k scan evict the heap
    book's data from the CPU caches and inflate its tail). The operation stream depends only on
    ``seed`` and on which oids fire, so the passes see identical streams as long as both books
    fire the same oids; ``record``/``expect`` check exactly that, tick by tick.
    """
    rng = random.Random(seed)
    is_heap = isinstance(book, DarkBook)
    price = 100.0
    actions: dict[str, str] = {}
    for i in range(n):
        oid = f'o{i}'
        actions[oid] = action = rng.choice(ACTIONS)
        book.arm(oid, action, far_trigger(rng, price), price)

    samples: list[int] = []
    clock = time.perf_counter_ns
    for t in range(ticks):
        price = round(price + rng.randint(-2, 2) * 0.01, 2)
        tt = rng.choice(TICK_TYPES)

        t0 = clock()
        fired = book.on_tick(tt, price)
        t1 = clock()
        samples.append(t1 - t0)

        oids = sorted(e.oid for e in fired) if is_heap else sorted(fired)
        if record is not None:
            record.append(oids)
        if expect is not None and t < len(expect) and oids != expect[t]:
            sys.exit(f'MISMATCH n={n} tick={t}: heap={expect[t]} naive={oids}')
        # keep N constant: fired orders are re-armed far from the market
        for oid in oids:
            book.arm(oid, actions[oid], far_trigger(rng, price), price)
        # occasionally drag an order to right next to the market so it fires soon
        if rng.random() < 0.01:
            oid = f'o{rng.randrange(n)}'
            actions[oid] = action = rng.choice(ACTIONS)
            trig = round(price + rng.choice((-3, -2, -1, 1, 2, 3)) * 0.01, 2)
            book.arm(oid, action, trig, price)
    return samples


def run(n: int, ticks: int, naive_ticks: int, seed: int = 7) -> dict:
    record: list[list[str]] = []
    heap = DarkBook()
    heap_ns = drive(heap, n, ticks, seed, record=record)
    assert len(heap) == n
    naive_ns = drive(NaiveBook(), n, naive_ticks, seed, expect=record)
    return dict(
        n=n,
        heap_ticks=len(heap_ns),
        naive_ticks=len(naive_ns),
        fires=sum(map(len, record)),
        heap_p50=pct(heap_ns, 0.50),
        heap_p99=pct(heap_ns, 0.99),
        naive_p50=pct(naive_ns, 0.50),
        naive_p99=pct(naive_ns, 0.99),
    )


def main() -> None:
    quick = '--quick' in sys.argv
    ticks = 5_000 if quick else 50_000
    cases = [
        # (resting orders, heap ticks, naive ticks)
        (10, ticks, ticks),
        (1_000, ticks, ticks),
        (100_000, ticks, 300 if quick else 1_000),
    ]
    start = time.perf_counter()
    rows = [run(*c) for c in cases]
    elapsed = time.perf_counter() - start

    print(f'Python {sys.version.split()[0]}; per-tick on_tick() cost in microseconds')
    hdr = (f"{'orders':>8} | {'heap p50':>9} {'heap p99':>9} | {'naive p50':>10} {'naive p99':>10}"
           f" | {'ratio p50':>9} {'ratio p99':>9} | {'ticks heap/naive':>17} {'heap fires':>10}")
    print(hdr)
    print('-' * len(hdr))
    for r in rows:
        print(
            f"{r['n']:>8,} | {r['heap_p50']:>9.2f} {r['heap_p99']:>9.2f} |"
            f" {r['naive_p50']:>10.2f} {r['naive_p99']:>10.2f} |"
            f" {r['naive_p50'] / r['heap_p50']:>8.1f}x {r['naive_p99'] / r['heap_p99']:>8.1f}x |"
            f" {r['heap_ticks']:>8,}/{r['naive_ticks']:<8,} {r['fires']:>10}"
        )
    print(f'(ratio = naive/heap; total runtime {elapsed:.1f} s)')
    if '--json' in sys.argv:
        import json

        print(json.dumps({'bench': 'darkbook', 'rows': [
            {'orders': r['n'], 'heap_p50_us': round(r['heap_p50'], 3), 'heap_p99_us': round(r['heap_p99'], 3),
             'naive_p50_us': round(r['naive_p50'], 3), 'ratio_p50': round(r['naive_p50'] / r['heap_p50'], 1)}
            for r in rows]}))


if __name__ == '__main__':
    main()
