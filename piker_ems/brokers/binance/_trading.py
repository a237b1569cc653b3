# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
The live ``trades_dialogue`` of ``brokerd.binance`` (the contract of ``docs/backends.md``).

Identity: the EMS ``oid`` is Binance's ``newClientOrderId`` **and** our ``reqid``, so the ack
can go out before the venue is asked (no other event of the order can precede it), a modify
keeps its reqid although Binance's cancel-replace makes a new ``orderId``, and after any crash
the open orders list (``clientOrderId``) tells emsd which are its own. One EMS order may so be
several venue orders ("legs": the original and its replacements); its ``filled`` is the sum of
theirs, and the cancel of a replaced leg is not the end of the order.

Truth: order events come from the user-data stream (``executionReport``) and from the REST
replies (``newOrderRespType=FULL`` lists an order's immediate fills). Both are applied through
one function that only reports what changed, and every fill is keyed by Binance's trade id, so
an execution seen twice is reported once. While the user stream is down nothing is guessed:
when it is back (every time it (re)subscribes) the working orders are queried over REST and
their missing trades fetched (``/api/v3/myTrades?orderId=``).

Positions are spot balances: the position of ``btcusdt`` is the total BTC holding (free +
locked), sent after fills and on connect for the symbols traded, held, or listed in
``[binance] symbols`` (default ``["btcusdt"]``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, AsyncIterator

import trio

from ...clearing._messages import (
    BrokerdCancel, BrokerdError, BrokerdFill, BrokerdOrder, BrokerdOrderAck, BrokerdOrderInfo,
    BrokerdPosition, BrokerdStatus, MsgError, VenueSnapshot, parse_broker_request, to_wire,
)
from ...config import load_config
from ...log import get_logger
from ._client import BinanceVenue, RateLimited, VenueError

__all__ = ['LiveDialogue', 'NO_KEYS', 'serve_keyless', 'serve_live']

log = get_logger(__name__)

NO_KEYS = (
    'binance: no API key configured: set api_key and secret in [binance] of piker_ems.toml '
    '(or PIKER_EMS_BINANCE_API_KEY / PIKER_EMS_BINANCE_SECRET), or trade with --account paper'
)

#: Binance order status -> our venue status word (see clearing._statuses).
STATUS = {
    'NEW': 'submitted', 'PENDING_NEW': 'submitted', 'PARTIALLY_FILLED': 'partially_filled',
    'FILLED': 'filled', 'CANCELED': 'cancelled', 'PENDING_CANCEL': 'submitted',
    'EXPIRED': 'expired', 'EXPIRED_IN_MATCH': 'expired', 'REJECTED': 'rejected',
}
FINAL = {'filled', 'cancelled', 'expired', 'rejected'}


def fmt(x: float) -> str:
    """A float as the shortest decimal string (what the trader typed, never rounded by us)."""
    text = format(Decimal(repr(float(x))).normalize(), 'f')
    return text


def _ms_to_ns(ms: Any) -> int:
    return int(ms) * 1_000_000


@dataclass
class Tracked:
    """One EMS order at Binance: its legs (venue orderId -> executed qty) and what we told emsd."""

    oid: str
    symbol: str            # our key, e.g. 'btcusdt'
    action: str            # 'buy' | 'sell'
    price: float
    size: float            # the EMS order's total size
    account: str
    order_id: int | None = None   # the current (newest) leg
    legs: dict[int, float] = field(default_factory=dict)
    replaced: set[int] = field(default_factory=set)
    reported: tuple = ()
    final: bool = False
    time_ns: int = 0

    @property
    def filled(self) -> float:
        return round(sum(self.legs.values()), 12)


class LiveDialogue:
    """One open live dialogue: orders, the outbox to emsd, the request worker."""

    def __init__(self, venue: BinanceVenue, account: str) -> None:
        self.venue = venue
        self.ex = venue.ex
        self.account = account
        self.orders: dict[str, Tracked] = {}
        self.by_order_id: dict[int, str] = {}
        self._out_tx, self.outbox = trio.open_memory_channel[dict](math.inf)
        self._req_tx, self._req_rx = trio.open_memory_channel[Any](math.inf)
        self.positions_dirty = trio.Event()
        section = load_config().get('binance') or {}
        self.symbols: set[str] = {str(s).lower() for s in section.get('symbols', ['btcusdt'])}
        self.current: str | None = None  # oid of the request in flight (for rate-limit notices)

    # -- output ------------------------------------------------------------------------

    def send(self, model: Any) -> None:
        try:
            self._out_tx.send_nowait(to_wire(model))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def on_rate_limit(self, text: str, wait: float) -> None:
        """The venue said 429: tell the owner of the request in flight; we retry after ``wait``."""
        tr = self.orders.get(self.current or '')
        if tr is not None and not tr.final:
            self.send(BrokerdStatus(
                reqid=tr.oid, status='rate_limited', account=tr.account, filled=tr.filled,
                remaining=max(0.0, tr.size - tr.filled), reason=f'{text}; retrying in {wait:g}s',
                broker_details={'oid': tr.oid},
            ))

    def report(self, tr: Tracked, venue_status: str, force: bool = False) -> None:
        """Send the order's status if it changed (``force``: a modify was accepted)."""
        status = STATUS.get(venue_status, venue_status.lower())
        if tr.final:
            return
        key = (status, tr.filled, tr.price, tr.size)
        if key == tr.reported and not force:
            return
        tr.reported = key
        final = status in FINAL
        tr.final = final
        self.send(BrokerdStatus(
            reqid=tr.oid, status=status, account=tr.account, filled=tr.filled,
            remaining=0.0 if final else max(0.0, round(tr.size - tr.filled, 12)),
            broker_details={'oid': tr.oid, 'order_id': tr.order_id, 'venue_status': venue_status},
        ))

    def fill(self, tr: Tracked, trade_id: Any, price: float, qty: float, fee: float,
             fee_asset: str | None, time_ms: Any, order_id: int) -> bool:
        """Report one execution once (keyed by Binance's trade id)."""
        fill_id = str(trade_id)
        if fill_id in self.venue.seen_fills or qty <= 0:
            return False
        self.venue.seen_fills.add(fill_id)
        market = self.venue.market(tr.symbol)
        if fee_asset == market['quote']:
            fee_q = fee
        elif fee_asset == market['base']:
            fee_q = fee * price
        else:
            fee_q = 0.0  # paid in a third asset (BNB): not in the quote currency
        self.send(BrokerdFill(
            reqid=tr.oid, oid=tr.oid, fill_id=fill_id, time_ns=_ms_to_ns(time_ms), action=tr.action,
            size=qty, price=price, fee=fee_q, broker_time=int(time_ms) / 1000,
            broker_details={'order_id': order_id, 'fee': fee, 'fee_asset': fee_asset},
        ))
        self.symbols.add(tr.symbol)
        self.positions_dirty.set()
        return True

    # -- applying venue state ----------------------------------------------------------------

    def adopt(self, tr: Tracked, order_id: int) -> None:
        if order_id not in tr.legs:
            tr.legs[order_id] = 0.0
        self.by_order_id[order_id] = tr.oid
        if order_id not in tr.replaced and (tr.order_id is None or order_id > tr.order_id):
            tr.order_id = order_id

    def track_from(self, info: dict, key: str, client_id: str) -> Tracked:
        """An order we did not place in this dialogue (an earlier one, or another client)."""
        tr = self.orders.get(client_id)
        if tr is None:
            tr = self.orders[client_id] = Tracked(
                oid=client_id, symbol=key, action=str(info['side']).lower(), price=float(info['price']),
                size=float(info['origQty']), account=self.account,
                time_ns=_ms_to_ns(info.get('time') or info.get('transactTime') or 0),
            )
        return tr

    def on_report(self, ev: dict) -> None:
        """One ``executionReport`` from the user stream."""
        order_id = int(ev['i'])
        exec_type, venue_status = ev.get('x'), ev.get('X')
        client_id = ev.get('C') if exec_type == 'CANCELED' and ev.get('C') else ev.get('c')
        oid = self.by_order_id.get(order_id) or client_id
        tr = self.orders.get(oid)
        if tr is None:
            key = str(ev.get('s', '')).lower()
            if key not in self.venue.markets:
                return
            tr = self.track_from({'side': ev['S'], 'price': ev['p'], 'origQty': ev['q'], 'time': ev.get('O')},
                                 key, oid)
        self.adopt(tr, order_id)
        if exec_type == 'TRADE':
            self.fill(tr, ev['t'], float(ev['L']), float(ev['l']), float(ev.get('n') or 0),
                      ev.get('N'), ev.get('T') or ev.get('E'), order_id)
        tr.legs[order_id] = max(tr.legs[order_id], float(ev['z']))
        if order_id == tr.order_id and order_id not in tr.replaced:  # (a leg being replaced
            self.report(tr, venue_status)                            # does not end the order)

    def apply_rest(self, tr: Tracked, res: dict, force: bool = False) -> None:
        """An order as a REST reply shows it (with its ``fills`` for ``FULL`` replies)."""
        order_id = int(res['orderId'])
        self.adopt(tr, order_id)
        when = res.get('transactTime') or res.get('updateTime') or int(time.time() * 1000)
        for f in res.get('fills') or []:
            self.fill(tr, f['tradeId'], float(f['price']), float(f['qty']), float(f.get('commission') or 0),
                      f.get('commissionAsset'), when, order_id)
        tr.legs[order_id] = max(tr.legs[order_id], float(res.get('executedQty') or 0))
        if order_id == tr.order_id:
            self.report(tr, res['status'], force=force)

    async def fetch_fills(self, tr: Tracked, order_id: int) -> None:
        """Report every trade of one leg we have not reported yet, oldest first (from the
        venue's trade list; :meth:`fill` skips those already seen)."""
        market = self.venue.market(tr.symbol)
        trades = await self.venue.rest(self.ex.private_get_mytrades, {
            'symbol': market['id'], 'orderId': order_id})
        for t in sorted(trades, key=lambda t: int(t['id'])):
            self.fill(tr, t['id'], float(t['price']), float(t['qty']), float(t.get('commission') or 0),
                      t.get('commissionAsset'), t['time'], order_id)

    async def catch_up(self, tr: Tracked, res: dict) -> None:
        """Fetch the trades of a leg whose executed quantity is ahead of the fills we saw."""
        order_id = int(res['orderId'])
        executed = float(res.get('executedQty') or 0)
        if executed > tr.legs.get(order_id, 0.0) + 1e-12:
            await self.fetch_fills(tr, order_id)
        self.apply_rest(tr, res)

    async def fill_gap(self, ev: dict) -> None:
        """Before an execution report is applied: if its leg had executed more before this
        trade than we know of (trades made while the user stream was down and not caught up,
        e.g. a reconcile that failed), fetch and report those trades first. Applying the report
        raises the leg to the venue's total, after which nothing would ask for them again."""
        if ev.get('x') != 'TRADE':
            return
        order_id = int(ev['i'])
        tr = self.orders.get(self.by_order_id.get(order_id) or ev.get('c'))
        if tr is None or order_id not in tr.legs:
            return
        before = float(ev['z']) - float(ev['l'])
        if before > tr.legs[order_id] + 1e-12:
            log.warning('binance: order %s executed %g before this trade, we saw %g: fetching '
                        'its trades', tr.oid, before, tr.legs[order_id])
            await self.fetch_fills(tr, order_id)

    async def reconcile(self) -> None:
        """After the user stream (re)subscribed: the venue's word on every working order."""
        for tr in [t for t in self.orders.values() if not t.final and t.order_id is not None]:
            market = self.venue.market(tr.symbol)
            try:
                res = await self.venue.rest(self.ex.private_get_order, {
                    'symbol': market['id'], 'orderId': tr.order_id})
                await self.catch_up(tr, res)
            except VenueError as err:
                log.warning('binance: reconciling %s failed: %s', tr.oid, err.reason)
            except Exception:  # one order's odd answer must not end the user stream's loop
                log.exception('binance: reconciling %s failed', tr.oid)

    # -- requests ----------------------------------------------------------------------------

    async def worker(self) -> None:
        """Handle requests one at a time, in order; one bad request never ends the loop."""
        async for raw in self._req_rx:
            try:
                req = parse_broker_request(raw)
            except MsgError as err:
                self.send(BrokerdError(oid=(raw or {}).get('oid') if isinstance(raw, dict) else None,
                                       reqid=(raw or {}).get('reqid') if isinstance(raw, dict) else None,
                                       reason=f'invalid request: {err}'))
                continue
            self.current = req.oid
            try:
                if isinstance(req, BrokerdCancel):
                    await self.cancel(req)
                elif req.oid in self.orders and not self.orders[req.oid].final and (
                        req.reqid is not None or self.orders[req.oid].order_id is not None):
                    if req.reqid is None:  # a resend of an order we already have: idempotent
                        self.send(BrokerdOrderAck(oid=req.oid, reqid=req.oid, account=req.account))
                    else:
                        await self.modify(req)
                else:
                    await self.new_order(req)
            except RateLimited as err:
                self.refuse(req, err.reason)
            except Exception as err:
                log.exception('binance: request %r failed', req)
                self.refuse(req, f'internal error: {type(err).__name__}: {err}')
            finally:
                self.current = None

    def refuse(self, req: BrokerdOrder | BrokerdCancel, reason: str) -> None:
        tr = self.orders.get(req.oid)
        if isinstance(req, BrokerdOrder) and req.reqid is None and tr is not None and tr.order_id is None:
            tr.final = True  # a new order the venue never took
        self.send(BrokerdError(oid=req.oid, reqid=req.reqid or req.oid, symbol=getattr(req, 'symbol', None),
                               reason=reason if reason.startswith('binance') else f'binance: {reason}'))

    def _market_of(self, symbol: str | None) -> dict | None:
        try:
            return self.venue.market(symbol or '')
        except LookupError:
            return None

    async def new_order(self, req: BrokerdOrder) -> None:
        self.send(BrokerdOrderAck(oid=req.oid, reqid=req.oid, account=req.account))
        key = req.symbol.lower()
        market = self._market_of(key)
        if req.account != self.account:
            return self.refuse(req, f'unknown account {req.account!r}: the binance account is {self.account!r}')
        if market is None:
            return self.refuse(req, f'no spot market {key!r}')
        tr = self.orders[req.oid] = Tracked(req.oid, key, req.action, req.price, req.size, req.account,
                                            time_ns=time.time_ns())
        params = {
            'symbol': market['id'], 'side': req.action.upper(), 'type': 'LIMIT', 'timeInForce': 'GTC',
            'quantity': fmt(req.size), 'price': fmt(req.price), 'newClientOrderId': req.oid,
            'newOrderRespType': 'FULL',
        }
        try:
            res = await self.venue.rest(self.ex.private_post_order, params)
        except RateLimited:
            raise
        except VenueError as err:
            if err.code == -2010 and 'Duplicate' in err.reason:
                # the venue has it already (emsd resent after a crash): that order it is
                res = await self.venue.rest(self.ex.private_get_order, {
                    'symbol': market['id'], 'origClientOrderId': req.oid})
                return await self.catch_up(tr, res)
            tr.final = True
            self.send(BrokerdError(oid=req.oid, reqid=req.oid, symbol=key, reason=f'binance: {err.reason}'))
            return
        self.apply_rest(tr, res)

    async def modify(self, req: BrokerdOrder) -> None:
        """Binance spot has no amend of price: cancel-replace, keeping our oid (and reqid)."""
        tr = self.orders[req.oid]
        market = self.venue.market(tr.symbol)
        old = tr.order_id
        remaining = round(req.size - tr.filled, 12)
        if remaining <= 0:
            return self.refuse(req, f'modify refused: size {req.size:g} is not above the filled {tr.filled:g}')
        tr.replaced.add(old)  # from now on its CANCELED is the replace, not the end of the order
        params = {
            'symbol': market['id'], 'side': tr.action.upper(), 'type': 'LIMIT', 'timeInForce': 'GTC',
            'quantity': fmt(remaining), 'price': fmt(req.price), 'cancelReplaceMode': 'STOP_ON_FAILURE',
            'cancelOrderId': old, 'newClientOrderId': req.oid, 'newOrderRespType': 'FULL',
        }
        try:
            res = await self.venue.rest(self.ex.private_post_order_cancelreplace, params)
        except VenueError as err:
            if err.code is not None and (err.code == -2021 or str(err.code) == '-2021'):
                # cancelled, but the new order was refused: the order is over
                tr.legs[old] = tr.legs.get(old, 0.0)
                self.report(tr, 'CANCELED')
                self.send(BrokerdError(oid=req.oid, reqid=req.oid, symbol=tr.symbol,
                                       reason=f'binance: modify: the replacement was refused: {err.reason}'))
                return
            tr.replaced.discard(old)
            if isinstance(err, RateLimited):
                raise
            self.send(BrokerdError(oid=req.oid, reqid=req.oid, symbol=tr.symbol,
                                   reason=f'binance: modify refused: {err.reason}'))
            # its reports were held while the replace was in flight: the venue says how it stands
            try:
                await self.catch_up(tr, await self.venue.rest(self.ex.private_get_order, {
                    'symbol': market['id'], 'orderId': old}))
            except VenueError as again:
                log.warning('binance: state of %s after a refused modify: %s', tr.oid, again.reason)
            return
        cancelled = res.get('cancelResponse') or {}
        if cancelled:
            tr.legs[old] = max(tr.legs.get(old, 0.0), float(cancelled.get('executedQty') or 0))
        tr.price, tr.size = req.price, req.size
        self.apply_rest(tr, res['newOrderResponse'], force=True)

    async def cancel(self, req: BrokerdCancel) -> None:
        tr = self.orders.get(req.oid)
        market = self._market_of(tr.symbol if tr else req.symbol)
        if market is None:
            return self.refuse(req, 'cancel refused: unknown order')
        params: dict[str, Any] = {'symbol': market['id']}
        if tr is not None and tr.order_id is not None:
            params['orderId'] = tr.order_id
        else:
            params['origClientOrderId'] = req.oid
        try:
            res = await self.venue.rest(self.ex.private_delete_order, params)
        except VenueError as err:
            if isinstance(err, RateLimited):
                raise
            self.send(BrokerdError(oid=req.oid, reqid=req.reqid or req.oid, symbol=market['id'].lower(),
                                   reason=f'binance: cancel refused: {err.reason}'))
            return
        if tr is None:
            tr = self.track_from(res, market['id'].lower(), req.oid)
        await self.catch_up(tr, res)

    # -- snapshot and positions ------------------------------------------------------------------

    async def positions(self) -> list[BrokerdPosition]:
        account = await self.venue.rest(self.ex.private_get_account)
        held = {b['asset']: float(b['free']) + float(b['locked']) for b in account.get('balances', [])}
        out = []
        for key in sorted(self.symbols):
            market = self.venue.markets.get(key)
            if market is None:
                continue
            size = round(held.get(market['base'], 0.0), 12)
            out.append(BrokerdPosition(
                broker='binance', account=self.account, symbol=key, currency=str(market['base']).lower(),
                size=size, avg_price=await self.average_price(market) if size else 0.0,
            ))
        return out

    async def average_price(self, market: dict) -> float:
        """The average cost of the holding from the account's recent trades (``myTrades``,
        the last 1000): buys raise the cost, sells take out at the average. Coins that came
        from elsewhere (deposits) have no price in the ledger and are not in it."""
        trades = await self.venue.rest(self.ex.private_get_mytrades, {'symbol': market['id'], 'limit': 1000})
        qty = cost = 0.0
        for t in sorted(trades, key=lambda t: int(t['id'])):
            q, px = float(t['qty']), float(t['price'])
            if t['isBuyer']:
                qty, cost = qty + q, cost + q * px
            elif qty > 0:
                take = min(q, qty)
                cost -= cost / qty * take
                qty -= take
        return round(cost / qty, 12) if qty > 1e-12 else 0.0

    async def positions_loop(self) -> None:
        """After fills, send the balances (coalesced: one REST call for a burst of fills)."""
        while True:
            await self.positions_dirty.wait()
            self.positions_dirty = trio.Event()
            try:
                for pos in await self.positions():
                    self.send(pos)
            except VenueError as err:
                log.warning('binance: balances unavailable: %s', err.reason)
                await trio.sleep(1.0)
                self.positions_dirty.set()
            except Exception:   # an answer we cannot read: the next fill asks again; the loop goes on
                log.exception('binance: unreadable balances; positions wait for the next fill')

    async def snapshot(self, since_ns: int | None) -> VenueSnapshot:
        """Open orders, positions and (with ``since_ns``) fills and ended orders since then."""
        opened = await self.venue.rest(self.ex.private_get_openorders)
        infos: dict[str, BrokerdOrderInfo] = {}
        for o in sorted(opened, key=lambda o: int(o['orderId'])):
            key = str(o['symbol']).lower()
            if key not in self.venue.markets:
                continue
            tr = self.track_from(o, key, o['clientOrderId'])
            self.adopt(tr, int(o['orderId']))
            tr.legs[int(o['orderId'])] = float(o['executedQty'])
            tr.reported = ('submitted', tr.filled, tr.price, tr.size)
            self.symbols.add(key)
            infos[tr.oid] = BrokerdOrderInfo(
                reqid=tr.oid, oid=tr.oid, account=self.account, symbol=key, action=tr.action,
                price=float(o['price']), size=tr.size, filled=tr.filled, status='open',
                time_ns=_ms_to_ns(o.get('time') or 0),
            )
        fills: list[BrokerdFill] = []
        if since_ns is not None:
            since_ms = since_ns // 1_000_000
            for key in sorted(self.symbols):
                market = self.venue.markets.get(key)
                if market is None:
                    continue
                trades = await self.venue.rest(self.ex.private_get_mytrades, {
                    'symbol': market['id'], 'startTime': since_ms, 'limit': 1000})
                orders: dict[int, dict] = {}
                for t in sorted(trades, key=lambda t: int(t['id'])):
                    oid_ = int(t['orderId'])
                    if oid_ not in orders:
                        orders[oid_] = await self.venue.rest(self.ex.private_get_order, {
                            'symbol': market['id'], 'orderId': oid_})
                    o = orders[oid_]
                    cid = o['clientOrderId']
                    self.venue.seen_fills.add(str(t['id']))
                    fills.append(BrokerdFill(
                        reqid=cid, oid=cid, fill_id=str(t['id']), time_ns=_ms_to_ns(t['time']),
                        action='buy' if t['isBuyer'] else 'sell', size=float(t['qty']),
                        price=float(t['price']),
                        fee=float(t['commission']) if t['commissionAsset'] == market['quote'] else 0.0,
                        broker_time=int(t['time']) / 1000, broker_details={'order_id': oid_},
                    ))
                for o in orders.values():
                    cid, status = o['clientOrderId'], STATUS.get(o['status'], 'submitted')
                    if cid in infos or status not in FINAL or _ms_to_ns(o.get('updateTime') or 0) < since_ns:
                        continue
                    infos[cid] = BrokerdOrderInfo(
                        reqid=cid, oid=cid, account=self.account, symbol=key, action=str(o['side']).lower(),
                        price=float(o['price']), size=float(o['origQty']), filled=float(o['executedQty']),
                        status=status, time_ns=_ms_to_ns(o.get('updateTime') or 0),
                    )
        return VenueSnapshot(positions=[p for p in await self.positions() if p.size != 0],
                             orders=list(infos.values()), fills=fills, since_ns=since_ns)

    # -- the user stream ------------------------------------------------------------------------

    def user_stream(self) -> Any:
        """An async generator run on the asyncio loop: ``('up',)`` each time the user-data
        subscription is confirmed, ``('down', reason)`` when it drops, ``('report', ev)`` per
        execution report. Reconnects with a doubling backoff."""
        ex, sinks = self.ex, self.venue.report_sinks

        async def gen() -> AsyncIterator[tuple]:
            import asyncio

            import ccxt

            queue: asyncio.Queue = asyncio.Queue()

            def sink(event: dict) -> None:   # runs on the loop, from the venue's tap
                queue.put_nowait(('report', event))

            async def keep() -> None:
                backoff = 0.25
                while True:
                    try:
                        await ex.ensure_user_data_stream_ws_subscribe_signature('spot')
                        queue.put_nowait(('up',))
                        backoff = 0.25
                        while True:  # keeps the subscription read; updates arrive via tap
                            await ex.watch_orders()
                    except ccxt.NetworkError as err:
                        queue.put_nowait(('down', str(err)))
                    except ccxt.ExchangeError as err:  # e.g. the keys were refused
                        queue.put_nowait(('down', f'refused: {err}'))
                        backoff = max(backoff, 5.0)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 15.0)

            sinks.add(sink)
            task = asyncio.ensure_future(keep())
            try:
                while True:
                    yield await queue.get()
            finally:
                task.cancel()
                sinks.discard(sink)

        return gen

    async def user_events(self) -> None:
        async with self.venue.bridge.stream(self.user_stream()) as events:
            async for ev in events:
                kind = ev[0]
                if kind == 'report':
                    try:
                        await self.fill_gap(ev[1])
                    except VenueError as err:
                        log.warning('binance: fetching missed trades failed: %s', err.reason)
                    except Exception:
                        log.exception('binance: cannot look for missed trades of %r', ev[1])
                    try:
                        self.on_report(ev[1])
                    except Exception:
                        log.exception('binance: bad execution report %r', ev[1])
                elif kind == 'up':
                    log.info('binance: user data stream subscribed; reconciling working orders')
                    await self.reconcile()
                else:
                    log.warning('binance: user data stream down (%s); reconnecting', ev[1])

    def take(self, raw: Any) -> None:
        self._req_tx.send_nowait(raw)

    def close(self) -> None:
        self._out_tx.close()
        self._req_tx.close()


async def serve_live(ctx: Any, venue: BinanceVenue, since_ns: int | None, account: str) -> None:
    """Run one live dialogue on ``ctx`` until emsd closes it."""
    from ...service._ipc import send_with_heartbeats

    dialogue = LiveDialogue(venue, account)
    venue.on_rate_limit.append(dialogue.on_rate_limit)
    try:
        snapshot = await dialogue.snapshot(since_ns)
        await ctx.started(to_wire(snapshot))
        async with ctx.open_stream() as stream, trio.open_nursery() as n:

            async def sender() -> None:
                try:
                    await send_with_heartbeats(dialogue.outbox, stream)
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
                    log.warning('binance: emsd gone while sending')
                n.cancel_scope.cancel()

            n.start_soon(sender)
            n.start_soon(dialogue.worker)
            n.start_soon(dialogue.user_events)
            n.start_soon(dialogue.positions_loop)
            async for raw in stream:   # always drained, never blocks
                dialogue.take(raw)
            n.cancel_scope.cancel()
    finally:
        venue.on_rate_limit.remove(dialogue.on_rate_limit)
        dialogue.close()


async def serve_keyless(ctx: Any) -> None:
    """Without keys: an empty snapshot, and every request refused with one clear reason."""
    from ...service._ipc import send_with_heartbeats

    await ctx.started(to_wire(VenueSnapshot()))
    tx, rx = trio.open_memory_channel[dict](math.inf)
    async with ctx.open_stream() as stream, trio.open_nursery() as n:
        n.start_soon(send_with_heartbeats, rx, stream)
        async for raw in stream:
            oid = raw.get('oid') if isinstance(raw, dict) else None
            reqid = raw.get('reqid') if isinstance(raw, dict) else None
            tx.send_nowait(to_wire(BrokerdError(oid=oid, reqid=reqid, reason=NO_KEYS)))
        n.cancel_scope.cancel()
