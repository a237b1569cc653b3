# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
The sim backend's markets: one :class:`SimVenue` per ``brokerd.sim`` actor.

The quote feed and the simulated exchange must see the same prices, so both get the markets
from the venue owned by the running actor (:func:`current_venue`, kept on the actor with
:func:`piker_ems.service._state.owned`) rather than from a class attribute: a new actor starts
with fresh markets, and two venues built in one process (tests) are independent.
"""
from __future__ import annotations

from ...service._state import owned
from ._market import SimMarket, sim_config

__all__ = ['SimVenue', 'current_venue']

_KEY = 'piker_ems.brokers.sim.venue'


class SimVenue:
    """All simulated markets of one venue, created on first use per symbol."""

    def __init__(self) -> None:
        self.markets: dict[str, SimMarket] = {}

    def market(self, symbol: str) -> SimMarket:
        """The market for ``symbol``, created from the config on first use."""
        symbol = symbol.lower()
        market = self.markets.get(symbol)
        if market is None:
            market = self.markets[symbol] = SimMarket(symbol, sim_config(symbol))
        return market


def current_venue() -> SimVenue:
    """The venue of the running actor (``brokerd.sim``), created on first use."""
    return owned(_KEY, SimVenue)
