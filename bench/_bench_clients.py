"""Client-side actors for ``bench_multiclient.py`` (enable as ``bench._bench_clients``).

Each ``@tractor.context`` here runs inside a client actor and is driven by the benchmark's root
over a command stream. Times are ``time.time_ns()`` (CLOCK_REALTIME, comparable across the
processes of one machine). Two flavours of every role:

- ``ems_*``: real piker_ems clients (``open_ems``), talking to emsd;
- ``bare_*``: bare tractor clients of ``bench._relay_actors.hub_session`` (the baseline), one
  connection each, sending the same-shaped dicts and recording the same things.
"""
from __future__ import annotations

import gc
import time
import uuid
from contextlib import AsyncExitStack
from typing import Awaitable, Callable

import tractor
import trio


class _GcPauses:
    """Record this process's cyclic-GC pauses (a diagnostic for latency tails)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._t0 = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict) -> None:
        if phase == 'start':
            self._t0 = time.perf_counter()
        else:
            self.pauses.append((info['generation'], time.perf_counter() - self._t0))

    def take(self) -> dict:
        """{'n2': gen-2 collections, 'max_ms': longest pause of any gen, 'sum_ms': total}"""
        p, self.pauses = self.pauses, []
        return {
            'n2': sum(1 for g, _ in p if g == 2),
            'max_ms': 1e3 * max((d for _, d in p), default=0.0),
            'sum_ms': 1e3 * sum(d for _, d in p),
        }


_gc: _GcPauses | None = None


def _gc_probe() -> _GcPauses:
    """This actor's GC probe, installed on first use (never in a process that only imports us)."""
    global _gc
    if _gc is None:
        _gc = _GcPauses()
    return _gc


# --- owners ---------------------------------------------------------------------------------

async def _burst(send_order: Callable[[], Awaitable[str]], send_cancel: Callable[[str], Awaitable[None]],
                 n: int, interval: float) -> dict[str, list[int]]:
    """``interval == 0``: n orders back to back, then n cancels. Else order, cancel, order ...
    with ``interval`` seconds after each send. Returns {oid: [t_order_ns, t_cancel_ns]}."""
    sends: dict[str, list[int]] = {}
    now = time.time_ns
    if interval <= 0:
        for _ in range(n):
            t = now()
            oid = await send_order()
            sends[oid] = [t, 0]
        for oid, ts in sends.items():
            ts[1] = now()
            await send_cancel(oid)
        return sends
    for _ in range(n):
        t = now()
        oid = await send_order()
        sends[oid] = [t, 0]
        await trio.sleep(interval)
        sends[oid][1] = now()
        await send_cancel(oid)
        await trio.sleep(interval)
    return sends


async def _serve_owner(ctx: tractor.Context, send_order, send_cancel, own_done: Callable[[int], Awaitable[None]]) -> None:
    probe = _gc_probe()
    await ctx.started(None)
    async with ctx.open_stream() as cmds:
        async for cmd in cmds:
            t0 = time.time_ns()
            sends = await _burst(send_order, send_cancel, cmd['n'], cmd.get('interval', 0.0))
            t_sent = time.time_ns()
            with trio.fail_after(cmd.get('timeout', 30)):
                await own_done(2 * cmd['n'])
            await cmds.send({'sends': sends, 't0': t0, 't_sent': t_sent,
                             't_own_done': time.time_ns(), 'gc': probe.take()})


@tractor.context
async def ems_owner(ctx: tractor.Context, fqsn: str, name: str, price: float) -> None:
    """A piker_ems client placing dark orders + cancels on command."""
    from piker_ems.clearing import Status, open_ems

    async with open_ems(fqsn, mode='dark', name=name) as (book, trades, _):
        async def send_order() -> str:
            return book.send('buy', price, 1.0)

        async def send_cancel(oid: str) -> None:
            book.cancel(oid)

        async def own_done(k: int) -> None:
            got = 0
            while got < k:
                msg = await trades.receive()
                if isinstance(msg, Status):
                    if msg.resp not in ('dark_submitted', 'dark_cancelled'):
                        raise RuntimeError(f'owner got {msg.resp} for {msg.oid}: {msg.reason}')
                    got += 1

        await _serve_owner(ctx, send_order, send_cancel, own_done)


@tractor.context
async def bare_owner(ctx: tractor.Context, order: dict, cancel: dict, reply: dict) -> None:
    """Baseline owner: the same dict shapes straight over a tractor stream to the hub, which
    answers with ``reply`` (a Status-shaped dict)."""
    from bench import _relay_actors as relay

    async with (
        tractor.find_actor('bench_hub') as portal,
        portal.open_context(relay.hub_session, role='owner', reply=reply) as (hctx, _),
        hctx.open_stream() as stream,
    ):
        async def send_order() -> str:
            oid = uuid.uuid4().hex
            await stream.send({**order, 'oid': oid})
            return oid

        async def send_cancel(oid: str) -> None:
            await stream.send({**cancel, 'oid': oid})

        async def own_done(k: int) -> None:
            for _ in range(k):
                await stream.receive()

        await _serve_owner(ctx, send_order, send_cancel, own_done)


# --- watchers ---------------------------------------------------------------------------------

class _Recorder:
    """Per-watcher receive log ``(oid, resp, t_ns)`` plus a wake-up for the collector."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, int]] = []
        self.changed = trio.Event()

    def add(self, oid: str, resp: str) -> None:
        self.rows.append((oid, resp, time.time_ns()))  # tuples of atoms: untracked by the GC
        if len(self.rows) % 64 == 0:
            self.changed.set()
            self.changed = trio.Event()


class _IpcCount:
    """IPC messages (a batch list counts as one) received by this actor's watchers."""

    n = 0


def _count_ems_ipc() -> None:
    """Count the IPC messages piker_ems watchers receive here: wrap the client reader's
    ``unbatch`` (called once per received item) in this client actor only."""
    from piker_ems.clearing import _client

    if getattr(_client.unbatch, 'counted', False):
        return
    inner = _client.unbatch

    def unbatch(raw):
        _IpcCount.n += 1
        return inner(raw)

    unbatch.counted = True
    _client.unbatch = unbatch


async def _serve_watchers(ctx: tractor.Context, recs: list[_Recorder]) -> None:
    """Answer each ``{'expect': k}`` with every watcher's rows once all have k (or timeout),
    and the IPC messages they received meanwhile (heartbeats excluded)."""
    probe = _gc_probe()
    await ctx.started(None)
    async with ctx.open_stream() as cmds:
        async for cmd in cmds:
            probe.take()
            k = cmd['expect']
            with trio.move_on_after(cmd.get('timeout', 30)):
                while any(len(r.rows) < k for r in recs):
                    with trio.move_on_after(0.01):
                        await min(recs, key=lambda r: len(r.rows)).changed.wait()
            ipc, _IpcCount.n = _IpcCount.n, 0  # (the warm-up phase starts the count)
            await cmds.send({'rows': [r.rows for r in recs], 'gc': probe.take(), 'ipc': ipc})
            for r in recs:
                r.rows = []


@tractor.context
async def ems_watchers(ctx: tractor.Context, fqsn: str, names: list[str], owner: str) -> None:
    """Several piker_ems sessions (one connection each) watching ``fqsn``; record ``owner``'s
    dark statuses as they arrive."""
    from piker_ems.clearing import Status, open_ems

    recs = [_Recorder() for _ in names]
    _count_ems_ipc()

    async def reader(trades, rec: _Recorder) -> None:
        async for msg in trades:
            if isinstance(msg, Status) and msg.owner == owner:
                rec.add(msg.oid, msg.resp)

    async with AsyncExitStack() as stack:
        sessions = [
            (await stack.enter_async_context(
                open_ems(fqsn, mode='dark', name=name, watch='symbol')))[1]
            for name in names
        ]
        async with trio.open_nursery() as n:
            for trades, rec in zip(sessions, recs):
                n.start_soon(reader, trades, rec)
            await _serve_watchers(ctx, recs)
            n.cancel_scope.cancel()


@tractor.context
async def bare_watchers(ctx: tractor.Context, count: int) -> None:
    """Baseline watchers: ``count`` hub sessions, one connection each."""
    from bench import _relay_actors as relay

    recs = [_Recorder() for _ in range(count)]

    async def reader(stream, rec: _Recorder) -> None:
        async for msg in stream:
            _IpcCount.n += 1
            rec.add(msg['oid'], msg['resp'])

    async with AsyncExitStack() as stack:
        streams = []
        for _ in recs:
            portal = await stack.enter_async_context(tractor.find_actor('bench_hub'))
            hctx, _ = await stack.enter_async_context(
                portal.open_context(relay.hub_session, role='watcher', reply={}))
            streams.append(await stack.enter_async_context(hctx.open_stream()))
        async with trio.open_nursery() as n:
            for stream, rec in zip(streams, recs):
                n.start_soon(reader, stream, rec)
            await _serve_watchers(ctx, recs)
            n.cancel_scope.cancel()


# --- reconnect snapshot ----------------------------------------------------------------------

@tractor.context
async def ems_reconnect(ctx: tractor.Context, fqsn: str, n_orders: int, reps: int, price: float) -> dict:
    """Place ``n_orders`` dark orders as ``owner`` and leave; then time reconnects.

    Each rep times ``open_ems(name='nobody')`` (0 open orders: the baseline) and
    ``open_ems(name='owner')`` from the call until the context yields with the start-up
    snapshot (``book.open_orders``); the first rep is a warm-up. Returns (as the context
    result) ns lists of the open times and of the (untimed) close times.
    """
    from piker_ems.clearing import Status, open_ems

    async with open_ems(fqsn, mode='dark', name='owner') as (book, trades, _):
        oids = {book.send('buy', round(price - i * 0.01, 2), 1.0) for i in range(n_orders)}
        with trio.fail_after(30):
            acked = 0
            while acked < n_orders:
                msg = await trades.receive()
                if isinstance(msg, Status) and msg.oid in oids:
                    if msg.resp != 'dark_submitted':
                        raise RuntimeError(f'{msg.oid}: {msg.resp} {msg.reason}')
                    acked += 1
    await ctx.started(None)

    out: dict[str, list[int]] = {'base': [], 'owner': [], 'base_close': [], 'owner_close': []}
    clock = time.perf_counter_ns
    for rep in range(reps + 1):
        for key, name, expect in (('base', 'nobody', 0), ('owner', 'owner', n_orders)):
            with trio.fail_after(30):
                t0 = clock()
                async with open_ems(fqsn, mode='dark', name=name) as (book, _, _):
                    t1 = clock()
                    got = len(book.open_orders)
                    if got != expect:
                        raise RuntimeError(f'{name}: {got} open orders in the snapshot, expected {expect}')
                t2 = clock()
            if rep:
                out[key].append(t1 - t0)
                out[f'{key}_close'].append(t2 - t1)
    return out
