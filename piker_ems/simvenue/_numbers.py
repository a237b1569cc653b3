# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
Numeric rules of a simulated venue: float tolerance, residue cleanup and the bounds a request
must respect.

They live apart so the book, the positions and the clearing core apply the *same* rule (a
price the core accepts is one the book can index and the positions can book). The caps are the
protocol's own (:data:`piker_ems.clearing._messages.MAX_PRICE` / ``MAX_SIZE``): a venue checks
them again because its core is also driven directly (tests, other engines), not only through
the validated wire format.
"""
from __future__ import annotations

import math
from typing import Any

from ..clearing._messages import MAX_PRICE, MAX_SIZE

__all__ = ['MAX_PRICE', 'MAX_SIZE', 'clean', 'clean_pnl', 'eps', 'is_price', 'request_problem']


def eps(price: float) -> float:
    """Comparison tolerance: prices are on a tick grid but travel as floats."""
    return 1e-9 * max(1.0, abs(price))


def clean(x: float) -> float:
    """Drop float residue (``0.1 + 0.2 - 0.3``) so flat is exactly 0 and sizes stay readable."""
    r = round(x, 10)
    return 0.0 if r == 0 else r


def clean_pnl(pnl: float, size: float) -> float:
    """A PnL of ``size`` against an average price: drop the residue it inherits from the
    average (kept to 10 decimals by :func:`clean`, so off by up to 5e-11, which ``size``
    multiplies: 50 lots show ``1.490000005`` for 1.49).

    Rounded to ``9 - ceil(log10 |size|)`` decimals (9 up to a size of 1), where that error is
    10x below half a unit; prices on a tick grid times sizes in lots stay exact."""
    mag = abs(size)
    digits = 9 - (math.ceil(math.log10(mag)) if mag > 1 else 0) if math.isfinite(mag) else 0
    r = round(pnl, digits)
    return 0.0 if r == 0 else r


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def is_price(x: Any) -> bool:
    """A usable market price: a finite number > 0 (quotes are not capped, requests are)."""
    return _is_number(x) and math.isfinite(x) and x > 0


def request_problem(price: Any, size: Any) -> str | None:
    """Why a request's price/size cannot be traded (``None`` when they can).

    Both must be finite numbers, > 0, and at most :data:`MAX_PRICE` / :data:`MAX_SIZE`.
    """
    for name, value, cap in (('price', price, MAX_PRICE), ('size', size, MAX_SIZE)):
        if not _is_number(value) or not math.isfinite(value):
            return f'{name} {value!r} is not a finite number'
        if value <= 0:
            return f'{name} {value!r} must be > 0'
        if value > cap:
            return f'{name} {value!r} is above the maximum {cap:g}'
    return None
