"""The client API: :func:`open_ems` and the :class:`OrderBook` handle it yields.

``OrderBook.send/update/cancel`` are synchronous and never block or raise on a burst (the
command channel is unbounded), so Qt callbacks and a cancel-all of hundreds of orders are safe.
Statuses for the client's orders (and positions) arrive as typed messages on the trades stream.
"""
from __future__ import annotations

import math
import os
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Literal

import tractor
import trio
from pydantic import ValidationError

from ..brokers import get_brokermod
from ..log import get_logger
from ..service import maybe_open_emsd, maybe_open_pikerd
from ..service._auth import Refused, WatchRefused, client_credential, credential_for, make_auth, refusal, use_credential
from ..service._specs import ServiceDown, remote_error
from ..service._ipc import HEARTBEAT_TIMEOUT_S, Silence, abandon_context, is_heartbeat
from ..symbols import parse_fqsn
from . import _ems
from ._orders import owner_name
from ._messages import (
    BrokerdPosition,
    Cancel,
    MsgError,
    Order,
    Status,
    TradingState,
    fast_order_wire,
    order_wire,
    parse_ems_msg,
    to_wire,
    unbatch,
    unpack_snapshot,
)

log = get_logger(__name__)

Mode = Literal['paper', 'live', 'dark']

# mode -> (default exec_mode, default account)
MODES: dict[str, tuple[str, str]] = {
    'paper': ('live', 'paper'),   # straight to the paper engine
    'live': ('live', 'live'),     # straight to the broker's live endpoint
    'dark': ('dark', 'paper'),    # held in emsd, released to the paper engine on trigger
}


class EmsLost(RuntimeError):
    """emsd is gone: cancelled, crashed, killed, or silent for longer than the heartbeat window.

    Raised by the trades stream (``receive()`` and ``async for``) as soon as the connection is
    known lost; ``reason`` says how it was lost.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class OrderBook:
    """Place, modify and cancel orders; every method is safe to call from sync code."""

    fqsn: str
    account: str
    exec_mode: str
    name: str
    _tx: trio.MemorySendChannel = field(repr=False)
    _orders: dict[str, Order] = field(default_factory=dict, repr=False)
    _oid_pool: list[str] = field(default_factory=list, repr=False)
    _pending: dict[str, tuple | dict] = field(default_factory=dict, repr=False)
    """Requests not yet made into ``Order`` objects: sent by the fast path of :meth:`send`
    (a tuple of its fields), or from the start-up snapshot (emsd's wire dict)."""
    open_orders: list[dict] = field(default_factory=list)
    """The start-up snapshot: the last status (wire dict) of each order in this client's scope."""
    owner: str = ''
    """Who owns the orders this book places: ``participant/name`` (``name`` for ``local``)."""
    participant: str = 'local'
    trading_state: str = 'active'
    """emsd's trading state for this account (``active``, ``reducing``, ``halted``): from the
    start state, then kept current by the ``TradingState`` messages of the trades stream."""

    def _push(self, msg: dict) -> None:
        self._tx.send_nowait(msg)  # unbounded: never WouldBlock

    @property
    def orders(self) -> dict[str, Order]:
        """The latest request per oid: ours as sent, and others' as learned from statuses.

        ``send`` defers building its ``Order`` (a few µs of pydantic) to the first read here.
        """
        if self._pending:
            pending, self._pending = self._pending, {}
            for oid, item in pending.items():
                if type(item) is dict:  # a start-up snapshot's request (as emsd sent it)
                    try:
                        self._orders[item['oid']] = Order.model_validate(item)
                    except (ValidationError, KeyError) as err:
                        log.warning('invalid order in the start-up snapshot: %s', err)
                    continue
                action, price, size, symbol, exec_mode, account = item
                self._orders[oid] = Order(action=action, oid=oid, symbol=symbol, price=price,
                                          size=size, exec_mode=exec_mode, account=account)
        return self._orders

    def unknown(self, oid: str) -> bool:
        """Whether no request of ``oid`` is known yet (without building deferred ``Order``s)."""
        return oid not in self._orders and oid not in self._pending

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
        """Submit a new order (or, with a known ``oid``, a modify); returns its oid.

        The order is validated here (a bad one raises ``pydantic.ValidationError``) and its
        wire dict queued; nothing else happens in the caller's time (a few microseconds). A
        plainly valid order is checked by hand (:func:`fast_order_wire`) and its ``Order`` made
        when :attr:`orders` is next read.
        """
        if not oid:
            if not self._oid_pool:  # random oids, 256 per syscall (unpredictable all the same)
                pool = os.urandom(16 * 256).hex()
                self._oid_pool = [pool[i:i + 32] for i in range(0, len(pool), 32)]
            oid = self._oid_pool.pop()
        symbol = symbol or self.fqsn
        exec_mode = exec_mode or self.exec_mode
        account = account or self.account
        wire = fast_order_wire(action, oid, symbol, price, size, exec_mode, account)
        if wire is None:  # not a plainly valid order: pydantic decides (and words the refusal)
            order = Order(
                action=action, oid=oid, symbol=symbol, price=price, size=size,
                exec_mode=exec_mode, account=account,
            )  # brokers: the symbol's broker (Order's default)
            self.orders[oid] = order
            self._push(order_wire(order))
            return oid
        self._pending[oid] = (action, wire['price'], wire['size'], symbol, exec_mode, account)
        self._push(wire)
        return oid

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


@dataclass(slots=True)
class _SnapshotStatus:
    """A start-up snapshot's Status wire dict, validated by :meth:`TradesStream.receive`."""

    wire: Any


def _typed(msg: Any) -> Any:
    """A queued message as the trades stream yields it (``None``: an invalid one, skipped)."""
    if type(msg) is not _SnapshotStatus:
        return msg
    try:
        return Status.model_validate(msg.wire)
    except ValidationError as err:  # as the reader does for a bad live message
        log.warning('invalid status in the start-up snapshot: %s', err)
        return None


def queue_snapshot(book: OrderBook, status_tx: trio.MemorySendChannel) -> None:
    """Queue the start-up snapshot (``book.open_orders``) on the trades stream and its requests
    on ``book.orders``, both validated when read: a thousand statuses are several ms of pydantic
    that would otherwise delay every reconnect."""
    for snap in book.open_orders:
        req = snap.get('req') if isinstance(snap, dict) else None
        if isinstance(req, dict) and isinstance(req.get('oid'), str):
            book._pending[req['oid']] = req
        status_tx.send_nowait(_SnapshotStatus(snap))


@dataclass
class TradesStream:
    """Typed messages from emsd (:class:`Status`, :class:`BrokerdPosition`, and
    :class:`TradingState` when ``piker halt/reduce/resume`` changes the account's state) for
    this client.

    Iteration ends quietly only when the client itself leaves :func:`open_ems`; if emsd goes
    away first, ``receive()`` and ``async for`` raise :class:`EmsLost` (after the messages that
    did arrive).
    """

    rx: trio.MemoryReceiveChannel
    tx: trio.MemorySendChannel | None = field(default=None, repr=False)
    lost: str | None = None

    def lose(self, reason: str) -> None:
        """Record that emsd is gone (the first reason wins) and end the stream for readers."""
        if self.lost is None:
            self.lost = reason
            log.info('lost the EMS: %s', reason)
        if self.tx is not None:
            self.tx.close()

    async def receive(self) -> Status | BrokerdPosition:
        """The next message; raises :class:`EmsLost` if emsd is gone."""
        while True:
            try:
                msg = _typed(await self.rx.receive())
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise EmsLost(self.lost or 'the EMS connection was closed') from None
            if msg is not None:
                return msg

    def receive_nowait(self) -> Status | BrokerdPosition:
        """The next message if one is queued, else ``trio.WouldBlock``; :class:`EmsLost` as
        :meth:`receive`."""
        while True:
            try:
                msg = _typed(self.rx.receive_nowait())
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise EmsLost(self.lost or 'the EMS connection was closed') from None
            if msg is not None:
                return msg

    def __aiter__(self) -> 'TradesStream':
        return self

    async def __anext__(self) -> Status | BrokerdPosition:
        try:
            return await self.receive()
        except EmsLost:
            if self.lost:
                raise
            raise StopAsyncIteration from None


def _describe_remote(err: BaseException) -> str:
    """One line for an error that came from (or instead of) emsd."""
    if isinstance(err, BaseExceptionGroup):
        return _describe_remote(err.exceptions[0])
    if isinstance(err, tractor.ContextCancelled):
        return 'emsd was cancelled'
    if isinstance(err, tractor.RemoteActorError):
        msgdata = getattr(err, 'msgdata', None) or {}
        tb = (msgdata.get('tb_str') or '').strip().splitlines()
        last = tb[-1] if tb else type(err).__name__
        return f'emsd failed: {last}'
    return f'connection to emsd broke ({type(err).__name__}: {err})'


def _is_link_error(err: BaseException) -> bool:
    """Whether ``err`` (or every member of a group) is what a dead or cancelled emsd causes."""
    if isinstance(err, BaseExceptionGroup):
        return all(_is_link_error(e) for e in err.exceptions)
    return isinstance(err, (
        tractor.RemoteActorError, trio.EndOfChannel, trio.ClosedResourceError,
        trio.BrokenResourceError, OSError, EmsLost,
    ))


async def _write(
    rx: trio.MemoryReceiveChannel,
    stream: tractor.MsgStream,
    drained: trio.Event,
    trades: TradesStream,
) -> None:
    """Send queued commands in order; ``drained`` is set once the closed queue is empty.

    A failing send means emsd is gone: the trades stream is told at once.
    """
    try:
        async for msg in rx:
            await stream.send(msg)
    except Exception as err:  # noqa: BLE001 - any send failure is a lost link
        trades.lose(f'could not send to emsd: {_describe_remote(err)}')
    finally:
        drained.set()


async def _read(
    stream: tractor.MsgStream,
    tx: trio.MemorySendChannel,
    book: OrderBook,
    trades: TradesStream,
    heartbeat_timeout: float,
) -> None:
    """Always drain emsd's stream (no head-of-line blocking) into the local trades stream.

    This task only ends by itself when emsd is gone (its stream ended, it sent an error, or
    it went silent past ``heartbeat_timeout``); the client leaving cancels it instead.
    """
    reason = 'emsd closed the connection'
    try:
        with Silence(heartbeat_timeout) as silence:
            while True:
                try:
                    raw = await stream.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
                    reason = 'emsd ended the connection (it was stopped or restarted)'
                    return
                except Exception as err:  # noqa: BLE001 - remote errors end the link, with their reason
                    reason = _describe_remote(err)
                    return
                silence.heard()
                if is_heartbeat(raw):
                    continue
                for item in unbatch(raw):  # a batch (list) when emsd had a backlog for us
                    try:
                        msg = parse_ems_msg(item)
                    except MsgError as err:
                        log.warning('invalid message from emsd: %s', err)
                        continue
                    if isinstance(msg, Status) and msg.req is not None and book.unknown(msg.oid):
                        book._orders[msg.oid] = msg.req
                    elif isinstance(msg, TradingState):
                        book.trading_state = msg.state
                    try:
                        tx.send_nowait(msg)
                    except (trio.ClosedResourceError, trio.BrokenResourceError):
                        return  # already lost (a send failed): nothing reads any more
        # only the silence deadline ends the loop without returning
        reason = f'emsd sent nothing (not even a heartbeat) for {heartbeat_timeout:g}s'
    except BaseException:
        reason = None  # cancelled: the client is leaving
        raise
    finally:
        if reason is not None:
            trades.lose(reason)


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
    participant: str | None = None,
    token: str | None = None,
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

    ``participant`` and ``token`` say who this client acts for (default: ``$PIKER_EMS_PARTICIPANT``
    / ``$PIKER_EMS_TOKEN``, else the local participant, whose key comes from the cluster secret
    on this machine). Its orders are owned by ``participant/name`` (just ``name`` for the local
    participant). A wrong token, or ``watch``/``control_others`` without the role, raises
    :class:`~piker_ems.service.Refused`.
    """
    if mode not in MODES:
        raise ValueError(f'mode must be one of {", ".join(MODES)}, not {mode!r}')
    _, broker = parse_fqsn(fqsn)
    get_brokermod(broker)  # an unknown broker is a clear local error, before any actor starts
    exec_mode, default_account = MODES[mode]
    account = account or default_account
    trades: TradesStream | None = None
    body_error: BaseException | None = None
    try:
        async with AsyncExitStack() as stack:
            # join pikerd, or become it (no runtime yet), or embed one in this app's tree when
            # none runs anywhere: before the credential, since a pikerd's first start makes the
            # cluster secret the local participant's key comes from
            await stack.enter_async_context(maybe_open_pikerd(loglevel=loglevel))
            name = name or tractor.current_actor().name
            cred = credential_for(participant, token) if participant or token else client_credential()
            with use_credential(cred):
                portal = await stack.enter_async_context(maybe_open_emsd(loglevel=loglevel))
            try:
                ctx, first = await stack.enter_async_context(
                    portal.open_context(
                        _ems._emsd_main, fqsn=fqsn, client=name, account=account, watch=watch,
                        control_others=control_others, on_disconnect=on_disconnect,
                        auth=make_auth(_ems.EMSD_MAIN, cred),
                    )
                )
            except BaseException as err:
                refused = refusal(err) or remote_error(err, ServiceDown)
                if refused is not None:
                    raise refused from None
                raise
            # tractor 0.1.0a5 relays an error from emsd (e.g. its ContextCancelled when pikerd
            # stops it) by raising it in a nursery around this block, which silently cancels
            # the caller's body. The error is also queued on the context's stream, where
            # _read turns it into EmsLost for the trades stream: use that path only.
            ctx._scope_nursery = None
            positions = [BrokerdPosition.model_validate(p) for p in first['positions']]
            cmd_tx, cmd_rx = trio.open_memory_channel[dict](math.inf)
            book = OrderBook(
                fqsn=fqsn.lower(), account=account, exec_mode=exec_mode, name=name, _tx=cmd_tx,
                open_orders=unpack_snapshot(first.get('orders', [])),
                owner=owner_name(cred.participant, name), participant=cred.participant,
                trading_state=first.get('trading_state', 'active'),
            )
            status_tx, status_rx = trio.open_memory_channel[Any](math.inf)
            trades = TradesStream(status_rx, status_tx)
            queue_snapshot(book, status_tx)
            try:
                async with ctx.open_stream() as stream, trio.open_nursery() as n:
                    drained = trio.Event()
                    n.start_soon(_write, cmd_rx, stream, drained, trades)
                    n.start_soon(_read, stream, status_tx, book, trades, heartbeat_timeout)
                    try:
                        yield book, trades, positions
                    except BaseException as err:
                        body_error = err
                        raise
                    # let queued commands (e.g. a final cancel-all) reach emsd before closing
                    cmd_tx.close()
                    if trades.lost is None:
                        with trio.move_on_after(2):
                            await drained.wait()
                    n.cancel_scope.cancel()
            finally:
                await _leave(ctx, clean=trades.lost is None and body_error is None)
    except BaseException as err:
        # tractor 0.1.0a5 answers a lost emsd on the way out with its own errors (a send to the
        # dead peer, its ContextCancelled): once the loss is known, those are only its echo
        if trades is None or trades.lost is None or not _is_link_error(err):
            raise
        if body_error is None:
            log.info('left open_ems after losing the EMS (%s)', trades.lost)
            return
        if isinstance(body_error, EmsLost):
            raise body_error from None
        if _is_link_error(body_error):
            raise EmsLost(trades.lost) from None
        raise body_error from None


@asynccontextmanager
async def open_ems_watching(
    fqsn: str,
    watch: Literal['symbol', 'all'],
    on_not_watching: Callable[[Refused], Any] | None = None,
    **kwargs: Any,
) -> AsyncIterator[tuple[OrderBook, TradesStream, list[BrokerdPosition]]]:
    """:func:`open_ems` watching other clients' orders (``watch``), or, for a participant
    without the watch role (:class:`~piker_ems.service._auth.WatchRefused`), not watching:
    its own orders only. ``on_not_watching`` is told that refusal. Any other error is raised."""
    async with AsyncExitStack() as stack:
        try:
            session = await stack.enter_async_context(open_ems(fqsn, watch=watch, **kwargs))
        except Exception as err:
            refused = refusal(err)
            if not isinstance(refused, WatchRefused):
                raise
            if on_not_watching is not None:
                on_not_watching(refused)
            session = await stack.enter_async_context(open_ems(fqsn, **kwargs))
        yield session


async def _leave(ctx: tractor.Context, clean: bool) -> None:
    """End the emsd context without ever waiting long.

    A clean exit waits (bounded) for emsd's side to finish; anything else, or no answer in
    time, cancels the context and closes its feeder so tractor's own exit returns at once
    (0.1.0a5 would otherwise wait forever on the result of a dead callee).
    """
    with trio.CancelScope(shield=True):
        if clean:
            with trio.move_on_after(1) as cs:
                try:
                    await ctx.result()
                    return
                except Exception as err:  # noqa: BLE001 - emsd died while we left
                    log.info('emsd ended badly while we left: %s', _describe_remote(err))
            if cs.cancelled_caught:
                log.warning('emsd did not end our session within 1s: cancelling it')
        await abandon_context(ctx)
