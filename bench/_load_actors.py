"""Client and bare-relay actors for ``bench_load.py`` (enable as ``bench._load_actors``).

Every order of the load follows one *scenario*: a list of steps, each a request and the Status
(or the count of bare replies) it waits for. The piker_ems client runs them through
``open_ems``; the bare client runs the same scenarios, with the same concurrency, through a
stand-in ``emsd`` (actor A) and ``paperboi`` (its child B) that only move dicts of the same
shapes: per step, the same number of messages on every link as piker_ems moves
(:data:`BARE_STEPS`: client -> A requests, A -> B commands, B -> A events, A -> client statuses).

Times are ``time.perf_counter_ns`` inside one client process (submit -> final of each order).
"""
from __future__ import annotations

import math
import time
from typing import Any

import tractor
import trio

#: scenario -> steps; a step is (request, the resp awaited before the next step). The last
#: step's wait is the order's final status.
SCENARIOS: dict[str, list[tuple[str, str]]] = {
    'dark': [('dark', 'dark_submitted'), ('cancel', 'dark_cancelled')],
    'alert': [('alert', 'alert_submitted'), ('cancel', 'dark_cancelled')],
    'live': [('live', 'broker_submitted'), ('cancel', 'broker_cancelled')],
    'live_modify': [('live', 'broker_submitted'), ('modify', 'broker_submitted'),
                    ('cancel', 'broker_cancelled')],
    'dark_modify': [('dark', 'dark_submitted'), ('modify', 'dark_submitted'),
                    ('cancel', 'dark_cancelled')],
    'cancel_before_ack': [('live', None), ('cancel', 'broker_cancelled')],
    'fill': [('fill', 'broker_executed')],
}
#: The mix: one order in len(MIX) of each scenario, in this rotation.
MIX = ['dark', 'live', 'alert', 'live_modify', 'dark', 'fill', 'cancel_before_ack', 'live',
       'dark_modify', 'dark']

#: Messages piker_ems moves per step of a scenario, as (client->emsd, emsd->venue,
#: venue->emsd, emsd->client); checked against emsd's and the paper engine's counters by
#: ``bench_load.py`` (it prints both totals). The bare baseline moves exactly these.
BARE_STEPS: dict[str, list[tuple[int, int, int, int]]] = {
    'dark': [(1, 0, 0, 1), (1, 0, 0, 1)],
    'alert': [(1, 0, 0, 1), (1, 0, 0, 1)],
    'live': [(1, 1, 2, 1), (1, 1, 1, 1)],
    'live_modify': [(1, 1, 2, 1), (1, 1, 1, 1), (1, 1, 1, 1)],
    'dark_modify': [(1, 0, 0, 1), (1, 0, 0, 1), (1, 0, 0, 1)],
    'cancel_before_ack': [(1, 1, 2, 1), (1, 1, 1, 1)],
    'fill': [(1, 1, 5, 3)],  # ack, submitted, fill, executed, position; 3 statuses
}


def scenario_of(i: int) -> str:
    return MIX[i % len(MIX)]


class _Tally:
    """Per-client results: latencies, finals per oid, errors."""

    def __init__(self) -> None:
        self.lat_ns: list[int] = []
        self.by_kind: dict[str, list[int]] = {}
        self.finals: dict[str, int] = {}
        self.errors: list[str] = []
        self.statuses = 0

    def result(self, wall_s: float, started: int) -> dict[str, Any]:
        return {
            'lat_ns': self.lat_ns, 'by_kind': self.by_kind, 'wall_s': wall_s, 'started': started,
            'final': len(self.finals), 'dup': sum(1 for n in self.finals.values() if n > 1),
            'errors': self.errors[:10], 'n_errors': len(self.errors), 'statuses': self.statuses,
        }


async def _run_orders(m: int, concurrency: int, one_order, rate: float = 0.0) -> tuple[float, int]:
    """Run ``one_order(i)`` for i < m: at most ``concurrency`` at a time (closed loop), or,
    with ``rate`` > 0, one started every ``1/rate`` s whatever is in flight (open loop)."""
    limit = trio.CapacityLimiter(max(1, concurrency))
    started = 0
    t0 = time.perf_counter()
    trio_t0 = trio.current_time()

    async def guarded(i: int, token: object) -> None:
        try:
            await one_order(i)
        finally:
            if token is not None:
                limit.release_on_behalf_of(token)

    async with trio.open_nursery() as n:
        for i in range(m):
            token = None
            if rate > 0:
                await trio.sleep_until(trio_t0 + i / rate)
            else:
                token = object()
                await limit.acquire_on_behalf_of(token)
            n.start_soon(guarded, i, token)
            started += 1
    return time.perf_counter() - t0, started


async def run_piker(name: str, fqsn: str, m: int, concurrency: int, last: float,
                    timeout: float = 60.0, rate: float = 0.0) -> dict[str, Any]:
    """One client (``open_ems`` as ``name``): ``m`` orders of the mix, ``concurrency`` in
    flight; returns its tally."""
    from piker_ems.clearing import Status, open_ems
    from piker_ems.clearing._statuses import is_final

    tally = _Tally()
    waiters: dict[str, trio.MemorySendChannel] = {}
    far_below, far_above = round(last * 0.7, 2), round(last * 1.4, 2)  # rest, never fill (inside the default 50% price band)
    marketable = round(last * 1.2, 2)  # fills at once (inside the band)

    async with open_ems(fqsn, mode='paper', name=name) as (book, trades, _):

        async def dispatch() -> None:
            async for msg in trades:
                if not isinstance(msg, Status):
                    continue
                tally.statuses += 1
                if is_final(msg.resp):
                    tally.finals[msg.oid] = tally.finals.get(msg.oid, 0) + 1
                tx = waiters.get(msg.oid)
                if tx is not None:
                    tx.send_nowait(msg)

        async def wait(rx, want: str | None, oid: str) -> None:
            if want is None:
                return
            while True:
                msg = await rx.receive()
                if msg.resp == want:
                    return
                if msg.resp in ('error', 'broker_errored') or (is_final(msg.resp) and msg.resp != want):
                    tally.errors.append(f'{oid}: {msg.resp} ({msg.reason}) waiting for {want}')
                    raise _OrderFailed

        async def one_order(i: int) -> None:
            kind = scenario_of(i)
            tx, rx = trio.open_memory_channel(math.inf)
            oid = f'{name}-{i}'
            waiters[oid] = tx
            t0 = time.perf_counter_ns()
            try:
                with trio.fail_after(timeout):
                    for req, want in SCENARIOS[kind]:
                        if req == 'dark':
                            book.send('buy', far_below, 1.0, exec_mode='dark', oid=oid)
                        elif req == 'alert':
                            book.send('alert', far_above, 0.0, exec_mode='dark', oid=oid)
                        elif req == 'live':
                            book.send('buy', far_below, 1.0, exec_mode='live', oid=oid)
                        elif req == 'fill':
                            book.send('buy', marketable, 0.001, exec_mode='live', oid=oid)
                        elif req == 'modify':
                            book.update(oid, price=round(far_below * 0.99, 2))
                        elif req == 'cancel':
                            book.cancel(oid)
                        await wait(rx, want, oid)
                tally.lat_ns.append(time.perf_counter_ns() - t0)
                tally.by_kind.setdefault(kind, []).append(tally.lat_ns[-1])
            except (_OrderFailed, trio.TooSlowError):
                pass
            finally:
                waiters.pop(oid, None)

        async with trio.open_nursery() as n:
            n.start_soon(dispatch)
            wall, started = await _run_orders(m, concurrency, one_order, rate)
            with trio.move_on_after(2):  # late duplicates would show up here
                await trio.sleep(0.5)
            n.cancel_scope.cancel()
    return tally.result(wall, started)


class _OrderFailed(Exception):
    pass


# --- the bare baseline ------------------------------------------------------------------------

_sessions: dict[int, trio.MemorySendChannel] = {}


@tractor.context
async def bare_venue(ctx: tractor.Context, event: dict) -> None:
    """B: answer each command ``{'sid', 'seq', 'n'}`` with ``n`` events shaped like ``event``."""
    await ctx.started(None)
    async with ctx.open_stream() as stream:
        async for cmd in stream:
            for i in range(cmd['n']):
                out = dict(event)
                out['sid'], out['seq'], out['i'], out['n'], out['s'] = cmd['sid'], cmd['seq'], i, cmd['n'], cmd['s']
                await stream.send(out)


@tractor.context
async def bare_hub(ctx: tractor.Context, command: dict, event: dict) -> None:
    """A's service task: spawn B, relay commands from client sessions to it and its events
    back to the session that asked (the last ``s`` events of a step become statuses)."""
    async with tractor.open_nursery() as an:
        portal = await an.start_actor('load_bare_b', enable_modules=[__name__])
        try:
            async with portal.open_context(bare_venue, event=event) as (bctx, _), \
                    bctx.open_stream() as bstream:
                tx, rx = trio.open_memory_channel(math.inf)
                _sessions[-1] = tx  # sessions queue commands for B here
                await ctx.started(None)
                async with trio.open_nursery() as n:

                    async def to_b() -> None:
                        async for cmd in rx:
                            out = dict(command)
                            out.update(cmd)
                            await bstream.send(out)

                    n.start_soon(to_b)
                    async for ev in bstream:
                        if ev['i'] >= ev['n'] - ev['s']:
                            stx = _sessions.get(ev['sid'])
                            if stx is not None:
                                stx.send_nowait(ev)
        finally:
            with trio.CancelScope(shield=True):
                await an.cancel()


@tractor.context
async def bare_session(ctx: tractor.Context, sid: int, status: dict) -> None:
    """A's side of one client: each request ``{'seq', 'v', 'e', 's'}`` goes to B as a command
    (``v`` of them) whose ``e`` events yield ``s`` statuses, or (``v == 0``) is answered with
    ``s`` statuses directly."""
    tx, rx = trio.open_memory_channel(math.inf)
    _sessions[sid] = tx
    await ctx.started(None)
    try:
        async with ctx.open_stream() as stream, trio.open_nursery() as n:

            async def writer() -> None:
                async for ev in rx:
                    out = dict(status)
                    out['seq'] = ev['seq']
                    await stream.send(out)

            n.start_soon(writer)
            async for req in stream:
                if req['v']:
                    _sessions[-1].send_nowait({'sid': sid, 'seq': req['seq'], 'n': req['e'], 's': req['s']})
                else:
                    for _ in range(req['s']):
                        tx.send_nowait({'seq': req['seq']})
            n.cancel_scope.cancel()
    finally:
        _sessions.pop(sid, None)


async def run_bare(sid: int, hub: str, m: int, concurrency: int, request: dict, status: dict,
                   timeout: float = 60.0, rate: float = 0.0) -> dict[str, Any]:
    """One bare client: the same scenarios and concurrency, through A (``hub``) and B."""
    from bench import _load_actors as me

    tally = _Tally()
    waiters: dict[int, trio.MemorySendChannel] = {}
    seqs = iter(range(1 << 62))
    async with tractor.find_actor(hub) as portal:
        async with portal.open_context(me.bare_session, sid=sid, status=status) as (ctx, _), \
                ctx.open_stream() as stream:

            async def dispatch() -> None:
                async for msg in stream:
                    tally.statuses += 1
                    tx = waiters.get(msg['seq'])
                    if tx is not None:
                        tx.send_nowait(msg)

            async def one_order(i: int) -> None:
                kind = scenario_of(i)
                t0 = time.perf_counter_ns()
                try:
                    with trio.fail_after(timeout):
                        for (_, v, e, s) in BARE_STEPS[kind]:
                            seq = next(seqs)
                            tx, rx = trio.open_memory_channel(math.inf)
                            waiters[seq] = tx
                            out = dict(request)
                            out.update(seq=seq, v=v, e=e, s=s)
                            await stream.send(out)
                            for _ in range(s):
                                await rx.receive()
                            del waiters[seq]
                    tally.lat_ns.append(time.perf_counter_ns() - t0)
                    tally.by_kind.setdefault(kind, []).append(tally.lat_ns[-1])
                    tally.finals[f'{sid}-{i}'] = 1
                except trio.TooSlowError:
                    tally.errors.append(f'{sid}-{i}: timeout')

            async with trio.open_nursery() as n:
                n.start_soon(dispatch)
                wall, started = await _run_orders(m, concurrency, one_order, rate)
                n.cancel_scope.cancel()
            await ctx.cancel()
    return tally.result(wall, started)
