"""The Router: emsd's single owner of order state, venues, dark scans and client routing.

One Router per emsd process (created by emsd's service task). Every status for an order goes
to its owner connection (and watchers) only; positions go to the clients of that broker.
Nothing in here may raise out of a relay, a scan or a client loop because of one bad message.
"""
from __future__ import annotations

from collections import defaultdict

import trio

from ..brokers import NoBrokerBackend, SymbolNotFound, get_brokermod
from ..log import get_logger
from ..symbols import FqsnError, parse_fqsn, round_to_tick
from ._darkbook import release_price
from ._messages import (
    BrokerdCancel,
    BrokerdError,
    BrokerdFill,
    BrokerdOrder,
    BrokerdOrderAck,
    BrokerdPosition,
    BrokerdStatus,
    Cancel,
    MsgError,
    Order,
    Status,
    parse_client_msg,
    to_wire,
)
from ._orders import ClientConn, OrderState, VenueKey
from ._scan import DarkScan
from ._venues import Venue, VenueLost, open_venue

log = get_logger(__name__)

MAX_DONE_ORDERS = 10_000  # finished orders remembered (for late events and snapshots)
TERMINAL_STATUSES = {'cancelled', 'canceled', 'inactive', 'rejected', 'expired', 'closed'}


def venue_for(broker: str, account: str) -> VenueKey:
    """Which dialogue trades ``account`` on ``broker``: the paper engine unless it's a live
    account on a backend that has a live ``trades_dialogue``."""
    mod = get_brokermod(broker)
    if account != 'paper' and hasattr(mod, 'trades_dialogue'):
        return (broker, 'live')
    return (broker, 'paper')


class Router:
    """emsd state and behaviour (SPEC §5)."""

    _current: 'Router | None' = None

    def __init__(self, nursery: trio.Nursery, actor_n, loglevel: str | None = None) -> None:
        self.nursery = nursery
        self.actor_n = actor_n
        self.loglevel = loglevel
        self.orders: dict[str, OrderState] = {}
        self.by_reqid: dict[tuple[VenueKey, int | str], str] = {}
        self.venues: dict[VenueKey, Venue] = {}
        self.scans: dict[tuple[str, str], DarkScan] = {}
        self.clients: set[ClientConn] = set()
        self._locks: defaultdict[object, trio.Lock] = defaultdict(trio.Lock)
        self.rejected_client_msgs = 0
        self.rejected_broker_msgs = 0
        self._done: dict[str, None] = {}  # oids of finished orders, oldest first

    @classmethod
    def current(cls) -> 'Router':
        """The Router of this emsd process."""
        if cls._current is None:
            raise RuntimeError('this actor is not emsd (no Router)')
        return cls._current

    # --- resources ------------------------------------------------------------------------

    async def ensure_venue(self, key: VenueKey) -> Venue:
        """The one trades dialogue for ``key``, opened on first need (guarded by a lock)."""
        venue = self.venues.get(key)
        if venue is not None and not venue.closed:
            return venue
        async with self._locks[('venue', key)]:
            venue = self.venues.get(key)
            if venue is None or venue.closed:
                venue = await self.nursery.start(open_venue, self, key)
                self.venues[key] = venue
        return venue

    async def ensure_scan(self, fqsn: str) -> DarkScan:
        """The one dark-trigger scan (and feed) for ``fqsn``, started on first need."""
        sym, broker = parse_fqsn(fqsn)
        key = (broker, sym)
        scan = self.scans.get(key)
        if scan is not None:
            return scan
        async with self._locks[('scan', key)]:
            scan = self.scans.get(key)
            if scan is None:
                scan = await self.nursery.start(DarkScan.run, self, broker, sym)
                self.scans[key] = scan
        return scan

    def forget_venue(self, venue: Venue) -> None:
        """Called by a venue's relay when its dialogue ended, so the next need reopens it."""
        if self.venues.get(venue.key) is venue:
            del self.venues[venue.key]

    async def on_venue_lost(self, venue: Venue) -> None:
        """A venue died: its working orders' fate is unknown, so tell their owners and close them.

        Dark orders and alerts are untouched (they live here); when one fires, the venue is
        reopened (its broker respawned). Never raises.
        """
        for st in list(self.orders.values()):
            if st.venue == venue.key and st.phase in ('pending', 'live'):
                st.phase = 'done'
                self.route(st, st.status(
                    'broker_errored',
                    reason=f'trades dialogue {venue.name} lost ({venue.lost}); order state unknown',
                ))

    # --- routing --------------------------------------------------------------------------

    def route(self, st: OrderState, status: Status) -> None:
        """Send a status to the order's owner and watchers, nobody else."""
        if st.phase == 'done':
            self._retire(st)
        msg = st.last_msg = to_wire(status)
        owner = st.owner_conn
        if owner is not None:
            owner.push(msg)
        else:
            st.unseen = True
        for conn in self.clients:
            if conn is not owner and conn.watch and conn.watches(st):
                conn.push(msg)

    def reply_error(self, conn: ClientConn, oid: str | None, reason: str, req: Order | None = None) -> None:
        """Refuse a request: an ``error`` status to the sender only."""
        conn.push(to_wire(Status(oid=oid or '?', resp='error', reason=reason, req=req)))

    def broadcast_position(self, pos: BrokerdPosition) -> None:
        """Positions go to every client connected for that broker and account."""
        msg = to_wire(pos)
        for conn in list(self.clients):
            if conn.broker == pos.broker and conn.account == pos.account:
                conn.push(msg)

    def _retire(self, st: OrderState) -> None:
        """Remember a finished order, forgetting the oldest ones beyond ``MAX_DONE_ORDERS``.

        emsd runs for weeks: without a bound every order ever placed would stay in memory
        (and slow snapshots and garbage collection). An oid whose owner has not yet seen its
        end (``unseen``) is kept until it has.
        """
        self._done[st.oid] = None
        while len(self._done) > MAX_DONE_ORDERS:
            oid = next(iter(self._done))
            old = self.orders.get(oid)
            if old is not None and old.unseen:
                break  # keep it (and what came after) until its owner reconnects
            del self._done[oid]
            if old is None or old.phase != 'done':
                continue
            del self.orders[oid]
            if old.reqid is not None:
                self.by_reqid.pop((old.venue, old.reqid), None)

    # --- clients --------------------------------------------------------------------------

    def add_client(self, conn: ClientConn) -> None:
        """Register a connection and let it adopt its name's orphaned orders."""
        self.clients.add(conn)
        for st in self.orders.values():
            if st.owner == conn.name and st.owner_conn is None and st.phase != 'done':
                st.owner_conn = conn

    async def drop_client(self, conn: ClientConn) -> None:
        """Forget a connection's routing entries and apply its disconnect policy.

        ``keep`` (default): its orders live on and the next client of the same name adopts
        them. ``cancel``: all its open orders are cancelled. ``cancel-dark``: only its dark
        orders and alerts are removed. Never raises.
        """
        self.clients.discard(conn)
        conn.close()
        owned = [st for st in self.orders.values() if st.owner_conn is conn]
        for st in owned:
            st.owner_conn = None
        if conn.on_disconnect == 'keep':
            return
        if any(c.name == conn.name for c in self.clients):
            return  # another connection of the same client still holds these orders
        for st in owned:
            if st.phase == 'done' or (conn.on_disconnect == 'cancel-dark' and st.phase != 'dark'):
                continue
            try:
                log.info('%r left with policy %s: cancelling %s', conn, conn.on_disconnect, st.oid)
                await self.cancel_order(st)
            except Exception:
                log.exception('disconnect policy could not cancel %s', st.oid)

    def positions_for(self, broker: str, account: str) -> list[dict]:
        """Known positions of ``broker``/``account`` (from every open venue)."""
        out = []
        for key, venue in self.venues.items():
            if key[0] == broker:
                out.extend(to_wire(p) for p in venue.positions.values() if p.account == account)
        return out

    def open_orders(self, fqsn: str | None = None, owner: str | None = None, broker: str | None = None) -> list[dict]:
        """Snapshots of the orders not yet done (optionally for one symbol / owner / broker).

        For an ``owner``, orders that closed while it was away (filled, triggered, cancelled by
        a policy) are included once with their final state, so a reconnecting client learns
        what happened; they are then marked seen.
        """
        out = []
        for st in self.orders.values():
            if (fqsn is not None and st.fqsn != fqsn) or (broker is not None and st.venue[0] != broker):
                continue
            if owner is not None and st.owner != owner:
                continue
            if st.phase != 'done':
                out.append(st.snapshot())
            elif owner is not None and st.unseen:
                st.unseen = False
                out.append(st.snapshot())
        return out

    # --- client commands ------------------------------------------------------------------

    async def handle_client_msg(self, conn: ClientConn, raw: object) -> None:
        """Process one client message; every failure becomes an ``error`` status, never a raise."""
        try:
            msg = parse_client_msg(raw)
        except MsgError as err:
            self.rejected_client_msgs += 1
            oid = raw.get('oid') if isinstance(raw, dict) and isinstance(raw.get('oid'), str) else None
            self.reply_error(conn, oid, str(err))
            return
        try:
            if isinstance(msg, Cancel):
                await self.cancel(conn, msg)
            else:
                await self.submit(conn, msg)
        except (NoBrokerBackend, SymbolNotFound, FqsnError) as err:
            self.rejected_client_msgs += 1
            self.reply_error(conn, msg.oid, str(err))
        except VenueLost as err:
            self.reply_error(conn, msg.oid, f'{err}; retry to reopen it')
        except Exception as err:  # a bug or a dead venue must not kill the client loop
            log.exception('failed to process %r from %r', msg, conn)
            self.reply_error(conn, msg.oid, f'emsd failed to process the request: {err}')

    async def submit(self, conn: ClientConn, order: Order) -> None:
        """A new order or, for a known oid, a modify (SPEC §5.5)."""
        st = self.orders.get(order.oid)
        if st is not None:
            await self.modify(conn, st, order)
            return
        sym, broker = parse_fqsn(order.symbol)
        if broker not in order.brokers and order.brokers:
            self.reply_error(conn, order.oid, f'symbol {order.symbol} is not on brokers {order.brokers}', order)
            return
        get_brokermod(broker)
        scan = await self.ensure_scan(order.symbol)
        account = 'paper' if order.exec_mode == 'paper' else order.account
        order = order.model_copy(update={'owner': conn.name, 'account': account})
        key = venue_for(broker, account)
        st = OrderState(req=order, owner=conn.name, venue=key, owner_conn=conn)
        if order.action == 'alert' or order.exec_mode in ('dark', 'paper'):
            if order.action != 'alert':
                await self.ensure_venue(key)  # open now, so a trigger never waits on a spawn
            self.orders[order.oid] = st
            scan.arm(st)
            self.route(st, st.status('alert_submitted' if order.action == 'alert' else 'dark_submitted'))
            return
        venue = await self.ensure_venue(key)
        price = round_to_tick(order.price, scan.symbol.tick_size)
        st.req = order = order.model_copy(update={'price': price})
        st.phase = 'pending'
        self.orders[order.oid] = st  # recorded before sending: a fast ack must find it
        await venue.send(BrokerdOrder(
            action=order.action, oid=order.oid, account=account, reqid=None,
            symbol=sym, price=price, size=order.size,
        ))

    async def modify(self, conn: ClientConn, st: OrderState, order: Order) -> None:
        """Resent oid: re-arm a dark order, or modify the live one keeping its reqid."""
        if not self.may_control(conn, st):
            self.reply_error(conn, order.oid, f'order {order.oid} belongs to {st.owner}', st.req)
            return
        if order.symbol.lower() != st.fqsn or order.action != st.req.action:
            self.reply_error(conn, order.oid, 'a modify may change price and size only', st.req)
            return
        if st.phase == 'done':
            self.reply_error(conn, order.oid, f'order {order.oid} is closed ({st.last_resp})', st.req)
            return
        update = {'price': order.price, 'size': order.size if order.size else st.req.size}
        if st.phase == 'dark':
            st.req = st.req.model_copy(update=update)
            scan = await self.ensure_scan(st.fqsn)
            scan.arm(st)
            self.route(st, st.status('alert_submitted' if st.req.action == 'alert' else 'dark_submitted'))
            return
        scan = await self.ensure_scan(st.fqsn)
        update['price'] = round_to_tick(order.price, scan.symbol.tick_size)
        st.req = st.req.model_copy(update=update)
        if st.reqid is None:
            st.modify_stashed = st.req  # sent as soon as the venue acks
            return
        await self.send_to_venue(st, reqid=st.reqid)

    async def send_to_venue(self, st: OrderState, reqid: int | str | None) -> None:
        """Send the order's current request to its venue (new when ``reqid`` is None)."""
        venue = await self.ensure_venue(st.venue)
        sym, _ = parse_fqsn(st.req.symbol)
        await venue.send(BrokerdOrder(
            action=st.req.action, oid=st.oid, account=st.req.account, reqid=reqid,
            symbol=sym, price=st.req.price, size=st.req.size,
        ))

    async def cancel(self, conn: ClientConn, msg: Cancel) -> None:
        """Cancel a dark order now, a live one at its venue, or stash it until the ack."""
        st = self.orders.get(msg.oid)
        if st is None:
            self.reply_error(conn, msg.oid, f'unknown order {msg.oid}')
            return
        if not self.may_control(conn, st):
            self.reply_error(conn, msg.oid, f'order {msg.oid} belongs to {st.owner}', st.req)
            return
        await self.cancel_order(st, requester=conn)

    async def cancel_order(self, st: OrderState, requester: ClientConn | None = None) -> None:
        """Cancel ``st`` whatever its phase (also used by disconnect policies)."""
        if st.phase == 'done':
            if requester is not None:
                self.reply_error(requester, st.oid, f'order {st.oid} is already closed ({st.last_resp})', st.req)
            return
        if st.phase == 'dark':
            scan = self.scans.get(_scan_key(st.fqsn))
            if scan is not None:
                scan.disarm(st.oid)
            st.phase = 'done'
            self.route(st, st.status('dark_cancelled'))
            return
        if st.reqid is None:
            st.cancel_stashed = True  # released the moment the ack binds a reqid
            return
        venue = await self.ensure_venue(st.venue)
        await venue.send(BrokerdCancel(oid=st.oid, account=st.req.account, reqid=st.reqid))

    def may_control(self, conn: ClientConn, st: OrderState) -> bool:
        """The owner (by name) may modify or cancel an order; a watcher only if its session
        was opened with ``control_others``."""
        return st.owner == conn.name or (conn.control_others and conn.watches(st))

    # --- dark triggers --------------------------------------------------------------------

    async def on_trigger(self, st: OrderState, tick_type: str, tick_price: float, tick_size: float) -> None:
        """A resting dark order or alert was crossed by a tick: fire it exactly once."""
        st.trigger_price = tick_price
        if st.req.action == 'alert':
            st.phase = 'done'
            self.route(st, st.status('alert_triggered', trigger_price=tick_price))
            return
        price = release_price(st.req.action, tick_price, tick_size)
        st.req = st.req.model_copy(update={'price': price})
        st.phase = 'pending'  # before the send: the ack may come back at once
        self.route(st, st.status('dark_triggered', trigger_price=tick_price))
        try:
            await self.send_to_venue(st, reqid=None)
        except Exception as err:
            log.exception('could not submit triggered order %s', st.oid)
            st.phase = 'done'
            self.route(st, st.status('broker_errored', reason=f'submit failed: {err}'))

    # --- broker events --------------------------------------------------------------------

    def _oid_for(self, venue: Venue, reqid: int | str | None, oid: str | None = None) -> OrderState | None:
        if oid is not None and oid in self.orders:
            return self.orders[oid]
        if reqid is None:
            return None
        found = self.by_reqid.get((venue.key, reqid))
        return self.orders.get(found) if found else None

    async def on_broker_msg(self, venue: Venue, msg) -> None:
        """Translate one venue event into statuses for the order's owner (SPEC §5.6)."""
        if isinstance(msg, BrokerdPosition):
            venue.positions[(msg.account, msg.symbol)] = msg
            self.broadcast_position(msg)
            return
        if isinstance(msg, BrokerdOrderAck):
            st = self.orders.get(msg.oid)
            if st is None or st.venue != venue.key:
                log.warning('ack for unknown order %s (reqid %s) from %s', msg.oid, msg.reqid, venue.key)
                return
            st.reqid = msg.reqid
            self.by_reqid[(venue.key, msg.reqid)] = st.oid
            if st.cancel_stashed:
                st.cancel_stashed = False
                await venue.send(BrokerdCancel(oid=st.oid, account=st.req.account, reqid=msg.reqid))
            elif st.modify_stashed is not None:
                st.modify_stashed = None
                await self.send_to_venue(st, reqid=msg.reqid)
            return
        st = self._oid_for(venue, getattr(msg, 'reqid', None), getattr(msg, 'oid', None))
        if st is None:
            log.warning('event for unknown order from %s: %r', venue.key, msg)
            return
        details = to_wire(msg)
        if isinstance(msg, BrokerdFill):
            st.filled += msg.size
            self.route(st, st.status('broker_filled', brokerd_msg=details))
        elif isinstance(msg, BrokerdStatus):
            status = msg.status.lower()
            if status == 'filled':
                if msg.remaining <= 0:
                    st.phase = 'done'
                    self.route(st, st.status('broker_executed', brokerd_msg=details))
                else:
                    self.route(st, st.status('broker_partially_filled', brokerd_msg=details))
                return
            if status in ('cancelled', 'canceled'):
                st.phase = 'done'
                self.route(st, st.status('broker_cancelled', brokerd_msg=details, reason=msg.reason or None))
                return
            if status in TERMINAL_STATUSES:
                st.phase = 'done'
            elif status in ('submitted', 'open', 'accepted') and st.phase == 'pending':
                st.phase = 'live'
            self.route(st, st.status(f'broker_{status}', brokerd_msg=details, reason=msg.reason or None))
        elif isinstance(msg, BrokerdError):
            if st.phase == 'pending' and st.reqid is None:
                st.phase = 'done'  # the venue refused the new order outright
            self.route(st, st.status('broker_errored', brokerd_msg=details, reason=msg.reason))


def _scan_key(fqsn: str) -> tuple[str, str]:
    sym, broker = parse_fqsn(fqsn)
    return (broker, sym)
