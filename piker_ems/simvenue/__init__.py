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

It depends only on the protocol (:mod:`piker_ems.clearing._messages`), never on emsd; import
the submodules directly. The engines themselves are kept on the actor that runs them
(:func:`piker_ems.service._state.owned`), never in a singleton.
"""
