"""Helpers for EMS integration tests: moving the sim market and reading service stats."""
from __future__ import annotations

import trio

from piker_ems.service._auth import call
from piker_ems.clearing import Status
from piker_ems.data import open_feed
from piker_ems.service import find_service

SIM_CALM = """
[sim]
seed = 3
rate = 20
volatility = 0.3
tick_size = 0.01
test_hooks = true
"""


async def last_price(fqsn: str = 'btcusd.sim') -> float:
    """The current last price of ``fqsn`` (from a short-lived feed)."""
    async with open_feed(fqsn) as feed:
        return feed.first_quotes[fqsn]['last']


async def set_price(symbol: str, price: float) -> dict:
    """Print a trade at ``price`` in brokerd.sim's market for ``symbol``."""
    async with find_service('brokerd.sim') as portal:
        assert portal is not None, 'brokerd.sim is not running'
        return await call(portal, 'piker_ems.brokers.sim', 'set_price', symbol=symbol, price=price)


async def rpc(service: str, ns: str, fn: str, **kwargs):
    """Call an RPC on a named service."""
    async with find_service(service) as portal:
        assert portal is not None, f'{service} is not running'
        return await call(portal, ns, fn, **kwargs)


async def ems_stats() -> dict:
    return await rpc('emsd', 'piker_ems.clearing._ems', 'ems_stats')


async def next_status(trades, oid: str | None = None, timeout: float = 10.0) -> Status:
    """The next Status (for ``oid`` if given), skipping positions; bounded in time."""
    with trio.fail_after(timeout):
        async for msg in trades:
            if isinstance(msg, Status) and (oid is None or msg.oid == oid):
                return msg
    raise AssertionError('trades stream ended')


async def collect_until(trades, final: set[str], oid: str | None = None, timeout: float = 10.0) -> list[Status]:
    """Statuses (for ``oid``) up to and including the first whose resp is in ``final``."""
    out = []
    with trio.fail_after(timeout):
        while True:
            st = await next_status(trades, oid, timeout)
            out.append(st)
            if st.resp in final:
                return out
