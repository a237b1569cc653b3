# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
Resting limit orders, indexed by price so a quote finds what it crosses without a scan.

Two heaps per symbol (buys: highest limit first, sells: lowest first, time priority within a
price), so a quote that crosses nothing costs one peek per side however many orders rest, and
one that crosses ``k`` orders costs O(k log N). Cancel and modify delete lazily: every
(re)index gets a new version number, heap items with an older one are stale and dropped when
they surface, and the heaps are rebuilt once stale items outnumber live ones.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Any, Literal

from ._numbers import clean, eps

__all__ = ['Action', 'OrderBook', 'ReqId', 'RestingOrder', 'crosses']

ReqId = int | str
Action = Literal['buy', 'sell']


def crosses(action: str, limit: float, price: float) -> bool:
    """Whether a limit order would execute against ``price`` on the opposite side.

    A buy executes when the ask is at or below its limit; a sell when the bid is at or above it.
    """
    if action == 'buy':
        return price <= limit + eps(limit)
    return price >= limit - eps(limit)


@dataclass
class RestingOrder:
    """One live limit order known to a venue (resting, or in flight to a fill)."""

    reqid: ReqId
    oid: str
    account: str
    symbol: str
    action: Action
    price: float
    size: float
    filled: float = 0.0
    time_ns: int = 0   # when the venue accepted it (the venue's clock)
    version: int = 0   # bumped on every (re)index: heap items with an older one are stale
    taker: bool = False       # marketable on arrival: its remainder keeps taking at the touch
    queue_ahead: float = 0.0  # queue model: size ahead of it at its price (not journaled)

    @property
    def remaining(self) -> float:
        return max(0.0, clean(self.size - self.filled))

    def summary(self) -> dict[str, Any]:
        """The stats/wire view of an open order."""
        return {
            'reqid': self.reqid,
            'oid': self.oid,
            'account': self.account,
            'action': self.action,
            'symbol': self.symbol,
            'price': self.price,
            'size': self.size,
            'filled': self.filled,
        }


_HeapItem = tuple[float, int, ReqId]  # (key, version, reqid); key = -price for buys, price for sells


class OrderBook:
    """Resting limit orders of many symbols, indexed by price per (symbol, side).

    ``crossed(symbol, 'buy', ask)`` pops every resting buy whose limit is at or above ``ask``,
    best price first (time priority within a price).
    """

    def __init__(self) -> None:
        self._orders: dict[ReqId, RestingOrder] = {}
        self._heaps: dict[tuple[str, str], list[_HeapItem]] = {}
        self._versions = itertools.count(1)
        self._stale = 0

    def __len__(self) -> int:
        return len(self._orders)

    def __contains__(self, reqid: object) -> bool:
        return reqid in self._orders

    def get(self, reqid: ReqId) -> RestingOrder | None:
        return self._orders.get(reqid)

    def orders(self, symbol: str | None = None) -> list[RestingOrder]:
        """Open orders (of one symbol), oldest (re)index first."""
        out = [o for o in self._orders.values() if symbol is None or o.symbol == symbol]
        return sorted(out, key=lambda o: o.version)

    def symbols(self) -> set[str]:
        return {o.symbol for o in self._orders.values()}

    @staticmethod
    def _key(order: RestingOrder) -> float:
        return -order.price if order.action == 'buy' else order.price

    def _index(self, order: RestingOrder) -> None:
        order.version = next(self._versions)
        heap = self._heaps.setdefault((order.symbol, order.action), [])
        heapq.heappush(heap, (self._key(order), order.version, order.reqid))

    def add(self, order: RestingOrder) -> None:
        """Rest a new order (its reqid must be new to this book)."""
        if order.reqid in self._orders:
            raise KeyError(f'reqid {order.reqid!r} already rests in the book')
        self._orders[order.reqid] = order
        self._index(order)

    def put_back(self, order: RestingOrder) -> None:
        """Rest again an order :meth:`crossed` took out (partly filled, or not filled for lack
        of liquidity), keeping its time priority."""
        self._orders[order.reqid] = order
        heap = self._heaps.setdefault((order.symbol, order.action), [])
        heapq.heappush(heap, (self._key(order), order.version, order.reqid))

    def update(self, reqid: ReqId, *, price: float, size: float) -> RestingOrder:
        """Re-price/re-size a resting order in place (it loses its time priority)."""
        order = self._orders[reqid]
        order.price, order.size = price, size
        self._stale += 1
        self._index(order)
        self._maybe_compact()
        return order

    def remove(self, reqid: ReqId) -> RestingOrder | None:
        """Take an order out of the book; ``None`` if it is not resting."""
        order = self._orders.pop(reqid, None)
        if order is not None:
            self._stale += 1
            self._maybe_compact()
        return order

    def _live_top(self, heap: list[_HeapItem]) -> RestingOrder | None:
        while heap:
            _, version, reqid = heap[0]
            order = self._orders.get(reqid)
            if order is not None and order.version == version:
                return order
            heapq.heappop(heap)
            self._stale -= 1
        return None

    def crossed(self, symbol: str, action: Action, price: float) -> list[RestingOrder]:
        """Remove and return the ``action`` orders of ``symbol`` executable against ``price``
        (the ask for buys, the bid for sells), best limit first."""
        heap = self._heaps.get((symbol, action))
        out: list[RestingOrder] = []
        if not heap:
            return out
        while (order := self._live_top(heap)) is not None:
            if not crosses(action, order.price, price):
                break
            heapq.heappop(heap)
            del self._orders[order.reqid]
            out.append(order)
        return out

    def best(self, symbol: str, action: Action) -> RestingOrder | None:
        """The highest buy / lowest sell resting for ``symbol``."""
        heap = self._heaps.get((symbol, action))
        return self._live_top(heap) if heap else None

    def heap_items(self) -> int:
        """Total heap items, live and stale (tests check compaction bounds it)."""
        return sum(len(h) for h in self._heaps.values())

    def _maybe_compact(self) -> None:
        if self._stale > 64 and self._stale > len(self._orders):
            heaps: dict[tuple[str, str], list[_HeapItem]] = {}
            for o in self._orders.values():
                heaps.setdefault((o.symbol, o.action), []).append((self._key(o), o.version, o.reqid))
            for heap in heaps.values():
                heapq.heapify(heap)
            self._heaps = heaps
            self._stale = 0
