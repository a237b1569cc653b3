# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
Limit-order matching, position accounting and the ``trades_dialogue``
plumbing shared by every simulated clearing engine: the paper engine
(``paperboi.<broker>``, :mod:`piker_ems.clearing._paper`) and the sim
backend's live exchange (``brokerd.sim``, :mod:`piker_ems.brokers.sim._exchange`).

Both engines speak the same contract (SPEC §4, §6), so everything that
decides *what* happens lives here once:

- :class:`OrderBook`: resting limit orders per symbol, indexed by price with
  two heaps per symbol (buys: a max-heap on price, sells: a min-heap), so a
  quote that crosses nothing costs one peek per side however many orders
  rest. Cancel and modify use lazy deletion (a version number per order;
  stale heap items are dropped when they surface, and the heaps are rebuilt
  once stale items outnumber live ones).
- :class:`PositionBook`: size and average price per ``(account, symbol)``.
- :class:`ClearingCore`: turns a parsed request or a quote into the exact
  message sequence (ack, submitted, fill, filled, position, cancelled,
  error). Pure and synchronous: no trio, no I/O, unit-testable on its own.
- :class:`Dialogue` and :class:`DialogueEngine`: the trio side. One engine per
  process and broker holds the core; each ``trades_dialogue`` context is a
  :class:`Dialogue` with an unbounded outbox drained by its own sender task,
  while the receive loop always drains the IPC stream and never blocks, so
  the channel can never stall and no bad message can kill the loop. The
  engines only decide *when* a request is processed (the paper engine holds
  a new order until its symbol's first quote; the exchange adds latency).

Ordering: every message about one order is produced by one synchronous call
(or, for a delayed fill, one task) and queued on the outbox in that order,
so an ack always precedes the order's ``submitted`` status, which precedes
its fill.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ._messages import (
    BrokerdCancel,
    BrokerdError,
    BrokerdFill,
    BrokerdOrder,
    BrokerdOrderAck,
    BrokerdPosition,
    BrokerdStatus,
    MsgError,
    parse_broker_request,
    to_wire,
)

__all__ = [
    'ClearingCore',
    'Dialogue',
    'DialogueEngine',
    'Execution',
    'OrderBook',
    'Position',
    'PositionBook',
    'RestingOrder',
    'crosses',
]

log = logging.getLogger('piker_ems.clearing._matching')

ReqId = int | str
Action = Literal['buy', 'sell']

#: Reasons of the errors the contract names (emsd and tests may match on them).
UNKNOWN_ORDER = 'unknown order'
ALREADY_FILLED = 'order already filled'
ALREADY_CANCELLED = 'order already cancelled'

#: How many closed (filled/cancelled) reqids each core remembers, to answer a late cancel or
#: modify with "already filled" rather than "unknown order".
CLOSED_MEMORY = 100_000
#: How many requests/journal entries an engine keeps for its stats.
STATS_MEMORY = 10_000


def _eps(price: float) -> float:
    """Comparison tolerance: prices are on a tick grid but travel as floats."""
    return 1e-9 * max(1.0, abs(price))


def crosses(action: str, limit: float, price: float) -> bool:
    """Whether a limit order would execute against ``price`` on the opposite side.

    A buy executes when the ask is at or below its limit; a sell when the bid is at or above it.
    """
    if action == 'buy':
        return price <= limit + _eps(limit)
    return price >= limit - _eps(limit)


# ---------------------------------------------------------------------------------------------
# orders and the book

@dataclass
class RestingOrder:
    """One live limit order known to an engine (resting, or in flight to a fill)."""

    reqid: ReqId
    oid: str
    account: str
    symbol: str
    action: Action
    price: float
    size: float
    filled: float = 0.0
    time_ns: int = field(default_factory=time.time_ns)
    version: int = 0  # bumped on every (re)index: heap items with an older one are stale

    @property
    def remaining(self) -> float:
        return max(0.0, _clean(self.size - self.filled))

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


class OrderBook:
    """Resting limit orders of many symbols, indexed by price per (symbol, side).

    ``crossed(symbol, 'buy', ask)`` pops every resting buy whose limit is at or above ``ask``,
    best price first (time priority within a price); it looks only at heap tops, so a quote
    that crosses nothing is O(1) per side and one that crosses ``k`` orders is O(k log N).
    """

    def __init__(self) -> None:
        self._orders: dict[ReqId, RestingOrder] = {}
        # (symbol, action) -> heap of (key, version, reqid); key = -price for buys, price for sells
        self._heaps: dict[tuple[str, str], list[tuple[float, int, ReqId]]] = {}
        self._versions = itertools.count(1)
        self._stale = 0

    def __len__(self) -> int:
        return len(self._orders)

    def __contains__(self, reqid: object) -> bool:
        return reqid in self._orders

    def get(self, reqid: ReqId) -> RestingOrder | None:
        return self._orders.get(reqid)

    def orders(self, symbol: str | None = None) -> list[RestingOrder]:
        """Open orders (of one symbol), oldest first."""
        out = [o for o in self._orders.values() if symbol is None or o.symbol == symbol]
        return sorted(out, key=lambda o: o.version)

    def symbols(self) -> set[str]:
        return {o.symbol for o in self._orders.values()}

    def _index(self, order: RestingOrder) -> None:
        order.version = next(self._versions)
        key = -order.price if order.action == 'buy' else order.price
        heap = self._heaps.setdefault((order.symbol, order.action), [])
        heapq.heappush(heap, (key, order.version, order.reqid))

    def add(self, order: RestingOrder) -> None:
        """Rest a new order (its reqid must be new to this book)."""
        if order.reqid in self._orders:
            raise KeyError(f'reqid {order.reqid!r} already rests in the book')
        self._orders[order.reqid] = order
        self._index(order)

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

    def _live_top(self, heap: list[tuple[float, int, ReqId]]) -> RestingOrder | None:
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
            heaps: dict[tuple[str, str], list[tuple[float, int, ReqId]]] = {}
            for o in self._orders.values():
                key = -o.price if o.action == 'buy' else o.price
                heaps.setdefault((o.symbol, o.action), []).append((key, o.version, o.reqid))
            for heap in heaps.values():
                heapq.heapify(heap)
            self._heaps = heaps
            self._stale = 0


# ---------------------------------------------------------------------------------------------
# positions

def _clean(x: float) -> float:
    """Drop float residue (``0.1 + 0.2 - 0.3``) so flat is exactly 0 and sizes stay readable."""
    r = round(x, 10)
    return 0.0 if r == 0 else r


@dataclass
class Position:
    """A signed position (negative = short) with its average entry price (0 when flat)."""

    account: str
    symbol: str
    size: float = 0.0
    avg_price: float = 0.0

    def apply(self, action: Action, size: float, price: float) -> None:
        """Book one execution.

        Adding in the position's direction moves the average to the size-weighted mean;
        reducing keeps it; crossing through zero restarts it at the fill price; flat is 0/0.
        """
        qty = size if action == 'buy' else -size
        old = self.size
        new = _clean(old + qty)
        if new == 0:
            self.avg_price = 0.0
        elif old == 0 or (old > 0) != (new > 0):
            self.avg_price = price  # opened, or crossed through zero
        elif (old > 0) == (qty > 0):
            self.avg_price = (abs(old) * self.avg_price + abs(qty) * price) / abs(new)
        # else: reduced without crossing: the average stays
        self.size = new


class PositionBook:
    """Positions per ``(account, symbol)``."""

    def __init__(self) -> None:
        self._positions: dict[tuple[str, str], Position] = {}

    def get(self, account: str, symbol: str) -> Position:
        return self._positions.get((account, symbol)) or Position(account, symbol)

    def apply(self, account: str, symbol: str, action: Action, size: float, price: float) -> Position:
        """Book an execution and return the updated position."""
        pos = self._positions.setdefault((account, symbol), Position(account, symbol))
        pos.apply(action, size, price)
        return pos

    def all(self, include_flat: bool = False) -> list[Position]:
        return [p for p in self._positions.values() if include_flat or p.size != 0]


# ---------------------------------------------------------------------------------------------
# the clearing core: requests and quotes in, message sequences out

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
    time: float        # epoch seconds


class ClearingCore:
    """The order state machine of one simulated venue (one broker), without any I/O.

    Every method returns the messages (``to_wire`` dicts) to send, in order.
    ``next_reqid`` makes the venue's order ids (paper: strings, sim exchange: ints).
    """

    def __init__(self, broker: str, next_reqid: Callable[[], ReqId]) -> None:
        self.broker = broker
        self.next_reqid = next_reqid
        self.book = OrderBook()
        self.positions = PositionBook()
        self.bids: dict[str, float] = {}
        self.asks: dict[str, float] = {}
        # reqid -> 'filled' | 'cancelled', oldest evicted first
        self._closed: dict[ReqId, str] = {}
        self.executions = 0

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
        for tick in quote.get('ticks') or ():
            if isinstance(tick, Mapping):
                self._on_l1(symbol, tick.get('type'), tick.get('price'), out)
        self._on_l1(symbol, 'bid', quote.get('bid'), out)
        self._on_l1(symbol, 'ask', quote.get('ask'), out)
        return out

    def _on_l1(self, symbol: str, kind: Any, price: Any, out: list[Execution]) -> None:
        if kind not in ('bid', 'ask') or not _valid_price(price):
            return
        price = float(price)
        if kind == 'ask':
            self.asks[symbol] = price
            crossed = self.book.crossed(symbol, 'buy', price)
        else:
            self.bids[symbol] = price
            crossed = self.book.crossed(symbol, 'sell', price)
        for order in crossed:
            out.append(self._execute(order, order.price))

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

    def _execute(self, order: RestingOrder, price: float) -> Execution:
        size = order.remaining
        order.filled = _clean(order.filled + size)
        self._close(order.reqid, 'filled')
        self.executions += 1
        return Execution(
            reqid=order.reqid, oid=order.oid, account=order.account, symbol=order.symbol,
            action=order.action, price=price, size=size, filled=order.filled,
            remaining=order.remaining, time=time.time(),
        )

    def _close(self, reqid: ReqId, how: str) -> None:
        self._closed[reqid] = how
        if len(self._closed) > CLOSED_MEMORY:
            del self._closed[next(iter(self._closed))]

    def closed(self, reqid: ReqId) -> str | None:
        """``'filled'`` / ``'cancelled'`` for an order that is no longer open, else ``None``."""
        return self._closed.get(reqid)

    # -- requests ------------------------------------------------------------------------

    def submit(self, req: BrokerdOrder) -> tuple[list[dict], list[Execution]]:
        """A new order (``reqid is None``) or a modify of a known one.

        New: ``ack``, ``submitted``, then an execution at the ask/bid if marketable (else it
        rests). Modify: ``submitted`` with the new remaining size, re-checked for
        marketability; an unknown, filled or cancelled reqid (or a modify that changes the
        symbol, side or oid of the order) gets a ``BrokerdError`` instead.
        """
        symbol = req.symbol.lower()
        if req.reqid is None:
            order = RestingOrder(
                reqid=self.next_reqid(), oid=req.oid, account=req.account, symbol=symbol,
                action=req.action, price=req.price, size=req.size,
            )
            msgs = [
                to_wire(BrokerdOrderAck(oid=order.oid, reqid=order.reqid, account=order.account)),
                self._status(order, 'submitted'),
            ]
            price = self._marketable_price(order)
            if price is not None:
                return msgs, [self._execute(order, price)]
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
            action=order.action, price=req.price, size=req.size, filled=order.filled,
        )
        price = self._marketable_price(probe)
        if price is not None:
            self.book.remove(order.reqid)
            order.price, order.size = req.price, req.size
            return [self._status(order, 'submitted')], [self._execute(order, price)]
        self.book.update(order.reqid, price=req.price, size=req.size)
        return [self._status(order, 'submitted')], []

    def cancel(self, req: BrokerdCancel) -> list[dict]:
        """Cancel a resting order by reqid: ``cancelled``, or a ``BrokerdError`` when the reqid
        is missing (the venue only knows its own ids), unknown, filled or already cancelled."""
        if req.reqid is None:
            return [self._error(req.oid, None, req.symbol, UNKNOWN_ORDER)]
        order = self.book.remove(req.reqid)
        if order is None:
            return [self._error(req.oid, req.reqid, req.symbol, self._gone_reason(req.reqid))]
        self._close(order.reqid, 'cancelled')
        return [self._status(order, 'cancelled')]

    def settle(self, ex: Execution) -> tuple[list[dict], dict]:
        """Book an execution: ``([fill, filled status], position)``."""
        pos = self.positions.apply(ex.account, ex.symbol, ex.action, ex.size, ex.price)
        details = {'oid': ex.oid, 'symbol': ex.symbol, 'broker': self.broker}
        fill = BrokerdFill(
            reqid=ex.reqid, action=ex.action, size=ex.size, price=ex.price,
            broker_time=ex.time, broker_details=details,
        )
        status = BrokerdStatus(
            reqid=ex.reqid, status='filled', account=ex.account,
            filled=ex.filled, remaining=ex.remaining, broker_details=details,
        )
        return [to_wire(fill), to_wire(status)], self.position_msg(pos)

    def position_msg(self, pos: Position) -> dict:
        return to_wire(BrokerdPosition(
            broker=self.broker, account=pos.account, symbol=pos.symbol,
            size=pos.size, avg_price=pos.avg_price,
        ))

    def position_msgs(self) -> list[dict]:
        """Every non-flat position (the ``started()`` value of a dialogue)."""
        return [self.position_msg(p) for p in self.positions.all()]

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
        how = self._closed.get(reqid)
        if how == 'filled':
            return ALREADY_FILLED
        if how == 'cancelled':
            return ALREADY_CANCELLED
        return UNKNOWN_ORDER

    def _status(self, order: RestingOrder, status: str) -> dict:
        return to_wire(BrokerdStatus(
            reqid=order.reqid, status=status, account=order.account,
            filled=order.filled, remaining=order.remaining,
            broker_details={'oid': order.oid, 'symbol': order.symbol, 'broker': self.broker},
        ))

    def _error(self, oid: str | None, reqid: ReqId | None, symbol: str | None, reason: str) -> dict:
        return to_wire(BrokerdError(
            oid=oid, reqid=reqid, symbol=symbol, reason=reason,
            broker_details={'broker': self.broker},
        ))


def _valid_price(price: Any) -> bool:
    return (
        isinstance(price, (int, float)) and not isinstance(price, bool)
        and math.isfinite(price) and price > 0
    )


# ---------------------------------------------------------------------------------------------
# the trio side: dialogues and the engine base

class Dialogue:
    """One open ``trades_dialogue``: an unbounded outbox its sender task drains to the stream.

    Sending never blocks and never raises, so it can be called from synchronous code (a quote
    listener, the receive loop). Unbounded on purpose: order events must never be dropped, and
    the peer (emsd) always drains its side.
    """

    _ids = itertools.count(1)

    def __init__(self, peer: str = '') -> None:
        import trio  # local: the pure core above must not need trio

        self.id = next(self._ids)
        self.peer = peer
        self._tx, self.outbox = trio.open_memory_channel[dict](math.inf)
        self.open = True
        self.sent = 0

    def send(self, msg: dict) -> bool:
        if not self.open:
            return False
        try:
            self._tx.send_nowait(msg)
        except Exception:  # closed/broken: the dialogue is ending
            self.open = False
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self.open = False
        self._tx.close()

    def __repr__(self) -> str:
        return f'<Dialogue #{self.id} {self.peer}>'


class DialogueEngine:
    """One simulated venue in one process: a :class:`ClearingCore` plus its open dialogues.

    Subclasses set when requests are processed by overriding :meth:`on_request` (default:
    at once) and may schedule work with :meth:`spawn` (tasks in the engine's nursery, which
    outlives any dialogue: orders keep resting, and filling, when a client goes away).
    """

    def __init__(self, broker: str, next_reqid: Callable[[], ReqId], *, name: str = '') -> None:
        self.broker = broker
        self.name = name or broker
        self.core = ClearingCore(broker, next_reqid)
        self.dialogues: set[Dialogue] = set()
        self.owners: dict[ReqId, Dialogue] = {}
        self.dialogues_opened = 0
        self.rejected = 0
        self.received = 0
        self.requests: deque[dict] = deque(maxlen=STATS_MEMORY)
        self.journal: deque[dict] = deque(maxlen=STATS_MEMORY)
        self.nursery: Any = None  # a trio.Nursery set by bind()

    # -- wiring ------------------------------------------------------------------------

    def bind(self, nursery: Any) -> None:
        """Give the engine the long-lived nursery its background tasks run in."""
        if self.nursery is None:
            self.nursery = nursery

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the engine's nursery; a failure is logged, never propagated."""
        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception:
                log.exception('%s: background task %s failed', self.name, getattr(fn, '__name__', fn))

        self.nursery.start_soon(guarded)

    # -- the dialogue ----------------------------------------------------------------

    async def serve(self, ctx: Any) -> None:
        """Run one ``trades_dialogue`` on a tractor context until the peer closes its stream."""
        import tractor
        import trio

        from ..service._ipc import send_with_heartbeats

        if self.nursery is None:
            self.bind(tractor.current_actor()._service_n)
        dialogue = Dialogue(str(getattr(ctx.chan, 'uid', '') or ''))
        self.dialogues_opened += 1
        self.dialogues.add(dialogue)
        log.info('%s: trades dialogue %r opened', self.name, dialogue)
        try:
            await ctx.started(self.core.position_msgs())
            async with ctx.open_stream() as stream, trio.open_nursery() as n:

                async def sender() -> None:
                    try:
                        # heartbeats let emsd tell a dead venue from a quiet one
                        await send_with_heartbeats(dialogue.outbox, stream)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
                        log.warning('%s: %r: peer gone while sending', self.name, dialogue)
                    n.cancel_scope.cancel()

                n.start_soon(sender)
                # the receive loop: always drains the stream, never blocks, never dies
                async for raw in stream:
                    self.handle_raw(dialogue, raw)
                n.cancel_scope.cancel()
        finally:
            dialogue.close()
            self.dialogues.discard(dialogue)
            for reqid in [r for r, d in self.owners.items() if d is dialogue]:
                del self.owners[reqid]
            log.info('%s: trades dialogue %r closed', self.name, dialogue)

    def handle_raw(self, dialogue: Dialogue, raw: Any) -> None:
        """Validate one received message and hand it on; nothing here may raise."""
        self.received += 1
        try:
            req = parse_broker_request(raw)
        except MsgError as err:
            self._reject(dialogue, raw, str(err))
            return
        self.requests.append(to_wire(req))
        self._journal('in', req.name, req.oid, req.reqid)
        try:
            self.on_request(dialogue, req)
        except Exception as err:
            log.exception('%s: failed to handle %r', self.name, raw)
            self._reject(dialogue, raw, f'internal error: {type(err).__name__}: {err}')

    def _reject(self, dialogue: Dialogue, raw: Any, reason: str) -> None:
        self.rejected += 1
        log.warning('%s: rejected request %r: %s', self.name, raw, reason)
        try:
            err = self.core.reject(raw, reason)
        except Exception:
            log.exception('%s: could not build an error for %r', self.name, raw)
            return
        if err is not None:
            self.emit(dialogue, [err])

    def on_request(self, dialogue: Dialogue, req: BrokerdOrder | BrokerdCancel) -> None:
        """Decide when to process a valid request (subclasses hold or delay); default: now."""
        self.process(dialogue, req)

    # -- processing --------------------------------------------------------------------

    def process(self, dialogue: Dialogue, req: BrokerdOrder | BrokerdCancel) -> None:
        """Apply a request to the core and send what it produced (synchronous)."""
        if isinstance(req, BrokerdCancel):
            msgs = self.core.cancel(req)
            if msgs and msgs[0]['name'] == 'status':
                self.owners.pop(req.reqid, None)
            self.emit(dialogue, msgs)
            return
        msgs, execs = self.core.submit(req)
        if msgs and msgs[0]['name'] != 'error':
            # the dialogue that placed (or last modified) an order gets its fills
            self.owners[msgs[0]['reqid']] = dialogue
        self.emit(dialogue, msgs)
        for ex in execs:
            self.execute(ex)

    def on_quote(self, symbol: str, quote: Mapping[str, Any]) -> None:
        """Feed a quote to the core and execute what it crossed (synchronous, never raises)."""
        try:
            execs = self.core.on_quote(symbol, quote)
        except Exception:
            log.exception('%s: failed to match quote for %s', self.name, symbol)
            return
        for ex in execs:
            self.execute(ex)

    def execute(self, ex: Execution) -> None:
        """Report an execution now; subclasses may delay it (the order already left the book)."""
        self.settle(ex)

    def settle(self, ex: Execution) -> None:
        """Book the execution; send fill + filled to the order's dialogue, the position to all."""
        msgs, position = self.core.settle(ex)
        owner = self.owners.pop(ex.reqid, None)
        if owner is not None and owner.open:
            self.emit(owner, msgs)
        else:  # its dialogue left: whoever is connected now may know the order
            for d in list(self.dialogues):
                self.emit(d, msgs)
        for d in list(self.dialogues):
            self.emit(d, [position])

    def emit(self, dialogue: Dialogue, msgs: Iterable[dict]) -> None:
        for msg in msgs:
            oid = msg.get('oid') or (msg.get('broker_details') or {}).get('oid')
            self._journal('out', msg.get('name'), oid, msg.get('reqid'))
            dialogue.send(msg)

    def _journal(self, direction: str, name: Any, oid: Any, reqid: Any) -> None:
        self.journal.append({
            'dir': direction, 'name': name, 'oid': oid, 'reqid': reqid, 'time_ns': time.time_ns(),
        })

    # -- stats --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters and open orders (tests and ``piker`` CLIs read this through an RPC)."""
        return {
            'broker': self.broker,
            'dialogues_opened': self.dialogues_opened,
            'dialogues_active': len(self.dialogues),
            'received': self.received,
            'rejected': self.rejected,
            'executions': self.core.executions,
            'resting_orders': len(self.core.book),
            'open_orders': [o.summary() for o in self.core.book.orders()],
            'positions': [asdict(p) for p in self.core.positions.all(include_flat=True)],
            'l1': {
                sym: {'bid': self.core.bids.get(sym), 'ask': self.core.asks.get(sym)}
                for sym in sorted(set(self.core.bids) | set(self.core.asks))
            },
            'requests': list(self.requests),
            'journal': list(self.journal),
        }
