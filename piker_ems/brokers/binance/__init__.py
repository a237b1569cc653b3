# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""``binance``: Binance **spot** through ccxt (``btcusdt.binance``); see ``docs/binance.md``.

Symbols are Binance's spot symbol ids in lower case (``btcusdt``, ``ethbtc``). Tick, lot and
min notional come from the venue's ``exchangeInfo``; quotes from its ``bookTicker`` and
``trade`` websockets; history from ``klines``. Live trading (limit orders: new, cancel, modify
by cancel-replace) needs keys in ``[binance]`` (see :mod:`._config`); without them quotes and
charts work and orders go to the paper engine (account ``paper``), while a live account is
refused with one line.

This module stays light: ccxt (hundreds of modules) is only imported inside ``brokerd.binance``
when a feed or dialogue starts, never by emsd or a CLI that merely looks the backend up.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import tractor

from ...log import get_logger, setup_console
from ...service._auth import guarded
from ...symbols import Symbol

name = 'binance'
log = get_logger(__name__)

__all__ = ['backfill', 'get_symbol_info', 'open_quote_stream', 'trades_dialogue']

#: The live account's name (``piker order ... --account binance``).
LIVE_ACCOUNT = 'binance'


def _venue_state():
    from ...service._state import owned
    from ._client import _KEY, BinanceVenue
    from ._config import load_settings

    return owned(_KEY, lambda: BinanceVenue(load_settings()))


async def get_symbol_info(symbol: str) -> Symbol:
    """Tick and lot of a spot market (``exchangeInfo`` is loaded once per brokerd)."""
    from ._client import open_venue

    venue = _venue_state()
    if not venue.markets:
        async with open_venue() as venue:
            return venue.symbol_info(symbol)
    return venue.symbol_info(symbol)


@asynccontextmanager
async def open_quote_stream(symbol: str) -> AsyncIterator[tuple[dict, AsyncIterator[dict]]]:
    """The venue's L1 (book ticker) and trade prints as our quote dicts."""
    from ._client import open_venue

    async with open_venue() as venue, venue.quotes(symbol) as (first, quotes):
        yield first, quotes


async def backfill(symbol: str, period_s: float, count: int, end: float | None = None) -> list[tuple]:
    """Past bars from the venue's klines (aggregated to ``period_s``)."""
    from ._client import open_venue

    async with open_venue() as venue:
        return await venue.history(symbol, period_s, count, end)


# RPC endpoints live here: tractor resolves an endpoint by its function's module.

@guarded('admin')
@tractor.context
async def trades_dialogue(
    ctx: tractor.Context, loglevel: str | None = None, since_ns: int | None = None, **kw: Any,
) -> None:
    """Live spot trading on Binance (``started()`` is a ``VenueSnapshot``); keyless: refusals."""
    from ...config import load_config
    from ._client import open_venue
    from ._config import load_settings
    from ._trading import serve_keyless, serve_live

    setup_console(loglevel, process_name='brokerd.binance')
    settings = load_settings()
    if not settings.has_keys:
        log.warning('binance: live dialogue without API keys: every order is refused')
        await serve_keyless(ctx)
        return
    account = str((load_config().get('binance') or {}).get('account', LIVE_ACCOUNT))
    async with open_venue() as venue:
        await serve_live(ctx, venue, since_ns, account)
