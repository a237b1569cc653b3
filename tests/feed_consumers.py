"""Feed consumer actors for the multi-actor feed tests (imported by spawned sub-actors).

Each consumer opens ``open_feed`` in its own actor and answers the test's commands over a
two-way stream:

- ``'stats'`` -> ``{'packets', 'updates', 'dropped'}`` (updates = bid ticks seen: one per
  upstream step, whatever the batching);
- closing the stream -> the consumer leaves its feed and returns its final stats.
"""
from __future__ import annotations

import tractor
import trio

from piker_ems.data import open_feed


@tractor.context
async def consume(ctx: tractor.Context, fqsn: str, read: bool = True, bufsize: int = 1024) -> dict:
    stats = {'packets': 0, 'updates': 0, 'dropped': 0}
    async with open_feed(fqsn, bufsize=bufsize) as feed:

        async def reader() -> None:
            async for packet in feed.stream:
                stats['packets'] += 1
                for quote in packet.values():
                    stats['updates'] += sum(1 for t in quote['ticks'] if t['type'] == 'bid')

        async with trio.open_nursery() as n:
            if read:
                n.start_soon(reader)
            await ctx.started(feed.symbols[fqsn].model_dump())
            async with ctx.open_stream() as stream:
                async for cmd in stream:
                    if cmd == 'stats':
                        stats['dropped'] = sum(feed.dropped.values())
                        await stream.send(dict(stats))
            n.cancel_scope.cancel()
        stats['dropped'] = sum(feed.dropped.values())
    return stats
