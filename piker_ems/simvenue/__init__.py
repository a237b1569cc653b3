# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
The simulated-venue core shared by every simulated clearing engine: the paper engine
(``paperboi.<broker>``, :mod:`piker_ems.clearing._paper`) and the sim backend's exchange
(``brokerd.sim``, :mod:`piker_ems.brokers.sim._exchange`). Both speak the ``trades_dialogue``
contract (SPEC §4, §6), so what decides *what* happens lives here once, one concern per module:

- :mod:`._clock`: the injected clock (epoch ns) and a :class:`FakeClock` for tests;
- :mod:`._numbers`: float tolerance, residue cleanup, request bounds;
- :mod:`._book`: resting limit orders, price-sorted per (symbol, side);
- :mod:`._positions`: size, average price and realized PnL per (account, symbol);
- :mod:`._core`: matching requests and quotes against the book -> executions and messages;
- :mod:`._dialogue`: the trio ``trades_dialogue`` engine (acks, statuses, fills, positions,
  heartbeats), one error boundary per request and per execution;
- :mod:`._owned`: venue state kept on the actor that runs it (no singletons).

It depends only on the protocol (:mod:`piker_ems.clearing._messages`), never on emsd.
Importing the package itself is cheap (``brokers/sim`` needs only :mod:`._owned`): the names
below are loaded from their submodule on first access. Code inside ``piker_ems`` imports the
submodules directly.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule defining it
_EXPORTS: dict[str, str] = {
    'ALREADY_CANCELLED': '_core',
    'ALREADY_FILLED': '_core',
    'ALREADY_REJECTED': '_core',
    'UNKNOWN_ORDER': '_core',
    'ClearingCore': '_core',
    'Execution': '_core',
    'Clock': '_clock',
    'FakeClock': '_clock',
    'system_clock': '_clock',
    'Dialogue': '_dialogue',
    'DialogueEngine': '_dialogue',
    'OrderBook': '_book',
    'RestingOrder': '_book',
    'crosses': '_book',
    'Position': '_positions',
    'PositionBook': '_positions',
    'PositionError': '_positions',
    'actor_state': '_owned',
    'owned': '_owned',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'{__name__}.{module}'), name)
    globals()[name] = value
    return value
