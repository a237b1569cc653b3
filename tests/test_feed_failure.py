"""A backend whose quote stream fails: subscribers get FeedLost (not a raw remote error), brokerd
survives, and a later subscriber gets a fresh upstream."""
from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from piker_ems.data import FeedLost, open_feed
from piker_ems.service import open_pikerd

from conftest import write_config

pytestmark = pytest.mark.trio


@asynccontextmanager
async def pumping(heartbeat_timeout: float, buffer: int):
    """The feed pump of broker ``sim`` running on an in-memory wire: yields the wire's send
    side (brokerd's end), the pump's link and the consumer's :class:`Feed`."""
    from piker_ems.data.feed import Feed, QuoteStream, _Link, _pump

    wire_tx, wire_rx = trio.open_memory_channel(10)
    tx, rx = trio.open_memory_channel(buffer)
    feed = Feed(symbols={}, first_quotes={}, stream=QuoteStream(rx))
    link = _Link(stream=wire_rx, firsts={})
    async with trio.open_nursery() as n:
        await n.start(_pump, 'sim', link, tx, feed, heartbeat_timeout)
        yield wire_tx, link, feed


async def test_backend_failure_is_feedlost_and_brokerd_survives(reg_addr, config_dir):
    # a per-symbol config that only fails when the market steps (volatility must be a number)
    write_config(config_dir, '[sim]\nrate = 50\n[sim.symbols.boom]\nvolatility = "x"\n')
    async with open_pikerd(reg_addr):
        with pytest.raises(FeedLost, match='brokerd.sim'):
            async with open_feed('boom.sim') as feed:
                with trio.fail_after(10):
                    async for _ in feed.stream:
                        pass
        async with open_feed('btcusd.sim') as feed:  # brokerd still serves other symbols
            with trio.fail_after(5):
                packet = await feed.stream.receive()
            assert 'btcusd.sim' in packet


async def test_a_malformed_feed_message_is_skipped_and_the_pump_carries_on():
    """The pump that drains brokerd's quote stream for a consumer (paperboi, emsd's dark
    scans, a chart) skips and counts what is not a feed message; the quotes after it still
    arrive and the feed is not lost (before, one such message ended the consumer's feed)."""
    async with pumping(heartbeat_timeout=30.0, buffer=10) as (wire_tx, link, feed):
        for bad in (['not', 'a', 'dict'], {'quotes': ['btcusd', 1.0]}, {'overrun': {}}):
            await wire_tx.send(bad)
        await wire_tx.send({'quotes': {'btcusd': {'last': 101.5}}})
        with trio.fail_after(5):
            assert await feed.stream.receive() == {'btcusd.sim': {'last': 101.5}}
        assert (dict(feed.malformed), link.lost, dict(feed.dropped)) == ({'sim': 3}, False, {})
        await wire_tx.aclose()  # brokerd closes: now the feed is lost, as before
        with trio.fail_after(5), pytest.raises(FeedLost):
            await feed.stream.receive()


async def test_a_silent_brokerd_is_a_lost_feed_and_quotes_keep_it_alive(autojump_clock):
    """The pump's silence deadline moves with every message: quotes closer together than the
    heartbeat window keep the feed up however long it runs; one window of silence loses it,
    with the reason said."""
    async with pumping(heartbeat_timeout=3.0, buffer=100) as (wire_tx, link, feed):
        for i in range(10):  # 20 s of quotes, each 2 s apart: longer than the window in all
            await trio.sleep(2.0)
            await wire_tx.send({'quotes': {'btcusd': {'last': 100.0 + i}}})
            with trio.fail_after(1):
                assert await feed.stream.receive() == {'btcusd.sim': {'last': 100.0 + i}}
        assert not link.lost
        t0 = trio.current_time()
        with trio.fail_after(10), pytest.raises(FeedLost, match='sent nothing for 3s'):
            await feed.stream.receive()
        assert link.lost and 3.0 <= trio.current_time() - t0 < 3.5
