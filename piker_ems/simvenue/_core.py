# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
The clearing core of one simulated venue: requests and quotes in, message sequences out.

Pure and synchronous (no trio, no I/O, time from the injected clock) so every decision the
paper engine and the sim exchange make is unit-testable on its own. It turns a parsed request
or a quote into the exact protocol sequence (ack, submitted, fill, filled, position, cancelled,
error) and keeps the book, the positions and the last L1 per symbol.

Two steps per execution: deciding it (:class:`Execution`, the order leaves the book) and
settling it (:meth:`ClearingCore.settle`, positions booked and fill/filled/position built), so an
exchange can report with latency. Settling is all-or-nothing: an execution whose messages or
position update would be invalid fails *only that order* (a ``BrokerdError`` for its reqid, the
order closed as rejected, positions unchanged); every other order is unaffected.

Write-ahead: every change is written to the venue's :class:`~._journal.Journal` *before* the
messages reporting it are returned (accept before the ack, modify/cancel before their status,
the fill + order state + position in one transaction before the fill). A failed write answers an
error and changes nothing in memory. A core starts from its journal (resting orders, positions,
recently ended orders, id counters); without one it uses an in-memory journal (same code path).

Idempotency: a new order whose ``oid`` the venue already knows is not placed again; it is
answered with an ack for the existing reqid (emsd re-sending after its own crash).
"""
from __future__ import annotations

import math

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..clearing._messages import (
    BrokerdCancel,
    BrokerdError,
    BrokerdFill,
    BrokerdOrder,
    BrokerdOrderAck,
    BrokerdOrderInfo,
    BrokerdPosition,
    BrokerdStatus,
    VenueSnapshot,
    to_wire,
)
from ..faults import crash_point
from ._book import Action, OrderBook, ReqId, RestingOrder, crosses
from ._clock import Clock, system_clock
from ._fidelity import Fidelity
from ._journal import Journal
from ._numbers import _is_number, clean, eps, is_price, request_problem
from ._positions import Position, PositionBook, PositionError

__all__ = [
    'ALREADY_CANCELLED',
    'ALREADY_FILLED',
    'ALREADY_REJECTED',
    'CLOSED_MEMORY',
    'ClearingCore',
    'Execution',
    'UNKNOWN_ORDER',
]

#: Reasons of the errors the contract names (emsd and tests may match on them).
UNKNOWN_ORDER = 'unknown order'
ALREADY_FILLED = 'order already filled'
ALREADY_CANCELLED = 'order already cancelled'
ALREADY_REJECTED = 'order already rejected'

#: How many closed (filled/cancelled/rejected) reqids a core remembers, to answer a late cancel
#: or modify with "already filled" rather than "unknown order".
CLOSED_MEMORY = 100_000


@dataclass(frozen=True)
class Execution:
    """One execution decided by the core; :meth:`ClearingCore.settle` books and reports it.

    The order has already left the book (and its reqid counts as filled) when an ``Execution``
    exists; settling may be delayed (exchange fill latency) without changing that.
    """

    reqid: ReqId
    oid: str
    account: str
    symbol: str
    action: Action
    price: float
    size: float
    filled: float      # the order's cumulative filled size after this execution
    remaining: float   # what is left of the order after it
    time_ns: int       # when it executed (the venue's clock)
    liquidity: str = 'maker'  # 'taker': marketable when it arrived (or its remainder)

    @property
    def time(self) -> float:
        """Epoch seconds (the ``broker_time`` of the fill)."""
        return self.time_ns / 1e9


class ClearingCore:
    """The order state of one simulated venue (one broker), without any I/O.

    Every method returns the messages (``to_wire`` dicts) to send, in order.
    ``next_reqid`` makes the venue's order ids (paper: strings, sim exchange: ints);
    ``clock`` gives epoch nanoseconds (see :mod:`._clock`); ``journal`` is where every change
    is written first (default: an in-memory one) and what the core starts from;
    ``fee_bps`` the fee of an execution in basis points of its notional; fill ids are
    ``<fill_prefix>-<n>`` (default prefix: the broker); ``fidelity`` the fill model and
    maker/taker fees (:mod:`._fidelity`; default: whole size on touch, ``fee_bps`` for both).
    """

    def __init__(
        self,
        broker: str,
        next_reqid: Callable[[], ReqId],
        *,
        clock: Clock = system_clock,
        journal: Journal | None = None,
        fee_bps: float = 0.0,
        fill_prefix: str | None = None,
        fidelity: Fidelity | None = None,
    ) -> None:
        if not (math.isfinite(fee_bps) and fee_bps >= 0):
            raise ValueError(f'fee_bps must be a finite number >= 0, got {fee_bps!r}')
        self.broker = broker
        self.next_reqid = next_reqid
        self.clock = clock
        self.journal = journal if journal is not None else Journal.memory(broker)
        self.fee_bps = float(fee_bps)
        self.fidelity = fid = fidelity or Fidelity()
        self.partial = fid.partial_fills
        self.maker_bps = self.fee_bps if fid.maker_fee_bps is None else fid.maker_fee_bps
        self.taker_bps = self.fee_bps if fid.taker_fee_bps is None else fid.taker_fee_bps
        # partial fills: size shown at the touch by the last quote, and what is left of it
        self.shown: dict[tuple[str, str], float | None] = {}
        self.avail: dict[tuple[str, str], float | None] = {}
        self.fill_prefix = fill_prefix or broker
        self.book = OrderBook()
        self.positions = PositionBook()
        self.bids: dict[str, float] = {}
        self.asks: dict[str, float] = {}
        # reqid -> 'filled' | 'cancelled' | 'rejected', oldest evicted first
        self._closed: dict[ReqId, str] = {}
        self.executions = 0         # executions settled (booked and reported)
        self.failed_executions = 0  # executions refused at settlement
        self.duplicates = 0         # new orders answered with an existing order's ack
        self.last_reqid = 0         # the highest int reqid the journal has seen issued
        self.last_fill = 0
        self._restore()

    def _restore(self) -> None:
        state = self.journal.load(CLOSED_MEMORY)
        for order in state.open_orders:
            self.book.add(order)
        for reqid, how in state.ended:
            self._close(reqid, how)
        for pos in state.positions:
            self.positions.commit(pos)
        self.last_reqid, self.last_fill = state.last_reqid, state.last_fill
        self.restored_orders = len(state.open_orders)

    # -- market data ---------------------------------------------------------------------

    def has_l1(self, symbol: str) -> bool:
        """Whether a bid or ask is known for ``symbol`` (new orders need it to be checked)."""
        symbol = symbol.lower()
        return symbol in self.bids or symbol in self.asks

    def on_quote(self, symbol: str, quote: Mapping[str, Any]) -> list[Execution]:
        """Update L1 from a quote and return the executions of the resting orders it crosses.

        The quote's ``ticks`` are applied in arrival order (a batched quote carries several
        bid/ask updates, any of which may cross an order), then its final ``bid``/``ask``.
        Resting orders execute at their limit price.
        """
        symbol = symbol.lower()
        out: list[Execution] = []
        seen = set()
        for tick in quote.get('ticks') or ():
            if isinstance(tick, Mapping):
                kind = tick.get('type')
                if kind in ('bid', 'ask'):
                    seen.add(kind)
                    self._on_l1(symbol, kind, tick.get('price'), out, tick.get('size'))
                elif kind in ('trade', 'last') and self.fidelity.queue:
                    self._on_print(symbol, tick.get('price'), tick.get('size'), out)
        for kind, size in (('bid', 'bsize'), ('ask', 'asize')):
            if not (self.partial and kind in seen):  # ticks already showed (and spent) that side
                self._on_l1(symbol, kind, quote.get(kind), out, quote.get(size))
        return out

    def _on_l1(self, symbol: str, kind: Any, price: Any, out: list[Execution], size: Any = None) -> None:
        if kind not in ('bid', 'ask') or not is_price(price):
            return
        price = float(price)
        if kind == 'ask':
            self.asks[symbol] = price
            crossed = self.book.crossed(symbol, 'buy', price)
        else:
            self.bids[symbol] = price
            crossed = self.book.crossed(symbol, 'sell', price)
        if not self.partial:
            for order in crossed:
                out.append(self._execute(order, order.price))
            return
        shown = float(size) if _is_number(size) and math.isfinite(size) and size >= 0 else None
        self.shown[(symbol, kind)] = self.avail[(symbol, kind)] = shown
        for order in crossed:
            # a taker remainder takes at the touch; a passive order is reached at its limit
            ex = self._take(order, price if order.taker else order.price, kind,
                            'taker' if order.taker else 'maker')
            if ex is not None:
                out.append(ex)
            if order.remaining > 0:
                self.book.put_back(order)

    def _on_print(self, symbol: str, price: Any, size: Any, out: list[Execution]) -> None:
        """Queue model: a print at or through resting orders' prices shrinks the queue ahead
        of each; print volume beyond it fills them (shared, best price and oldest first)."""
        if not is_price(price) or not (_is_number(size) and math.isfinite(size) and size > 0):
            return
        price, vol = float(price), float(size)
        for side in ('buy', 'sell'):
            left = vol
            for order in self.book.crossed(symbol, side, price):
                ahead = order.queue_ahead
                order.queue_ahead = max(0.0, clean(ahead - vol))
                can = clean(min(order.remaining, max(0.0, vol - ahead), left))
                if can > 0:
                    left = clean(left - can)
                    fill_price = price if order.taker else order.price
                    out.append(self._execute(order, fill_price, can, 'taker' if order.taker else 'maker'))
                if order.remaining > 0:
                    self.book.put_back(order)

    def _take(self, order: RestingOrder, price: float, kind: str, liquidity: str) -> Execution | None:
        """Partial fills: execute what the touch (``kind``: the side taken) still shows."""
        key = (order.symbol, kind)
        avail = self.avail.get(key)
        size = order.remaining if avail is None else clean(min(order.remaining, avail))
        if size <= 0:
            return None
        if avail is not None:
            self.avail[key] = clean(avail - size)
        return self._execute(order, price, size, liquidity)

    def _queue_at(self, order: RestingOrder) -> float:
        """The size shown at ``order``'s price when it joins (0 away from the touch)."""
        kind = 'bid' if order.action == 'buy' else 'ask'
        touch = (self.bids if kind == 'bid' else self.asks).get(order.symbol)
        if touch is not None and abs(touch - order.price) <= eps(order.price):
            return self.shown.get((order.symbol, kind)) or 0.0
        return 0.0

    def _rest_or_take(self, order: RestingOrder, price: float | None, new: bool) -> list[Execution]:
        """Partial fills: a marketable order takes what the touch shows, the rest rests."""
        if price is None:
            order.taker = False
            if self.fidelity.queue:
                order.queue_ahead = self._queue_at(order)
            if new:
                self.book.add(order)
            return []
        order.taker = True
        if not new:
            self.book.remove(order.reqid)
        ex = self._take(order, price, 'ask' if order.action == 'buy' else 'bid', 'taker')
        if order.remaining > 0:
            self.book.add(order)
        return [ex] if ex is not None else []

    def _marketable_price(self, order: RestingOrder) -> float | None:
        """The price a new/modified order executes at right now, or ``None`` if it rests."""
        if order.action == 'buy':
            ask = self.asks.get(order.symbol)
            if ask is not None and crosses('buy', order.price, ask):
                return ask
        else:
            bid = self.bids.get(order.symbol)
            if bid is not None and crosses('sell', order.price, bid):
                return bid
        return None

    def fee(self, price: float, size: float, liquidity: str = 'maker') -> float:
        """The fee of an execution: the maker or taker rate (bps) of its notional."""
        bps = self.taker_bps if liquidity == 'taker' else self.maker_bps
        return clean(abs(price * size) * bps / 1e4) if bps else 0.0

    def _execute(self, order: RestingOrder, price: float, size: float | None = None,
                 liquidity: str = 'maker') -> Execution:
        size = order.remaining if size is None else size
        order.filled = clean(order.filled + size)
        if order.remaining <= 0:
            self._close(order.reqid, 'filled')
        return Execution(
            reqid=order.reqid, oid=order.oid, account=order.account, symbol=order.symbol,
            action=order.action, price=price, size=size, filled=order.filled,
            remaining=order.remaining, time_ns=self.clock(), liquidity=liquidity,
        )

    def _close(self, reqid: ReqId, how: str) -> None:
        self._closed.pop(reqid, None)
        self._closed[reqid] = how
        if len(self._closed) > CLOSED_MEMORY:
            del self._closed[next(iter(self._closed))]

    def closed(self, reqid: ReqId) -> str | None:
        """``'filled'`` / ``'cancelled'`` / ``'rejected'`` for an order no longer open, else
        ``None``."""
        return self._closed.get(reqid)

    # -- requests ------------------------------------------------------------------------

    def submit(self, req: BrokerdOrder) -> tuple[list[dict], list[Execution]]:
        """A new order (``reqid is None``) or a modify of a known one.

        New: ``ack``, ``submitted``, then an execution at the ask/bid if marketable (else it
        rests). Modify: ``submitted`` with the new remaining size, re-checked for
        marketability. A price/size that is not finite, not > 0 or above the caps, an unknown,
        filled, cancelled or rejected reqid, or a modify that changes the symbol, side, account
        or oid of the order gets a ``BrokerdError`` instead, and nothing changes.
        """
        if req.reqid is None:
            known = self.journal.find_oid(req.oid)
            if known is not None:  # the same new order again: never a second order
                self.duplicates += 1
                reqid, account = known
                return [to_wire(BrokerdOrderAck(oid=req.oid, reqid=reqid, account=account))], []
        symbol = (req.symbol or '').lower()
        problem = request_problem(req.price, req.size)
        if problem is None and not symbol:
            problem = 'empty symbol'
        if problem is not None:
            return [self._error(req.oid, req.reqid, symbol or None, problem)], []
        if req.reqid is None:
            order = RestingOrder(
                reqid=self.next_reqid(), oid=req.oid, account=req.account, symbol=symbol,
                action=req.action, price=float(req.price), size=float(req.size), time_ns=self.clock(),
            )
            try:
                self.journal.accept(order)
            except Exception as err:
                return [self._error(req.oid, None, symbol, f'venue could not record the order: {err}')], []
            msgs = [
                to_wire(BrokerdOrderAck(oid=order.oid, reqid=order.reqid, account=order.account)),
                self._status(order, 'submitted'),
            ]
            price = self._marketable_price(order)
            if self.partial:
                return msgs, self._rest_or_take(order, price, new=True)
            if price is not None:
                return msgs, [self._execute(order, price, liquidity='taker')]
            self.book.add(order)
            return msgs, []

        order = self.book.get(req.reqid)
        if order is None:
            return [self._error(req.oid, req.reqid, symbol, self._gone_reason(req.reqid))], []
        mismatch = [
            f'{name} {old!r} -> {new!r}'
            for name, old, new in (
                ('oid', order.oid, req.oid),
                ('symbol', order.symbol, symbol),
                ('action', order.action, req.action),
                ('account', order.account, req.account),
            )
            if old != new
        ]
        if mismatch:
            return [self._error(
                req.oid, req.reqid, symbol,
                'modify cannot change ' + ', '.join(mismatch) + '; cancel and place a new order',
            )], []
        if req.size <= order.filled:
            return [self._error(
                req.oid, req.reqid, symbol,
                f'modify size {req.size:g} is not above the filled size {order.filled:g}',
            )], []
        probe = RestingOrder(
            reqid=order.reqid, oid=order.oid, account=order.account, symbol=symbol,
            action=order.action, price=float(req.price), size=float(req.size), filled=order.filled,
        )
        price = self._marketable_price(probe)
        try:
            self.journal.modify(order.reqid, probe.price, probe.size, self.clock())
        except Exception as err:
            return [self._error(req.oid, req.reqid, symbol, f'venue could not record the modify: {err}')], []
        if self.partial:
            self.book.update(order.reqid, price=probe.price, size=probe.size)
            return [self._status(order, 'submitted')], self._rest_or_take(order, price, new=False)
        if price is not None:
            self.book.remove(order.reqid)
            order.price, order.size = probe.price, probe.size
            return [self._status(order, 'submitted')], [self._execute(order, price, liquidity='taker')]
        self.book.update(order.reqid, price=probe.price, size=probe.size)
        return [self._status(order, 'submitted')], []

    def cancel(self, req: BrokerdCancel) -> list[dict]:
        """Cancel a resting order by reqid: ``cancelled``, or a ``BrokerdError`` when the reqid
        is missing (the venue only knows its own ids), unknown or no longer open."""
        if req.reqid is None:
            return [self._error(req.oid, None, req.symbol, UNKNOWN_ORDER)]
        order = self.book.get(req.reqid)
        if order is None:
            return [self._error(req.oid, req.reqid, req.symbol, self._gone_reason(req.reqid))]
        try:
            self.journal.end(order.reqid, 'cancelled', self.clock())
        except Exception as err:
            return [self._error(req.oid, req.reqid, req.symbol, f'venue could not record the cancel: {err}')]
        self.book.remove(order.reqid)
        self._close(order.reqid, 'cancelled')
        return [self._status(order, 'cancelled')]

    # -- settlement ----------------------------------------------------------------------

    def settle(self, ex: Execution) -> tuple[list[dict], dict | None]:
        """Book an execution: ``([fill, filled status], position)``.

        All or nothing: if the messages or the position update are invalid (say, a position
        that would overflow to inf), nothing is booked, the order is closed as rejected and the
        result is ``([BrokerdError for its reqid], None)``.
        """
        try:
            details = {'oid': ex.oid, 'symbol': ex.symbol, 'broker': self.broker}
            fill_no = self.last_fill + 1
            fill_id = f'{self.fill_prefix}-{fill_no}'
            fee = self.fee(ex.price, ex.size, ex.liquidity)
            msgs = [
                to_wire(BrokerdFill(
                    reqid=ex.reqid, oid=ex.oid, fill_id=fill_id, time_ns=ex.time_ns, action=ex.action,
                    size=ex.size, price=ex.price, fee=fee, broker_time=ex.time,
                    broker_details={**details, 'liquidity': ex.liquidity},
                )),
                to_wire(BrokerdStatus(
                    reqid=ex.reqid, time_ns=ex.time_ns, status='filled', account=ex.account,
                    filled=ex.filled, remaining=ex.remaining, broker_details=details,
                )),
            ]
            pos = self.positions.preview(ex.account, ex.symbol, ex.action, ex.size, ex.price, fee)
            position = self.position_msg(pos)
        except (PositionError, ValueError) as err:  # pydantic's ValidationError is a ValueError
            return [self.fail_execution(ex, f'execution refused: {err}')], None
        try:  # write-ahead: the fill, the order's state and the position in one transaction
            self.journal.fill(
                fill_id=fill_id, fill_no=fill_no, reqid=ex.reqid, oid=ex.oid, account=ex.account,
                symbol=ex.symbol, action=ex.action, price=ex.price, size=ex.size, fee=fee,
                time_ns=ex.time_ns, filled=ex.filled, position=pos,
                # a part fill reported late must not reopen an order cancelled meanwhile
                status='filled' if ex.remaining <= 0 else self._closed.get(ex.reqid, 'open'),
            )
        except Exception as err:
            return [self.fail_execution(ex, f'venue could not record the fill: {err}')], None
        self.journal.after_commit(crash_point, 'venue.after_fill_journal')  # (in a group: after its commit)
        self.last_fill = fill_no
        self.positions.commit(pos)
        self.executions += 1
        return msgs, position

    def fail_execution(self, ex: Execution, reason: str) -> dict:
        """Close an execution's order as rejected (it did not fill) and return its error."""
        self.failed_executions += 1
        self.book.remove(ex.reqid)  # a partly filled order may still rest
        self._close(ex.reqid, 'rejected')
        try:
            self.journal.end(ex.reqid, 'rejected', self.clock())
        except Exception:  # the order did not fill either way; a restart would rest it again
            pass
        return self._error(ex.oid, ex.reqid, ex.symbol, reason)

    def position_msg(self, pos: Position) -> dict:
        return to_wire(BrokerdPosition(
            broker=self.broker, account=pos.account, symbol=pos.symbol,
            size=pos.size, avg_price=pos.avg_price, realized_pnl=pos.realized_pnl, fees=pos.fees,
        ))

    def position_msgs(self) -> list[dict]:
        """Every non-flat position (part of the ``started()`` snapshot of a dialogue)."""
        return [self.position_msg(p) for p in self.positions.all()]

    def snapshot(self, since_ns: int | None = None) -> dict:
        """The ``started()`` value of a dialogue: a :class:`VenueSnapshot` (wire dict).

        Positions (non-flat), every open order (from the journal, so an order whose execution
        is decided but not reported yet still counts as open) plus the orders that ended at or
        after ``since_ns``, and every fill at or after ``since_ns``; ``since_ns=None``: open
        orders only and no fills.
        """
        orders = [
            BrokerdOrderInfo(**row) for row in self.journal.orders(since_ns)
        ]
        fills = []
        if since_ns is not None:
            for row in self.journal.fills(since_ns):
                fills.append(BrokerdFill(
                    reqid=row['reqid'], oid=row['oid'], fill_id=row['fill_id'], time_ns=row['time_ns'],
                    action=row['action'], size=row['size'], price=row['price'], fee=row['fee'],
                    broker_time=row['time_ns'] / 1e9,
                    broker_details={'oid': row['oid'], 'symbol': row['symbol'], 'broker': self.broker},
                ))
        return to_wire(VenueSnapshot(
            positions=[BrokerdPosition.model_validate(p) for p in self.position_msgs()],
            orders=orders, fills=fills, since_ns=since_ns,
        ))

    def reject(self, raw: Any, reason: str) -> dict | None:
        """A ``BrokerdError`` answering an invalid request, if it names an order (oid/reqid)."""
        if not isinstance(raw, Mapping):
            return None
        oid, reqid, symbol = raw.get('oid'), raw.get('reqid'), raw.get('symbol')
        oid = oid if isinstance(oid, str) and oid else None
        reqid = reqid if isinstance(reqid, (int, str)) and not isinstance(reqid, bool) else None
        symbol = symbol if isinstance(symbol, str) else None
        if oid is None and reqid is None:
            return None
        return self._error(oid, reqid, symbol, reason)

    # -- helpers -------------------------------------------------------------------------

    def _gone_reason(self, reqid: ReqId) -> str:
        return {
            'filled': ALREADY_FILLED,
            'cancelled': ALREADY_CANCELLED,
            'rejected': ALREADY_REJECTED,
        }.get(self._closed.get(reqid), UNKNOWN_ORDER)

    def _status(self, order: RestingOrder, status: str) -> dict:
        return to_wire(BrokerdStatus(
            reqid=order.reqid, time_ns=self.clock(), status=status, account=order.account,
            filled=order.filled, remaining=order.remaining,
            broker_details={'oid': order.oid, 'symbol': order.symbol, 'broker': self.broker},
        ))

    def _error(self, oid: str | None, reqid: ReqId | None, symbol: str | None, reason: str) -> dict:
        return to_wire(BrokerdError(
            oid=oid, reqid=reqid, symbol=symbol, reason=reason,
            broker_details={'broker': self.broker},
        ))
