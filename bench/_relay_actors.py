"""Bare tractor actors used as same-run baselines by the piker_ems benchmarks.

They do no work beyond moving prebuilt dicts (shaped like the real protocol messages, passed in
by the caller so the wire sizes match): no validation, no state, no routing logic.

- :func:`relay_a` ("emsd" stand-in): ``hops=3`` spawns :func:`echo_b` in a child actor
  ("paperboi" stand-in, a child of A like paperboi is of emsd) and relays
  client -> A -> B -> A -> client; ``hops=1`` answers the client itself (client -> A -> client).
  Like emsd, A reads each side in its own task.
- :func:`hub_session` (fan-out "emsd" stand-in): one ``owner`` session whose every message is
  answered to the owner and copied to every connected ``watcher`` session, each drained by its
  own writer task (the same queue-per-client shape emsd uses).

Enable as ``bench._relay_actors``.
"""
from __future__ import annotations

import math

import tractor
import trio


@tractor.context
async def echo_b(ctx: tractor.Context, reply: dict) -> None:
    """B: answer every message with ``reply``."""
    await ctx.started(None)
    async with ctx.open_stream() as stream:
        async for _ in stream:
            await stream.send(reply)


@tractor.context
async def relay_a(ctx: tractor.Context, to_b: dict, to_client: dict, reply_b: dict, hops: int = 3) -> None:
    """A: relay client messages to B and B's answers back (``hops=3``), or echo (``hops=1``)."""
    if hops == 1:
        await ctx.started(None)
        async with ctx.open_stream() as stream:
            async for _ in stream:
                await stream.send(to_client)
        return

    async with tractor.open_nursery() as an:
        portal = await an.start_actor('bench_relay_b', enable_modules=[__name__])
        try:
            async with portal.open_context(echo_b, reply=reply_b) as (bctx, _):
                async with bctx.open_stream() as bstream:
                    await ctx.started(None)
                    async with ctx.open_stream() as cstream, trio.open_nursery() as n:

                        async def upstream() -> None:
                            async for _ in cstream:
                                await bstream.send(to_b)
                            n.cancel_scope.cancel()  # the client left

                        n.start_soon(upstream)
                        async for _ in bstream:
                            await cstream.send(to_client)
        finally:
            with trio.CancelScope(shield=True):
                await an.cancel()


# --- fan-out hub ---------------------------------------------------------------------------

_watchers: set[trio.MemorySendChannel] = set()


@tractor.context
async def hub_session(ctx: tractor.Context, role: str, reply: dict) -> None:
    """One client of the hub: ``owner`` (sends requests) or ``watcher`` (receives copies).

    Each request dict ``{'oid', 'action', ...}`` becomes ``reply`` with that oid and a ``resp``
    (``dark_cancelled`` for ``action == 'cancel'``, else ``dark_submitted``), pushed to the
    owner and to every watcher.
    """
    tx, rx = trio.open_memory_channel(math.inf)
    await ctx.started(None)
    async with ctx.open_stream() as stream, trio.open_nursery() as n:

        async def writer() -> None:
            async for msg in rx:
                await stream.send(msg)

        n.start_soon(writer)
        if role == 'watcher':
            _watchers.add(tx)
            try:
                async for _ in stream:  # ends when the watcher closes its side
                    pass
            finally:
                _watchers.discard(tx)
        else:
            async for msg in stream:
                out = dict(reply)
                out['oid'] = msg['oid']
                out['resp'] = 'dark_cancelled' if msg.get('action') == 'cancel' else 'dark_submitted'
                tx.send_nowait(out)
                for w in _watchers:
                    w.send_nowait(out)
        n.cancel_scope.cancel()
