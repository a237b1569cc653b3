"""Symbols: the ``<symbol>.<broker>`` naming ("fqsn") and per-instrument trading info."""
from __future__ import annotations

import re
from decimal import Decimal
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field


class FqsnError(ValueError):
    """A symbol was not written ``<symbol>.<broker>`` (or has characters no venue uses)."""


#: A symbol key: what venues use (letters, digits and ``. _ - / : +``), at most 64 characters.
SYMBOL_RE = re.compile(r'^[a-z0-9][a-z0-9._\-/:+]{0,63}$')
#: A broker backend name: a Python identifier in lower case, at most 32 characters.
BROKER_RE = re.compile(r'^[a-z][a-z0-9_]{0,31}$')
MAX_FQSN_LEN = 100


def parse_fqsn(fqsn: str) -> tuple[str, str]:
    """Split ``btcusd.sim`` into ``('btcusd', 'sim')`` on the last dot.

    A missing broker suffix, or a name no venue could use (spaces, control characters, over
    64 characters), is an :class:`FqsnError`: it is refused before any feed is opened for it.
    """
    if not isinstance(fqsn, str):
        raise FqsnError(f'symbol must be a string like btcusd.sim, not {type(fqsn).__name__}')
    if len(fqsn) > MAX_FQSN_LEN:
        raise FqsnError(f'symbol is too long ({len(fqsn)} characters; at most {MAX_FQSN_LEN})')
    sym, dot, broker = fqsn.strip().lower().rpartition('.')
    if not dot or not sym or not broker:
        raise FqsnError(
            f'symbol {fqsn!r} has no broker suffix: write it as <symbol>.<broker>, e.g. btcusd.sim'
        )
    if not SYMBOL_RE.match(sym) or not BROKER_RE.match(broker):
        raise FqsnError(
            f'symbol {fqsn!r} is not a valid name: use letters, digits and . _ - / : + '
            '(at most 64 characters) then .<broker>'
        )
    return sym, broker


class Symbol(BaseModel):
    """What a client needs to price and size orders for one instrument."""

    model_config = ConfigDict(frozen=True)

    key: str
    broker: str
    tick_size: float = Field(gt=0)
    lot_size: float = Field(gt=0)
    currency: str = ''

    @property
    def fqsn(self) -> str:
        """The fully qualified name, ``<key>.<broker>``."""
        return f'{self.key}.{self.broker}'

    @property
    def tick_digits(self) -> int:
        """Decimal places of the tick size (for display and exact rounding)."""
        return tick_digits(self.tick_size)

    def round_price(self, price: float) -> float:
        """Snap a price to this symbol's tick grid."""
        return round_to_tick(price, self.tick_size)


@lru_cache(maxsize=1024)
def tick_digits(tick_size: float) -> int:
    """Number of decimals needed to write ``tick_size`` exactly (cached: a Decimal per call
    was ~1 % of emsd's time on submits; a venue has few distinct tick sizes)."""
    exp = Decimal(repr(tick_size)).normalize().as_tuple().exponent
    return max(0, -int(exp))


def round_to_tick(price: float, tick_size: float) -> float:
    """Round ``price`` to the nearest multiple of ``tick_size`` without float residue."""
    return round(round(price / tick_size) * tick_size, tick_digits(tick_size))
