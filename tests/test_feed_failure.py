"""A backend whose quote stream fails: subscribers get FeedLost (not a raw remote error), brokerd
survives, and a later subscriber gets a fresh upstream."""
from __future__ import annotations

import pytest
import trio

from piker_ems.data import FeedLost, open_feed
from piker_ems.service import open_pikerd

from conftest import write_config

pytestmark = pytest.mark.trio


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
