"""``sim``: the embedded default market, for any symbol name (``btcusd.sim``, ``es.sim`` ...).

A seeded random walk with a whole-tick spread, bid/ask updates and trade prints (see
:mod:`._market`). Rate, seed, tick size and more are set in the ``[sim]`` section of
``piker_ems.toml`` (and per symbol under ``[sim.symbols.<name>]``)::

    [sim]
    seed = 7
    rate = 50          # updates per second
    tick_size = 0.25

The markets live in a :class:`SimVenue` owned by the ``brokerd.sim`` actor (see :mod:`._venue`),
so the quote feed and the simulated exchange (the live ``trades_dialogue``, see
:mod:`._exchange`) see the same prices. Exchange latency is set in the same section::

    [sim]
    ack_delay = 0.3    # seconds before a new order is acked (default 0)
    fill_delay = 0.0   # seconds before an execution is reported (default 0)
    fee_bps = 0        # fee per fill, basis points of its notional (default 0)
    persist = true     # journal to <config dir>/state/sim-exchange.sqlite (default true)
    journal_sync = "normal"   # SQLite synchronous level; "full" also survives power loss

Test hooks (``set_price``, ``exchange_stats``: RPCs that move the market or read the exchange's
insides) are refused unless enabled, and then only for an ``admin`` participant::

    [sim]
    test_hooks = true  # tests only: never on a cluster others can reach
"""
from __future__ import annotations

import math
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import tractor
import trio

from ...log import get_logger
from ...service._auth import guarded
from ...symbols import Symbol
from ._market import SimConfig, SimMarket, sim_config
from ._venue import SimVenue, current_venue

name = 'sim'
log = get_logger(__name__)

__all__ = [
    'SimConfig', 'SimMarket', 'SimVenue', 'backfill', 'current_venue', 'exchange_stats', 'get_symbol_info', 'open_quote_stream',
    'set_price', 'trades_dialogue',
]


async def get_symbol_info(symbol: str) -> Symbol:
    """Every symbol name exists in the sim market; its tick and lot come from the config."""
    actor = tractor.current_actor(err_on_no_runtime=False)
    # outside an actor (a plain import) the config alone answers: no venue to own markets
    cfg = current_venue().market(symbol).config if actor is not None else sim_config(symbol.lower())
    return Symbol(key=symbol.lower(), broker=name, tick_size=cfg.tick_size, lot_size=cfg.lot_size, currency='usd')


@asynccontextmanager
async def open_quote_stream(symbol: str) -> AsyncIterator[tuple[dict, AsyncIterator[dict]]]:
    """Yield the current quote and an endless stream of updates at the configured rate."""
    market = current_venue().market(symbol)
    period = 1.0 / market.config.rate

    async def updates() -> AsyncIterator[dict]:
        tx, rx = trio.open_memory_channel[dict](math.inf)
        market.injected.add(tx)
        try:
            deadline = trio.current_time()
            while True:
                injected = None
                with trio.move_on_at(deadline + period):  # a set_price() quote goes out at once
                    injected = await rx.receive()
                if injected is not None:
                    yield injected
                    continue
                deadline += period
                now = trio.current_time()
                if deadline < now - 1.0:  # fell far behind (suspended?): don't burst to catch up
                    deadline = now
                yield market.step()
        finally:
            market.injected.discard(tx)

    yield market.quote(), updates()


async def backfill(symbol: str, period_s: float, count: int, end: float | None = None) -> list[tuple]:
    """Past bars for the chart: a deterministic walk ending at the market's current price."""
    import time

    return current_venue().market(symbol).history(period_s, count, end or time.time())


def _test_hook(name: str) -> None:
    """Refuse (and log) a test-only RPC unless ``[sim] test_hooks = true`` is configured."""
    from ...config import load_config
    from ...service._auth import Refused

    if not (load_config().get('sim') or {}).get('test_hooks', False):
        log.warning('refused %s: sim test hooks are off ([sim] test_hooks = true enables them)', name)
        raise Refused(f'{name} is a test hook, off unless [sim] test_hooks = true')


@guarded('admin')
async def set_price(symbol: str, price: float, spread_ticks: int = 1) -> dict:
    """RPC (on ``brokerd.sim``): print a trade at ``price``; for tests and demos.

    A test hook: only with ``[sim] test_hooks = true``, and only for an admin."""
    _test_hook('set_price')
    return current_venue().market(symbol).set_price(price, spread_ticks)


# The RPC endpoints are defined here (not in ._exchange) because tractor resolves an endpoint by
# its function's module, and brokerd enables this module, not its submodules.

@guarded('admin')
@tractor.context
async def trades_dialogue(
    ctx: tractor.Context, loglevel: str | None = None, since_ns: int | None = None, **kw: Any,
) -> None:
    """The simulated exchange's live order dialogue (the contract of ``docs/backends.md``;
    see :mod:`._exchange`): ``started()`` is a ``VenueSnapshot`` dict."""
    from ._exchange import serve_trades_dialogue

    await serve_trades_dialogue(ctx, loglevel=loglevel, since_ns=since_ns, **kw)


@guarded('admin')
async def exchange_stats() -> dict:
    """RPC (on ``brokerd.sim``): the exchange's counters, open orders and received requests.

    A test hook: only with ``[sim] test_hooks = true``, and only for an admin."""
    _test_hook('exchange_stats')
    from ._exchange import exchange_stats as stats

    return stats()
