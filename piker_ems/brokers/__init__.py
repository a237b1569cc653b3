"""Broker backends.

A backend is a module ``piker_ems.brokers.<name>`` providing:

``name: str``
    The broker name (the fqsn suffix).
``async def get_symbol_info(symbol: str) -> Symbol``
    Trading info for one broker-local symbol key (at least ``tick_size`` and ``lot_size``).
    Raise :class:`~piker_ems.brokers.SymbolNotFound` for an unknown symbol.
``open_quote_stream(symbol: str) -> AsyncContextManager[tuple[dict, AsyncIterator[dict]]]``
    Run inside ``brokerd.<name>``: yields ``(first_quote, quotes)`` where each quote is a dict
    with ``symbol``, ``last``, ``bid``, ``ask``, ``bsize``, ``asize``, ``size``, ``volume``,
    ``time`` and ``ticks``: a list of ``{'type': 'bid'|'ask'|'trade'|'last', 'price', 'size'}``
    in arrival order. brokerd runs one such stream per symbol and fans it out.
``async def backfill(symbol, period_s, count, end=None) -> list[tuple]`` (optional)
    Up to ``count`` past bars ``(time, open, high, low, close, volume)`` of ``period_s``
    seconds ending before ``end`` (default: now), oldest first, so a chart opens with history.
``trades_dialogue`` (optional)
    A ``@tractor.context`` endpoint for live order control (SPEC §5). Without it the backend is
    always traded through the paper engine. It must send ``{'name': 'heartbeat'}`` whenever it
    has been idle for 1 s (``piker_ems.service._ipc.send_with_heartbeats`` does it): emsd
    declares a dialogue silent for 3 s lost and reports its working orders to their owners.

:func:`get_brokermod` loads a backend by name and fails with a readable
:class:`NoBrokerBackend` error listing what exists.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from types import ModuleType


class NoBrokerBackend(LookupError):
    """No backend module exists for the requested broker name."""

    def __init__(self, name: str) -> None:
        self.broker = name
        super().__init__(
            f'no broker backend named {name!r}; available: {", ".join(available_backends())}'
        )

    def __str__(self) -> str:  # LookupError would repr() the message
        return self.args[0]


class SymbolNotFound(LookupError):
    """A backend does not know the requested symbol."""

    def __str__(self) -> str:
        return self.args[0] if self.args else 'unknown symbol'


@functools.cache
def available_backends() -> list[str]:
    """Names of the installed backend modules (scanned once per process)."""
    return sorted(
        m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith('_')
    )


@functools.cache
def get_brokermod(name: str) -> ModuleType:
    """Import and return the backend module for ``name``, or raise :class:`NoBrokerBackend`.

    Cached: emsd calls this on every order.
    """
    if not name or not name.isidentifier() or name.startswith('_') or name not in available_backends():
        raise NoBrokerBackend(name)
    return importlib.import_module(f'{__name__}.{name}')
