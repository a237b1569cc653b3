"""The client API: :func:`open_ems` and the :class:`OrderBook` handle it yields.

``OrderBook.send/update/cancel`` are synchronous and never block or raise on a burst (the
command channel is unbounded), so Qt callbacks and a cancel-all of hundreds of orders are safe.
Statuses for the client's orders (and positions) arrive as typed messages on the trades stream.
"""
from __future__ import annotations

import math
import uuid
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Literal

import tractor
import trio

from ..brokers import get_brokermod
from ..log import get_logger
from ..service import maybe_open_emsd, maybe_open_pikerd
from ..service._ipc import HEARTBEAT_TIMEOUT_S, is_heartbeat
from ..symbols import parse_fqsn
from . import _ems
from ._messages import BrokerdPosition, Cancel, MsgError, Order, Status, parse_ems_msg, to_wire

log = get_logger(__name__)

Mode = Literal['paper', 'live', 'dark']

# mode -> (default exec_mode, default account)
MODES: dict[str, tuple[str, str]] = {
    'paper': ('live', 'paper'),   # straight to the paper engine
    'live': ('live', 'live'),     # straight to the broker's live endpoint
    'dark': ('dark', 'paper'),    # held in emsd, released to the paper engine on trigger
}


class EmsLost(RuntimeError):
    """emsd stopped sending statuses and heartbeats (it died or hung)."""


@dataclass
class OrderBook:
    """Place, modify and cancel orders; every method is safe to call from sync code."""

    fqsn: str
    account: str
    exec_mode: str
    name: str
    _tx: trio.MemorySendChannel = field(repr=False)
    orders: dict[str, Order] = field(default_factory=dict)
    """The latest request per oid: ours as sent, and others' as learned from statuses."""
    open_orders: list[dict] = field(default_factory=list)
    """The start-up snapshot: the last status (wire dict) of each order in this client's scope."""

    def _push(self, msg: dict) -> None:
        self._tx.send_nowait(msg)  # unbounded: never WouldBlock

    def send(
        self,
        action: str,
        price: float,
        size: float = 0.0,
        *,
        symbol: str | None = None,
        exec_mode: str | None = None,
        account: str | None = None,
        oid: str | None = None,
    ) -> str:
        """Submit a new order (or, with a known ``oid``, a modify); returns its oid."""
        symbol = symbol or self.fqsn
        _, broker = parse_fqsn(symbol)
        order = Order(
            action=action, oid=oid or uuid.uuid4().hex, symbol=symbol, price=price,
            size=size, brokers=[broker], exec_mode=exec_mode or self.exec_mode,
            account=account or self.account,
        )
        self.orders[order.oid] = order
        self._push(to_wire(order))
        return order.oid

    def update(self, oid: str, **fields: Any) -> None:
        """Modify a known order (e.g. ``price=``, ``size=``); the oid stays the same."""
        base = self.orders.get(oid)
        if base is None:
            raise KeyError(f'unknown order {oid}: nothing to update')
        order = Order.model_validate({**base.model_dump(), **fields, 'owner': None})
        self.orders[oid] = order
        self._push(to_wire(order))

    def cancel(self, oid: str) -> None:
        """Cancel an order by oid (unknown oids get an ``error`` status from emsd)."""
        base = self.orders.get(oid)
        self._push(to_wire(Cancel(oid=oid, symbol=base.symbol if base else self.fqsn)))

    def send_raw(self, msg: Any) -> None:
        """Send an arbitrary message as is (for tools and tests of emsd's validation)."""
        self._push(msg)

    async def asend(self, *args: Any, **kwargs: Any) -> str:
        """Async twin of :meth:`send`."""
        return self.send(*args, **kwargs)

    async def aupdate(self, oid: str, **fields: Any) -> None:
        """Async twin of :meth:`update`."""
        self.update(oid, **fields)

    async def acancel(self, oid: str) -> None:
        """Async twin of :meth:`cancel`."""
        self.cancel(oid)


@dataclass
class TradesStream:
    """Typed messages from emsd (:class:`Status`, :class:`BrokerdPosition`) for this client."""

    rx: trio.MemoryReceiveChannel
    lost: str | None = None

    async def receive(self) -> Status | BrokerdPosition:
        """The next message; raises :class:`EmsLost` if emsd died."""
        try:
            return await self.rx.receive()
        except trio.EndOfChannel:
            raise EmsLost(self.lost or 'emsd connection closed') from None

    def __aiter__(self) -> 'TradesStream':
        return self

    async def __anext__(self) -> Status | BrokerdPosition:
        try:
            return await self.receive()
        except EmsLost:
            if self.lost:
                raise
            raise StopAsyncIteration from None


async def _write(rx: trio.MemoryReceiveChannel, stream: tractor.MsgStream, drained: trio.Event) -> None:
    """Send queued commands in order; ``drained`` is set once the closed queue is empty."""
    try:
        async for msg in rx:
            await stream.send(msg)
    finally:
        drained.set()


async def _read(
    stream: tractor.MsgStream,
    tx: trio.MemorySendChannel,
    book: OrderBook,
    trades: TradesStream,
    heartbeat_timeout: float,
) -> None:
    """Always drain emsd's stream (no head-of-line blocking) into the local trades stream."""
    async with tx:
        while True:
            try:
                with trio.fail_after(heartbeat_timeout):
                    raw = await stream.receive()
            except trio.TooSlowError:
                trades.lost = f'emsd sent nothing for {heartbeat_timeout:g}s: connection lost'
                log.error(trades.lost)
                return
            except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
                return
            if is_heartbeat(raw):
                continue
            try:
                msg = parse_ems_msg(raw)
            except MsgError as err:
                log.warning('invalid message from emsd: %s', err)
                continue
            if isinstance(msg, Status) and msg.req is not None and msg.oid not in book.orders:
                book.orders[msg.oid] = msg.req
            tx.send_nowait(msg)


@asynccontextmanager
async def open_ems(
    fqsn: str,
    mode: Mode = 'paper',
    *,
    account: str | None = None,
    name: str | None = None,
    loglevel: str | None = None,
    watch: Literal['symbol', 'all'] | None = None,
    control_others: bool = False,
    on_disconnect: Literal['keep', 'cancel', 'cancel-dark'] = 'keep',
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
) -> AsyncIterator[tuple[OrderBook, TradesStream, list[BrokerdPosition]]]:
    """Connect to emsd (spawning it if needed) for ``fqsn`` and yield ``(book, trades, positions)``.

    ``mode`` sets the defaults of :meth:`OrderBook.send`: ``paper`` sends orders straight to the
    paper engine, ``live`` straight to the broker's live endpoint, ``dark`` holds them in emsd
    until the market crosses them. Works with no tractor runtime (joins or becomes pikerd).

    ``name`` identifies the client: it owns the orders it places, and a later client of the
    same name adopts them. ``watch`` subscribes to other clients' flows (``'symbol'``: this
    fqsn, ``'all'``: everything on the broker); ``control_others`` lets this session cancel or
    modify watched orders. ``on_disconnect`` is what emsd does with this client's open orders
    when it leaves or dies: ``keep``, ``cancel`` or ``cancel-dark``.
    """
    if mode not in MODES:
        raise ValueError(f'mode must be one of {", ".join(MODES)}, not {mode!r}')
    _, broker = parse_fqsn(fqsn)
    get_brokermod(broker)  # an unknown broker is a clear local error, before any actor starts
    exec_mode, default_account = MODES[mode]
    account = account or default_account
    async with AsyncExitStack() as stack:
        if tractor.current_actor(err_on_no_runtime=False) is None:
            await stack.enter_async_context(maybe_open_pikerd(loglevel=loglevel))
        name = name or tractor.current_actor().name
        portal = await stack.enter_async_context(maybe_open_emsd(loglevel=loglevel))
        ctx, first = await stack.enter_async_context(
            portal.open_context(
                _ems._emsd_main, fqsn=fqsn, client=name, account=account, watch=watch,
                control_others=control_others, on_disconnect=on_disconnect,
            )
        )
        positions = [BrokerdPosition.model_validate(p) for p in first['positions']]
        cmd_tx, cmd_rx = trio.open_memory_channel[dict](math.inf)
        book = OrderBook(
            fqsn=fqsn.lower(), account=account, exec_mode=exec_mode, name=name, _tx=cmd_tx,
            open_orders=list(first.get('orders', ())),
        )
        status_tx, status_rx = trio.open_memory_channel[Any](math.inf)
        trades = TradesStream(status_rx)
        for snap in book.open_orders:
            status = Status.model_validate(snap)
            if status.req is not None:
                book.orders[status.oid] = status.req
            status_tx.send_nowait(status)
        ok = False
        try:
            async with ctx.open_stream() as stream, trio.open_nursery() as n:
                drained = trio.Event()
                n.start_soon(_write, cmd_rx, stream, drained)
                n.start_soon(_read, stream, status_tx, book, trades, heartbeat_timeout)
                yield book, trades, positions
                # let queued commands (e.g. a final cancel-all) reach emsd before closing
                cmd_tx.close()
                with trio.move_on_after(2):
                    await drained.wait()
                n.cancel_scope.cancel()
            ok = trades.lost is None
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1) as cs:
                if ok:
                    await ctx.result()
                else:
                    await ctx.cancel()
            if cs.cancelled_caught and ok:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await ctx.cancel()
