"""What emsd's pre-trade risk check costs on the order path (issue 14).

The Router's handling of one new live order (parse, checks, state machine, venue command), in
process with the test fakes (no actors, no journal), under three configurations measured in
the same run, in interleaved blocks:

- ``none``: an engine the Router never asks (the order path without risk: the baseline);
- ``default``: the default engine (only the 50% price band: what a newcomer runs);
- ``all``: every limit configured (max_long/max_short and max_open_orders scan the account's
  open orders, not the finished ones: the cost grows with them; ``OPEN`` orders rest meanwhile).

Prints p50/p99 per order (microseconds) and the ratio to the baseline.

Run: ``uv run python bench/bench_risk.py [N]`` (default N=5000 orders per block)
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests'))

N = 5000
BLOCKS = 4
OPEN = 200
ALL = {
    'max_order_size': 1e6, 'max_order_notional': 1e12, 'max_long': 1e9, 'max_short': 1e9,
    'max_open_orders': 1e9, 'order_rate': 1e9, 'cancel_rate': 1e9, 'price_band_pct': 50,
}


class _AcceptAll:
    refused = 0
    idle = True  # the Router skips its risk calls: the order path as it was before risk

    band = 0.0

    def check_rate(self, *a, **k):
        return None

    def check_band(self, *a, **k):
        return None

    def needs_exposure(self, *a, **k):
        return False

    def check_order(self, **k):
        return None

    def snapshot(self):
        return {}


def _block(kind: str, n: int) -> list[float]:
    from _router_fakes import Rig
    from piker_ems.clearing._messages import BrokerdOrderAck, BrokerdStatus, Order, to_wire
    from piker_ems.clearing._risk import RiskEngine, parse_limits

    rig = Rig()
    if kind == 'none':
        rig.router.risk = _AcceptAll()
    elif kind == 'all':
        rig.router.risk = RiskEngine(parse_limits(ALL), clock=rig.clock)
    conn = rig.client('bench', account='live')
    for i in range(OPEN):  # resting orders the 'all' checks scan
        rig.send(conn, Order(action='buy', oid=f'rest{i}', symbol='btcusd.sim', price=99.0, size=1,
                             exec_mode='live', account='live'))
    msgs = [to_wire(Order(action='buy', oid=f'o{i}', symbol='btcusd.sim', price=101.0, size=1,
                          exec_mode='live', account='live')) for i in range(n)]
    out = []
    handle = rig.router.handle_client_msg
    for i, msg in enumerate(msgs):
        t0 = time.perf_counter_ns()
        handle(conn, msg)
        out.append((time.perf_counter_ns() - t0) / 1e3)
        # the venue acks and cancels it, so the open-order count stays at OPEN
        reqid = 10_000_000 + i
        rig.venue_msg(BrokerdOrderAck(oid=msg['oid'], reqid=reqid))
        rig.venue_msg(BrokerdStatus(reqid=reqid, status='cancelled'))
    assert rig.router.risk.refused == 0
    return out


def main(n: int) -> None:
    from _common import machine_line, pct

    samples: dict[str, list[float]] = {'none': [], 'default': [], 'all': []}
    for _ in range(BLOCKS):
        for kind in samples:
            samples[kind] += _block(kind, n)
    print(machine_line())
    print(f'Router.handle_client_msg, new live order, {n * BLOCKS} per config, {OPEN} open orders')
    base50, base99 = pct(samples['none'], 0.5), pct(samples['none'], 0.99)
    for kind, s in samples.items():
        p50, p99 = pct(s, 0.5), pct(s, 0.99)
        print(f'{kind:<8} p50 {p50:7.1f} us  p99 {p99:7.1f} us  ratio p50 {p50 / base50:4.2f}  p99 {p99 / base99:4.2f}')


if __name__ == '__main__':
    main(int(sys.argv[1]) if len(sys.argv) > 1 else N)
