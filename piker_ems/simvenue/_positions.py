# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
Positions per ``(account, symbol)``: signed size, average entry price, realized PnL and fees.

``realized_pnl`` is gross (price differences only); ``fees`` is the cumulative fee paid on the
position's fills, so the net realized result is ``realized_pnl - fees``.

An execution is booked all-or-nothing: :meth:`Position.after` computes the new position on a
copy and refuses (:class:`PositionError`) one that is not finite or otherwise invalid, so a
single absurd execution can never poison the position every other order of that account and
symbol is booked against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ._book import Action
from ._numbers import clean, clean_pnl

__all__ = ['Position', 'PositionBook', 'PositionError']


class PositionError(ValueError):
    """An execution would leave a position invalid (non-finite size, price or PnL)."""


@dataclass
class Position:
    """A signed position (negative = short) with its average entry price (0 when flat) and the
    PnL realized by reducing it (in price units times size), gross of ``fees`` (cumulative)."""

    account: str
    symbol: str
    size: float = 0.0
    avg_price: float = 0.0
    realized_pnl: float = 0.0
    fees: float = 0.0

    def after(self, action: Action, size: float, price: float, fee: float = 0.0) -> 'Position':
        """The position after one execution, on a copy; raises :class:`PositionError` if the
        execution itself or the result is invalid.

        Adding in the position's direction moves the average to the size-weighted mean;
        reducing keeps it and realizes PnL on the reduced part; crossing through zero realizes
        the whole old position and restarts the average at the fill price; flat is 0/0.
        """
        if not (math.isfinite(size) and size > 0 and math.isfinite(price) and price > 0):
            raise PositionError(f'invalid execution: size {size!r} at price {price!r}')
        if not math.isfinite(fee):
            raise PositionError(f'invalid execution: fee {fee!r}')
        qty = size if action == 'buy' else -size
        old, avg, pnl = self.size, self.avg_price, self.realized_pnl
        new = clean(old + qty)
        if old != 0 and (old > 0) != (qty > 0):  # reducing (or crossing): realize the closed part
            closed = min(abs(qty), abs(old))
            pnl += clean_pnl(closed * (price - avg) * (1.0 if old > 0 else -1.0), closed)
        if new == 0:
            avg = 0.0
        elif old == 0 or (old > 0) != (new > 0):
            avg = price  # opened, or crossed through zero
        elif (old > 0) == (qty > 0):
            avg = (abs(old) * avg + abs(qty) * price) / abs(new)
        # else: reduced without crossing: the average stays
        nxt = replace(self, size=new, avg_price=clean(avg), realized_pnl=clean(pnl), fees=clean(self.fees + fee))
        nxt.check()
        return nxt

    def check(self) -> None:
        """Raise :class:`PositionError` unless every field is finite and consistent."""
        values = (self.size, self.avg_price, self.realized_pnl, self.fees, self.size * self.avg_price)
        if not all(math.isfinite(v) for v in values):
            raise PositionError(
                f'position {self.account}/{self.symbol} would not be finite: size {self.size!r}, '
                f'avg_price {self.avg_price!r}, realized_pnl {self.realized_pnl!r}'
            )
        if self.avg_price < 0 or (self.size != 0 and self.avg_price == 0):
            raise PositionError(f'position {self.account}/{self.symbol}: bad avg_price {self.avg_price!r}')

    def apply(self, action: Action, size: float, price: float, fee: float = 0.0) -> None:
        """Book one execution in place (unchanged if it raises :class:`PositionError`)."""
        nxt = self.after(action, size, price, fee)
        self.size, self.avg_price, self.realized_pnl, self.fees = (
            nxt.size, nxt.avg_price, nxt.realized_pnl, nxt.fees)


class PositionBook:
    """Positions per ``(account, symbol)``."""

    def __init__(self) -> None:
        self._positions: dict[tuple[str, str], Position] = {}

    def get(self, account: str, symbol: str) -> Position:
        return self._positions.get((account, symbol)) or Position(account, symbol)

    def preview(self, account: str, symbol: str, action: Action, size: float, price: float,
                fee: float = 0.0) -> Position:
        """The position an execution would give, without booking it (may raise
        :class:`PositionError`)."""
        return self.get(account, symbol).after(action, size, price, fee)

    def commit(self, pos: Position) -> Position:
        """Store a previewed position (checked again)."""
        pos.check()
        self._positions[(pos.account, pos.symbol)] = pos
        return pos

    def apply(self, account: str, symbol: str, action: Action, size: float, price: float,
              fee: float = 0.0) -> Position:
        """Book an execution and return the updated position (nothing changes if it raises)."""
        return self.commit(self.preview(account, symbol, action, size, price, fee))

    def all(self, include_flat: bool = False) -> list[Position]:
        return [p for p in self._positions.values() if include_flat or p.size != 0]
