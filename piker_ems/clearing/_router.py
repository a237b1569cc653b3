"""The Router: emsd's single owner of orders, and who hears about them.

It turns client requests, dark triggers and venue events into events of each order's state
machine (:mod:`._machine`) and carries out what the machine returns: statuses routed to the
order's owner and watchers only, commands queued to the venue, dark-book arm/disarm.

The Router depends on narrow interfaces, not on actors, so tests build one with fake venues,
fake scans and a fake clock and drive it in-process:

- ``venues``: :class:`Venues` hands out the one :class:`VenueLink` per venue; a link takes
  commands without waiting (queued while its dialogue opens) and reports back through
  :meth:`Router.on_venue_msg`, :meth:`Router.on_venue_lost` and :meth:`Router.on_send_failed`;
- ``scans``: :class:`Scans` hands out the one dark :class:`Scan` per symbol (its feed, last
  price, symbol info and trigger book); a scan reports fires through :meth:`Router.on_trigger`;
- ``clock``: a callable returning nanoseconds.

Handling a client or venue message never waits: a client's dark orders, alerts and cancels are
answered at once even while a venue is opening or respawning. The only wait is for a symbol's
first quote (its tick size and last price), done in a task for that one order, never in the
client's loop.

Nothing here may raise out of a relay, a scan or a client loop because of one bad message.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Protocol

from ..brokers import NoBrokerBackend, SymbolNotFound, get_brokermod
from ..faults import crash_point
from ..log import get_logger
from ..symbols import FqsnError, Symbol, parse_fqsn, round_to_tick
from . import _machine as M
from ._darkbook import release_price
from ._messages import (
    BrokerdCancel,
    BrokerdOrder,
    BrokerdOrderAck,
    BrokerdPosition,
    Cancel,
    MsgError,
    Order,
    Status,
    TradingState,
    parse_brokerd_msg,
    parse_client_msg,
    to_wire,
)
from ._orders import ClientConn, OrderState, VenueKey, VenueUnavailable
from ._risk import HALTED, Exposure, RiskEngine

log = get_logger(__name__)

#: Finished orders remembered (for late events, snapshots and "already closed" answers).
MAX_DONE_ORDERS = 10_000
#: Finished orders kept for an owner who has not seen their end yet (beyond: oldest dropped).
MAX_UNSEEN_ORDERS = 10_000
#: Size bound, in lots of the symbol; and notional bound (price * size): within it a float
#: keeps a cent of precision (2**53 ~ 9e15).
MAX_LOTS = 1e9
MAX_NOTIONAL = 1e15
#: Venue events that arrive before the ack binding their reqid are held this long (and at
#: most this many reqids) and replayed once the ack arrives.
EARLY_TTL_NS = 30_000_000_000
EARLY_MAX = 1_000
#: How long a request may wait for its symbol's first quote before it is refused.
SYMBOL_WAIT_S = 15.0
#: How long emsd keeps reopening a lost venue before its live orders end ``lost``.
VENUE_GIVEUP_S = 120.0
#: Pause between attempts to reopen a lost venue.
VENUE_RETRY_S = 1.0
#: The owner of orders found at a venue that emsd never placed; no client may take this name.
EXTERNAL_OWNER = '@external'
#: Reconciliation asks the venue for what happened since the oldest live order, less this.
SINCE_MARGIN_NS = 5_000_000_000


class VenueLink(Protocol):
    """One trades dialogue as the Router sees it."""

    key: VenueKey
    positions: dict[tuple[str, str], BrokerdPosition]

    def send_nowait(self, cmd: BrokerdOrder | BrokerdCancel) -> None:
        """Queue a command (sent in order once the dialogue is open); may raise VenueUnavailable."""


class Venues(Protocol):
    """Hands out the one link per venue, opening its dialogue in the background on first need."""

    def bind(self, router: 'Router') -> None: ...
    def key_for(self, broker: str, account: str) -> VenueKey: ...
    def link(self, key: VenueKey) -> VenueLink: ...
    def open_links(self) -> list[VenueLink]: ...
    def reopen(self, key: VenueKey, delay_s: float) -> None: ...


class Scan(Protocol):
    """One symbol's dark-trigger scan: symbol info, last price and a trigger book."""

    fqsn: str
    symbol: Symbol | None
    last: float | None
    failed: str | None

    def arm(self, st: OrderState, direction: str | None = None) -> Any: ...
    def disarm(self, oid: str) -> None: ...
    def __len__(self) -> int: ...
    async def wait_ready(self, timeout: float) -> None: ...


class Scans(Protocol):
    """Hands out the one scan per symbol (starting it on first need) and closes idle ones."""

    def bind(self, router: 'Router') -> None: ...
    def get(self, fqsn: str) -> Scan: ...
    def peek(self, fqsn: str) -> Scan | None: ...
    def close(self, fqsn: str) -> None: ...
    def all(self) -> list[Scan]: ...


def venue_for(broker: str, account: str) -> VenueKey:
    """Which dialogue trades ``account`` on ``broker``: the paper engine unless it's a live
    account on a backend that has a live ``trades_dialogue``."""
    mod = get_brokermod(broker)
    if account != 'paper' and hasattr(mod, 'trades_dialogue'):
        return (broker, 'live')
    return (broker, 'paper')


class Router:
    """emsd state and behaviour (SPEC §5, §11)."""

    def __init__(
        self,
        venues: Venues,
        scans: Scans,
        clock: Callable[[], int],
        spawn: Callable[..., Any] | None = None,
        journal: Any = None,
        risk: RiskEngine | None = None,
    ) -> None:
        self.venues = venues
        self.risk = risk if risk is not None else RiskEngine(clock=clock)  # pre-trade checks
        self.journal = journal  # a _journal.Journal, or None (nothing survives a restart)
        self.scans = scans
        self.clock = clock
        self.spawn = spawn  # start_soon of the service nursery (for waits on a symbol)
        self.orders: dict[str, OrderState] = {}
        # the orders a snapshot may show: not final, or final and unseen by their owner (so a
        # reconnect never walks the thousands of finished orders kept in ``orders``)
        self.showable: dict[str, OrderState] = {}
        self.by_reqid: dict[tuple[VenueKey, int | str], str] = {}
        self.clients: set[ClientConn] = set()
        self.by_name: dict[str, set[ClientConn]] = {}
        self.watch_symbol: dict[str, set[ClientConn]] = {}
        self.watch_all: dict[str, set[ClientConn]] = {}
        # indexes so per-status / per-fill work never scans every client
        self.by_account: dict[tuple[str, str], set[ClientConn]] = {}  # (broker, account)
        self.clients_per_symbol: dict[str, int] = {}
        self.waiting: dict[str, list[tuple[ClientConn, Order | Cancel]]] = {}  # oid -> requests
        self.early: OrderedDict[tuple[VenueKey, int | str], list[tuple[int, Any]]] = OrderedDict()
        self._done: OrderedDict[str, None] = OrderedDict()    # finished, seen by the owner
        self._unseen: OrderedDict[str, None] = OrderedDict()  # finished while the owner was away
        self.live_per_symbol: dict[str, int] = {}  # fqsn -> orders not yet final
        # for risk: account -> fqsn -> oid -> the order, while it is not final
        self.open_by_account: dict[str, dict[str, dict[str, OrderState]]] = {}
        self.venue_down: dict[VenueKey, int] = {}  # venue -> when it was lost (reconnecting)
        self.journal_failures = 0
        self.client_failures = 0  # client requests that hit a bug (answered with an error)
        self.rejected_client_msgs = 0
        self.rejected_broker_msgs = 0
        self.illegal_events = 0   # venue events the order's state did not accept (all dropped)
        self.late_events = 0      # ... of which arrived after the order's final status
        self.unknown_events = 0
        self.apply_failures = 0   # events whose handling raised (bugs), logged with tracebacks
        self.client_msgs = 0      # client requests received (valid or not)
        self.venue_events = 0     # venue messages received (valid or not)
        self.grouped = 0          # journal groups committed (several events, one commit)
        self._group_depth = 0     # > 0 inside group(): journal writes share one transaction
        self._group_wrote = False
        venues.bind(self)
        scans.bind(self)

    # --- applying machine effects -------------------------------------------------------------

    def _apply(self, st: OrderState, event: M.Event, requester: ClientConn | None = None) -> bool:
        """Apply one event to ``st``'s machine and carry out its effects. Never raises.

        Write-ahead: the order's new state is journaled after the machine accepted the event
        and before any status leaves for a client or any command for the venue.
        An event the machine does not accept is logged and counted, and nothing is relayed.
        Any other failure (a bug) is logged with its traceback and counted: no caller (a
        relay, a scan, a client loop, a venue's teardown) can be killed by one event.
        """
        try:
            return self._apply_effects(st, event, requester)
        except Exception:
            self.apply_failures += 1
            log.exception('applying %s to order %s failed', type(event).__name__, st.oid)
            return False

    def _apply_effects(self, st: OrderState, event: M.Event, requester: ClientConn | None) -> bool:
        try:
            fx = st.machine.apply(event, self.clock())
        except M.IllegalEvent as err:
            self.illegal_events += 1
            if st.machine.final:  # e.g. the refusal of a cancel that a fill beat: expected
                self.late_events += 1
                log.info('late venue event dropped: %s', err)
            else:
                log.warning('illegal event dropped: %s', err)
            return False
        if fx.book == 'arm':
            entry = self.scans.get(st.fqsn).arm(st)
            st.direction = getattr(entry, 'direction', None)
        elif fx.book == 'disarm':
            scan = self.scans.peek(st.fqsn)
            if scan is not None:
                scan.disarm(st.oid)
        to_all = [to_wire(status) for audience, status, _ in fx.statuses if audience == 'all']
        if to_all:
            st.last_msg = to_all[-1]
            if st.machine.final and not self.by_name.get(st.owner) and st.owner != EXTERNAL_OWNER:
                self._mark_unseen(st)
        self._persist(st)
        if not self._group_depth:  # in a group the point is after the group's commit
            crash_point('emsd.after_journal')
        for audience, status, who in fx.statuses:
            if audience == 'all':
                self._deliver(st, to_all.pop(0))
            else:
                self._reply(who or requester, st, status)
        for cmd in fx.commands:
            self._send(st, cmd)
        if st.machine.final:
            self._retire(st)
        return True

    def _persist(self, st: OrderState) -> None:
        """Journal the order's state (never raises: a failing disk is logged and counted)."""
        if self.journal is None:
            return
        try:
            self.journal.write(st.oid, st.record(), st.machine.final, st.unseen, self.clock())
            self._group_wrote = True
        except Exception:
            self.journal_failures += 1
            log.exception('journal write failed for %s', st.oid)

    @contextmanager
    def group(self) -> Iterator[None]:
        """Journal every event applied inside in one transaction (group commit).

        For synchronous batches (a venue's list of events, see ``_venues``): their statuses and
        venue commands are only *queued* on outboxes meanwhile, and no writer task can run
        before this synchronous block ends, so the commit at its end still precedes anything
        they cause leaving emsd (write-ahead holds) — one commit instead of one per event.
        Nested groups join the outer one. A failed commit is logged and counted, like a failed
        write.
        """
        if self.journal is None or self._group_depth:
            self._group_depth += 1
            try:
                yield
            finally:
                self._group_depth -= 1
            return
        try:
            self.journal.begin()
        except Exception:
            self.journal_failures += 1
            log.exception('journal: cannot begin a group; writing per event')
            yield
            return
        self._group_depth, self._group_wrote = 1, False
        try:
            yield
        finally:
            self._group_depth = 0
            try:
                self.journal.commit()
                self.grouped += 1
            except Exception:
                self.journal_failures += 1
                log.exception('journal group commit failed')
            if self._group_wrote:  # journaled; nothing of the group has left emsd yet
                crash_point('emsd.after_journal')

    def _send(self, st: OrderState, cmd: BrokerdOrder | BrokerdCancel) -> None:
        try:
            link = self.venues.link(st.venue)
            link.send_nowait(cmd)
            st.queued_on = link
        except VenueUnavailable as err:
            self._apply(st, M.SendFailed(str(err)))

    # --- routing ------------------------------------------------------------------------------

    def _audience(self, st: OrderState) -> set[ClientConn]:
        """Who hears about ``st``: its owner's connections and its watchers, each once (three
        index lookups: computed per status, never stored, so it cannot go stale)."""
        out = set(self.by_name.get(st.owner, ()))
        out.update(self.watch_symbol.get(st.fqsn, ()))
        out.update(self.watch_all.get(st.venue[0], ()))
        return out

    def _deliver(self, st: OrderState, msg: dict) -> None:
        """Send a status (wire form) to the order's owner (every connection of that name) and
        its watchers, nobody else."""
        for conn in self._audience(st):
            conn.push(msg)

    def _reply(self, conn: ClientConn | None, st: OrderState, status: Status) -> None:
        """An answer to one client's request: to that client only (or the owner, if it left)."""
        msg = to_wire(status)
        targets = [conn] if conn is not None and not conn.closed else list(self.by_name.get(st.owner, ()))
        for c in targets:
            c.push(msg)

    def reply_error(self, conn: ClientConn, oid: str | None, reason: str, req: Order | None = None) -> None:
        """Refuse a request: an ``error`` status to the sender only."""
        conn.push(to_wire(Status(oid=oid or '?', time_ns=self.clock(), resp='error', reason=reason, req=req)))

    def broadcast_position(self, pos: BrokerdPosition) -> None:
        """Positions go to every client connected for that broker and account."""
        msg = to_wire(pos)
        for conn in list(self.by_account.get((pos.broker, pos.account), ())):
            conn.push(msg)

    # --- memory bound ---------------------------------------------------------------------------

    def _mark_unseen(self, st: OrderState) -> None:
        if not st.unseen:
            st.unseen = True
            self._done.pop(st.oid, None)
            self._unseen[st.oid] = None
            self._trim(self._unseen, MAX_UNSEEN_ORDERS)

    def _retire(self, st: OrderState) -> None:
        """Remember a finished order, forgetting the oldest beyond the bounds.

        emsd runs for weeks: without a bound every order ever placed would stay in memory.
        Orders whose owner has not seen their end are kept in their own bounded list, so they
        can never disable the bound of the others.
        """
        if st.retired:
            return
        st.retired = True
        self.open_by_account.get(st.req.account, {}).get(st.fqsn, {}).pop(st.oid, None)
        left = self.live_per_symbol.get(st.fqsn, 1) - 1
        if left > 0:
            self.live_per_symbol[st.fqsn] = left
        else:
            self.live_per_symbol.pop(st.fqsn, None)
        if not st.unseen:
            self.showable.pop(st.oid, None)
            self._done[st.oid] = None
            self._trim(self._done, MAX_DONE_ORDERS)
        self._release_scan(st.fqsn)

    def _trim(self, done: OrderedDict, bound: int) -> None:
        while len(done) > bound:
            oid, _ = done.popitem(last=False)
            self.showable.pop(oid, None)
            old = self.orders.pop(oid, None)
            if old is not None and old.machine.reqid is not None:
                self.by_reqid.pop((old.venue, old.machine.reqid), None)

    def _seen(self, st: OrderState) -> None:
        if st.unseen:
            st.unseen = False
            self._persist(st)
            self.showable.pop(st.oid, None)
            self._unseen.pop(st.oid, None)
            self._done[st.oid] = None
            self._trim(self._done, MAX_DONE_ORDERS)

    # --- clients ------------------------------------------------------------------------------

    def add_client(self, conn: ClientConn) -> None:
        """Register a connection; it holds its name's orders whose holder left."""
        if conn not in self.clients:
            self.clients_per_symbol[conn.fqsn] = self.clients_per_symbol.get(conn.fqsn, 0) + 1
        self.clients.add(conn)
        self.by_name.setdefault(conn.name, set()).add(conn)
        self.by_account.setdefault((conn.broker, conn.account), set()).add(conn)
        if conn.watch == 'symbol':
            self.watch_symbol.setdefault(conn.fqsn, set()).add(conn)
        elif conn.watch == 'all':
            self.watch_all.setdefault(conn.broker, set()).add(conn)
        held = {c.uid for c in self.by_name[conn.name]}
        for st in self.orders.values():
            if st.owner == conn.name and not st.machine.final and st.holder not in held:
                st.holder = conn.uid

    def drop_client(self, conn: ClientConn) -> None:
        """Forget a connection and apply its disconnect policy to the orders it holds.

        ``keep`` (default): its orders live on; they go to the other connections of the same
        name, and the next one to connect holds them. ``cancel``: every open order it holds is
        cancelled. ``cancel-dark``: only its dark orders and alerts are. Never raises.
        """
        if conn in self.clients:
            left = self.clients_per_symbol.get(conn.fqsn, 1) - 1
            if left > 0:
                self.clients_per_symbol[conn.fqsn] = left
            else:
                self.clients_per_symbol.pop(conn.fqsn, None)
        self.clients.discard(conn)
        for index, key in ((self.by_name, conn.name), (self.watch_symbol, conn.fqsn),
                           (self.watch_all, conn.broker), (self.by_account, (conn.broker, conn.account))):
            conns = index.get(key)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del index[key]
        conn.close()
        held = [st for st in self.orders.values() if st.holder == conn.uid and not st.machine.final]
        others = self.by_name.get(conn.name, set())
        for st in held:
            st.holder = next(iter(others)).uid if others else None
        if conn.on_disconnect != 'keep':
            for st in held:
                if conn.on_disconnect == 'cancel-dark' and not st.machine.dark:
                    continue
                log.info('%r left with policy %s: cancelling %s', conn, conn.on_disconnect, st.oid)
                self._apply(st, M.CancelRequest(requester=None))
        self._release_scan(conn.fqsn)

    def positions_for(self, broker: str, account: str) -> list[dict]:
        """Known positions of ``broker``/``account`` (from every open venue)."""
        out = []
        for link in self.venues.open_links():
            if link.key[0] == broker:
                out.extend(to_wire(p) for p in link.positions.values() if p.account == account)
        return out

    def open_orders(self, fqsn: str | None = None, owner: str | None = None, broker: str | None = None) -> list[dict]:
        """Snapshots of the orders not yet done (optionally for one symbol / owner / broker).

        For an ``owner``, orders that closed while it was away (filled, triggered, cancelled by
        a policy) are included once with their final state, so a reconnecting client learns
        what happened; they are then marked seen.
        """
        out = []
        for st in list(self.showable.values()):
            if (fqsn is not None and st.fqsn != fqsn) or (broker is not None and st.venue[0] != broker):
                continue
            if owner is not None and st.owner != owner:
                continue
            if not st.machine.final:
                out.append(st.snapshot())
            elif owner is not None and st.unseen:
                out.append(st.snapshot())
                self._seen(st)
        return out

    def may_control(self, conn: ClientConn, st: OrderState) -> bool:
        """The owner (by name) may modify or cancel an order; a watcher only if its session
        was opened with ``control_others``."""
        return st.owner == conn.name or (conn.control_others and conn.watches(st))

    # --- client requests ----------------------------------------------------------------------

    def handle_client_msg(self, conn: ClientConn, raw: object) -> None:
        """Process one client message at once; every failure becomes an ``error`` status.

        Never raises: it runs in the client's receive loop, which one bad request (or a bug it
        hits) must not end."""
        self.client_msgs += 1
        try:
            self._handle_client_msg(conn, raw)
        except Exception as err:  # a bug: this request is refused, the connection carries on
            self.client_failures += 1
            log.exception('failed to handle %r from %r', raw, conn)
            oid = raw.get('oid') if isinstance(raw, dict) and isinstance(raw.get('oid'), str) else None
            self.reply_error(conn, oid, f'emsd failed to process the request: {err}')

    def _handle_client_msg(self, conn: ClientConn, raw: object) -> None:
        try:
            msg = parse_client_msg(raw)
        except MsgError as err:
            self.rejected_client_msgs += 1
            oid = raw.get('oid') if isinstance(raw, dict) and isinstance(raw.get('oid'), str) else None
            self.reply_error(conn, oid, str(err))
            return
        queue = self.waiting.get(msg.oid)
        if queue is not None:  # an earlier request for this oid waits on its symbol: keep order
            queue.append((conn, msg))
            return
        if not conn.may_trade:
            # a watch-only participant: refused and logged, nothing executed
            self.rejected_client_msgs += 1
            log.warning('refused an order request from %r: no trade role', conn)
            self.reply_error(conn, msg.oid, f'participant {conn.participant!r} may not trade (no trade role)')
            return
        why = self._risk_rate(conn, msg)
        if why:
            self.rejected_client_msgs += 1
            self.reply_error(conn, msg.oid, why, msg if isinstance(msg, Order) else None)
            return
        self._handle(conn, msg)

    def _handle(self, conn: ClientConn, msg: Order | Cancel) -> None:
        try:
            if isinstance(msg, Cancel):
                self.cancel(conn, msg)
            else:
                self.submit(conn, msg)
        except (NoBrokerBackend, SymbolNotFound, FqsnError) as err:
            self.rejected_client_msgs += 1
            self.reply_error(conn, msg.oid, str(err))
        except Exception as err:  # a bug must not kill the client loop
            log.exception('failed to process %r from %r', msg, conn)
            self.reply_error(conn, msg.oid, f'emsd failed to process the request: {err}')

    def _wait_for_symbol(self, conn: ClientConn, msg: Order, scan: Scan) -> None:
        """Park ``msg`` (and later requests for its oid) until the symbol's first quote."""
        self.waiting[msg.oid] = [(conn, msg)]
        if self.spawn is None:  # no task runner (tests): nothing can wait
            self._release_waiting(msg.oid, f'symbol {scan.fqsn} has no quote yet')
            return
        self.spawn(self._await_symbol, msg.oid, scan)

    async def _await_symbol(self, oid: str, scan: Scan) -> None:
        reason = None
        try:
            await scan.wait_ready(SYMBOL_WAIT_S)
            reason = scan.failed
        except TimeoutError:
            reason = f'no quote for {scan.fqsn} after {SYMBOL_WAIT_S:g}s'
        except Exception as err:
            reason = f'feed for {scan.fqsn} failed: {err}'
        self._release_waiting(oid, reason)

    def _release_waiting(self, oid: str, reason: str | None) -> None:
        for conn, msg in self.waiting.pop(oid, ()):
            if reason is None:
                self._handle(conn, msg)
            else:
                self.rejected_client_msgs += 1
                self.reply_error(conn, msg.oid, reason)

    def _check_bounds(self, order: Order, symbol: Symbol) -> str | None:
        """Why ``order``'s size/price are out of bounds for ``symbol`` (None: fine)."""
        if order.action == 'alert':
            return None
        lots = order.size / symbol.lot_size
        if lots > MAX_LOTS:
            return f'size {order.size:g} is {lots:.3g} lots; at most {MAX_LOTS:.0e} lots'
        notional = order.size * order.price
        if not math.isfinite(notional) or notional > MAX_NOTIONAL:
            return f'notional {notional:.3g} (price x size) is above {MAX_NOTIONAL:.0e}'
        return None

    def submit(self, conn: ClientConn, order: Order) -> None:
        """A new order or, for a known oid, a modify (SPEC §5.5)."""
        st = self.orders.get(order.oid)
        if st is not None:
            self.modify(conn, st, order)
            return
        sym, broker = parse_fqsn(order.symbol)
        if order.brokers and broker not in order.brokers:
            self.reply_error(conn, order.oid, f'symbol {order.symbol} is not on brokers {order.brokers}', order)
            return
        get_brokermod(broker)
        scan = self.scans.get(order.symbol.lower())
        if scan.failed:
            self.reply_error(conn, order.oid, scan.failed, order)
            self.scans.close(scan.fqsn)
            return
        if scan.symbol is None or scan.last is None:
            self._wait_for_symbol(conn, order, scan)
            return
        account = 'paper' if order.exec_mode == 'paper' else order.account
        price = order.price
        if order.action != 'alert':
            price = round_to_tick(order.price, scan.symbol.tick_size)
            if price <= 0:
                self.reply_error(conn, order.oid, f'price {order.price:g} rounds to 0 at tick {scan.symbol.tick_size:g}', order)
                return
        order = order.model_copy(update={'owner': conn.name, 'account': account, 'price': price})
        why = self._check_bounds(order, scan.symbol) or self._risk_check(order, scan.last)
        if why:
            self.rejected_client_msgs += 1
            self.reply_error(conn, order.oid, why, order)
            return
        key = self.venues.key_for(broker, account)
        st = OrderState(
            machine=M.OrderMachine(req=order, owner=conn.name, venue=key, symbol=sym),
            holder=conn.uid, created_ns=self.clock(),
        )
        self.orders[order.oid] = st  # recorded before anything is sent: a fast ack finds it
        self.showable[order.oid] = st
        self.live_per_symbol[st.fqsn] = self.live_per_symbol.get(st.fqsn, 0) + 1
        self.open_by_account.setdefault(account, {}).setdefault(st.fqsn, {})[order.oid] = st
        if order.action == 'alert' or order.exec_mode in ('dark', 'paper'):
            if order.action != 'alert':
                self.venues.link(key)  # start opening now, so a trigger rarely waits on a spawn
            self._apply(st, M.SubmitDark())
        else:
            self._apply(st, M.SubmitLive())

    def modify(self, conn: ClientConn, st: OrderState, order: Order) -> None:
        """Resent oid: re-arm a dark order, or modify the live one keeping its reqid."""
        if not self.may_control(conn, st):
            self.reply_error(conn, order.oid, f'order {order.oid} is not yours to modify')
            return
        if order.symbol.lower() != st.fqsn or order.action != st.req.action:
            self.reply_error(conn, order.oid, 'a modify may change price and size only', st.req)
            return
        price = order.price
        scan = self.scans.peek(st.fqsn)
        if order.action != 'alert' and scan is not None and scan.symbol is not None:
            price = round_to_tick(order.price, scan.symbol.tick_size)
            why = self._check_bounds(order.model_copy(update={'price': price}), scan.symbol)
            why = why or self._risk_check(st.req.model_copy(update={'price': price, 'size': order.size or st.req.size}),
                                          scan.last, st)
            if why or price <= 0:
                self.reply_error(conn, order.oid, why or f'price {order.price:g} rounds to 0', st.req)
                return
        self._apply(st, M.ModifyRequest(price=price, size=order.size, requester=conn), requester=conn)

    def cancel(self, conn: ClientConn, msg: Cancel) -> None:
        """Cancel a dark order now, a live one at its venue (or with its ack)."""
        st = self.orders.get(msg.oid)
        if st is None:
            self.reply_error(conn, msg.oid, f'unknown order {msg.oid}')
            return
        if not self.may_control(conn, st):
            # say nothing about someone else's order (no req, no owner)
            self.reply_error(conn, msg.oid, f'order {msg.oid} is not yours to cancel')
            return
        self._apply(st, M.CancelRequest(requester=conn), requester=conn)

    def cancel_order(self, st: OrderState) -> None:
        """Cancel ``st`` on emsd's own behalf (disconnect policies, admin tools)."""
        self._apply(st, M.CancelRequest(requester=None))

    # --- risk (policy in ._risk; only the facts it needs are gathered here) ---------------------

    def _risk_rate(self, conn: ClientConn, msg: Order | Cancel) -> str | None:
        """The participant's order/cancel rate (a token per request)."""
        if self.risk.idle:
            return None
        if isinstance(msg, Cancel):
            st = self.orders.get(msg.oid)
            account = st.req.account if st is not None else conn.account
            return self.risk.check_rate(conn.participant, 'cancel', account, msg.symbol.lower())
        account = 'paper' if msg.exec_mode == 'paper' else msg.account
        return self.risk.check_rate(conn.participant, 'order', account, msg.symbol.lower())

    def _risk_check(self, order: Order, last: float | None, st: OrderState | None = None) -> str | None:
        """Why the risk engine refuses ``order`` (new; or ``st`` modified / triggering)."""
        if order.action == 'alert':
            return None
        live = order.exec_mode == 'live' or (st is not None and not st.machine.dark)
        if self.risk.idle and not order.reduce_only:  # no-config fast path: the price band only
            return self.risk.check_band(order.price, last, self.risk.band) if live else None
        fqsn = order.symbol.lower()
        exposure = None
        if self.risk.needs_exposure(order.account, fqsn, order.reduce_only):
            exposure = self._exposure(order.account, fqsn)
        old = max(st.req.size - st.machine.filled, 0.0) if st is not None else 0.0
        return self.risk.check_order(
            account=order.account, fqsn=fqsn, action=order.action, price=order.price,
            size=order.size - (st.machine.filled if st is not None else 0.0),
            live=live, last=last, reduce_only=order.reduce_only, exposure=exposure, old_size=old)

    def _exposure(self, account: str, fqsn: str) -> Exposure:
        """The account's position in ``fqsn`` and its open orders (a scan of the account's
        open orders: only done when a configured limit or state needs it)."""
        sym, broker = parse_fqsn(fqsn)
        key = self.venues.key_for(broker, account)
        position = 0.0
        for link in self.venues.open_links():
            if link.key == key:
                pos = link.positions.get((account, sym))
                position = pos.size if pos is not None else 0.0
        buys = sells = 0.0
        opens = self.open_by_account.get(account, {})
        for other in opens.get(fqsn, {}).values():
            req = other.machine.req
            if req.action == 'buy':
                buys += req.size - other.machine.filled
            elif req.action == 'sell':
                sells += req.size - other.machine.filled
        count = sum(len(by_oid) for by_oid in opens.values())
        return Exposure(position=position, open_buys=buys, open_sells=sells, open_orders=count)

    def set_trading_state(self, scope: str, state: str, cancel_alerts: bool = False) -> dict:
        """Put an account (or the cluster, ``*``) in ``state``; journaled first. Halting
        cancels every not-done order in scope (alerts too with ``cancel_alerts``)."""
        from ._risk import CLUSTER, STATES

        if state not in STATES:
            raise ValueError(f'unknown trading state {state!r}: expected one of {", ".join(STATES)}')
        if self.journal is not None:  # a failed write raises: nothing changed
            self.journal.write_state(scope, state, self.clock())
        self.risk.set_state(scope, state)
        self._announce_state(scope)  # before the halt's cancels: clients learn why first
        cancelled = 0
        if state == HALTED:
            for st in list(self.orders.values()):
                if st.machine.final or (scope != CLUSTER and st.req.account != scope):
                    continue
                if st.req.action == 'alert' and not cancel_alerts:
                    continue
                if st.machine.state == M.PENDING_CANCEL:
                    continue
                self._apply(st, M.CancelRequest(requester=None, reason=f'trading halted ({scope})'))
                cancelled += 1
        log.warning('trading state of %s is now %s (%d orders cancelled)', scope, state, cancelled)
        return {'scope': scope, 'state': state, 'cancelled': cancelled, 'states': self.risk.snapshot()}

    def _announce_state(self, scope: str) -> None:
        """Push the state that now applies to every client whose account ``scope`` covers
        (a chart's status bar shows it; nothing polls)."""
        from ._risk import CLUSTER

        now = self.clock()
        for conn in list(self.clients):
            if scope == CLUSTER or conn.account == scope:
                conn.push(to_wire(TradingState(account=conn.account, state=self.risk.state_of(conn.account),
                                               scope=scope, time_ns=now)))

    # --- dark triggers ------------------------------------------------------------------------

    def on_trigger(self, st: OrderState, tick_type: str, tick_price: float, tick_size: float) -> None:
        """A resting dark order or alert was crossed by a tick: fire it exactly once."""
        limit = None
        if st.req.action != 'alert':
            limit = release_price(st.req.action, tick_price, tick_size)
            why = self._risk_check(st.req.model_copy(update={'price': limit, 'exec_mode': 'live'}), tick_price, st)
            if why:  # refused at trigger: the dark order ends here, nothing reaches the venue
                self._apply(st, M.CancelRequest(requester=None, reason=f'not released: {why}'))
                return
        self._apply(st, M.Trigger(price=tick_price, limit_price=limit))

    # --- venue events -------------------------------------------------------------------------

    def _order_for(self, key: VenueKey, reqid: Any, oid: str | None) -> OrderState | None:
        if oid is not None:
            st = self.orders.get(oid)
            if st is not None and st.venue == key:
                return st
        if reqid is None:
            return None
        found = self.by_reqid.get((key, reqid))
        return self.orders.get(found) if found else None

    def on_venue_msg(self, link: VenueLink, raw: Any) -> None:
        """Translate one venue message into machine events (SPEC §5.6). Never raises."""
        self.venue_events += 1
        try:
            msg = parse_brokerd_msg(raw)
        except MsgError as err:
            self.rejected_broker_msgs += 1
            log.warning('invalid message from %s: %s', '.'.join(link.key), err)
            return
        try:
            self._on_venue_msg(link, msg)
        except Exception:
            log.exception('failed to handle %r from %s; continuing', msg, link.key)

    def _on_venue_msg(self, link: VenueLink, msg: Any) -> None:
        key = link.key
        if isinstance(msg, BrokerdPosition):
            link.positions[(msg.account, msg.symbol)] = msg
            self.broadcast_position(msg)
            return
        if isinstance(msg, BrokerdOrderAck):
            st = self.orders.get(msg.oid)
            if st is None or st.venue != key:
                self.unknown_events += 1
                log.warning('ack for unknown order %s (reqid %s) from %s', msg.oid, msg.reqid, key)
                return
            bound = st.machine.reqid
            crash_point('emsd.before_ack_journal')
            if self._apply(st, M.Ack(reqid=msg.reqid)) and bound is None:
                self.by_reqid[(key, msg.reqid)] = st.oid
                for _, early in self.early.pop((key, msg.reqid), ()):
                    self._on_venue_msg(link, early)
            return
        reqid = getattr(msg, 'reqid', None)
        st = self._order_for(key, reqid, getattr(msg, 'oid', None))
        if st is None:
            if reqid is not None:
                self._hold_early(key, reqid, msg)
            else:
                self.unknown_events += 1
                log.warning('event for no order from %s: %r', key, msg)
            return
        self._apply(st, M.venue_event(msg))

    def _hold_early(self, key: VenueKey, reqid: Any, msg: Any) -> None:
        """Keep an event whose reqid no ack has bound yet (a venue may race its own ack)."""
        now = self.clock()
        while self.early:
            first_key, events = next(iter(self.early.items()))
            if len(self.early) < EARLY_MAX and now - events[0][0] < EARLY_TTL_NS:
                break
            self.early.popitem(last=False)
            self.unknown_events += len(events)
            log.warning('dropping %d events for unknown reqid %s from %s', len(events), first_key[1], first_key[0])
        self.early.setdefault((key, reqid), []).append((now, msg))

    def _live_on(self, key: VenueKey) -> list[OrderState]:
        return [st for st in self.orders.values() if st.venue == key and st.machine.live]

    def on_venue_lost(self, link: VenueLink, reason: str) -> None:
        """A venue's dialogue died: tell the owners of its live orders (not final: their fate is
        the venue's to tell) and reopen it to reconcile; after :data:`VENUE_GIVEUP_S` of failed
        attempts, end them ``lost``. Dark orders and alerts are untouched. Never raises."""
        key = link.key
        for k in [k for k in self.early if k[0] == key]:
            del self.early[k]
        live = self._live_on(key)
        if not live:
            self.venue_down.pop(key, None)
            return
        now = self.clock()
        first = key not in self.venue_down
        since = self.venue_down.setdefault(key, now)
        name = '.'.join(key)
        if now - since >= VENUE_GIVEUP_S * 1e9:
            del self.venue_down[key]
            for st in live:
                self._apply(st, M.VenueLost(f'trades dialogue {name} did not come back within '
                                            f'{VENUE_GIVEUP_S:g}s (last: {reason})'))
            return
        if first:
            for st in live:
                self._apply(st, M.VenueDown(f'trades dialogue {name} lost ({reason})'))
        self.venues.reopen(key, VENUE_RETRY_S)

    def on_send_failed(self, link: VenueLink, cmd: BrokerdOrder | BrokerdCancel, reason: str) -> None:
        """A queued command never left for the venue (its dialogue never opened, or closed
        first): the request it carried failed."""
        st = self.orders.get(cmd.oid)
        if st is not None and not st.machine.final:
            self._apply(st, M.SendFailed(reason))

    def since_ns_for(self, key: VenueKey) -> int:
        """From when a (re)opening venue must report ended orders and fills: the oldest live
        order there (less a margin), or now."""
        born = [st.created_ns for st in self._live_on(key)]
        return (min(born) - SINCE_MARGIN_NS) if born else self.clock()

    def on_venue_open(self, link: VenueLink) -> None:
        """A venue's dialogue (re)opened: reconcile with what it reports (the venue is the
        truth for live orders). Never raises."""
        self.venue_down.pop(link.key, None)
        try:
            self._reconcile(link)
        except Exception:
            log.exception('reconciliation with %s failed', link.key)

    def _reconcile(self, link: VenueLink) -> None:
        snap = getattr(link, 'snapshot', None)
        if snap is None:
            return
        key = link.key
        full = snap.since_ns is not None  # the venue reports ended orders and fills since then
        by_oid = {i.oid: i for i in snap.orders if i.oid}
        by_reqid = {i.reqid: i for i in snap.orders}
        fills: dict[Any, list] = {}
        for f in sorted(snap.fills, key=lambda f: f.time_ns):
            fills.setdefault(f.oid or ('reqid', f.reqid), []).append(f)
        now = self.clock()
        for st in self._live_on(key):
            m = st.machine
            info = by_oid.get(st.oid) or (by_reqid.get(m.reqid) if m.reqid is not None else None)
            bound_now = info is not None and m.reqid is None
            if bound_now:  # the ack was lost with the dialogue; the ack sends what was pending
                self.by_reqid[(key, info.reqid)] = st.oid
                self._apply(st, M.Ack(reqid=info.reqid))
            mine = fills.get(st.oid, []) + (fills.get(('reqid', m.reqid), []) if m.reqid is not None else [])
            for f in mine:
                if f.fill_id is None or f.fill_id not in m.fill_ids:
                    self._apply(st, M.venue_event(f))
            if m.final:
                continue
            # a command queued on this very link while it opened goes out right after this
            # reconciliation: the venue cannot know it yet, and it must not be sent twice
            queued_here = st.queued_on is link
            if info is None and queued_here:
                continue
            if info is not None:
                replaced = (info.price, info.size) == (m.req.price, m.req.size)
                if m.state != M.PENDING_REPLACE or replaced or info.status.lower() != 'open':
                    self._apply(st, M.VenueStatus(
                        status=info.status, filled=info.filled,
                        remaining=max(info.size - info.filled, 0.0),
                        details={'reconciled': True, **info.model_dump(mode='json')}))
                if not m.final and not bound_now and not queued_here:
                    for cmd in m.resend_commands(now):
                        self._send(st, cmd)
            elif m.reqid is None and m.state in (M.PENDING_NEW, M.PENDING_REPLACE):
                log.info('%s never reached %s: sending it now', st.oid, key)
                for cmd in m.resend_commands(now):
                    self._send(st, cmd)
            elif m.reqid is None and m.state == M.PENDING_CANCEL:
                self._apply(st, M.VenueStatus(status='cancelled', reason='cancelled before it reached the venue'))
            elif full:
                self._apply(st, M.VenueLost(f'the venue {".".join(key)} does not know this order'))
        for info in snap.orders:
            if info.status.lower() in ('open', 'submitted', 'new', 'working', 'accepted') \
                    and (info.oid is None or info.oid not in self.orders) \
                    and (key, info.reqid) not in self.by_reqid:
                self._adopt(key, info)

    def _adopt(self, key: VenueKey, info: Any) -> None:
        """An order working at the venue that emsd never placed: visible to watchers as
        external, cancellable by a client allowed to control others."""
        try:
            order = Order(
                action=info.action, oid=info.oid or f'ext-{key[0]}-{info.reqid}',
                symbol=f'{info.symbol}.{key[0]}', price=info.price, size=info.size,
                exec_mode='live', account=info.account, owner=EXTERNAL_OWNER,
            )
        except Exception as err:
            log.warning('cannot adopt external order %s at %s: %s', info.reqid, key, err)
            return
        m = M.OrderMachine(req=order, owner=EXTERNAL_OWNER, venue=key, symbol=info.symbol,
                           reqid=info.reqid)
        st = OrderState(machine=m, created_ns=self.clock())
        self.orders[order.oid] = st
        self.showable[order.oid] = st
        self.by_reqid[(key, info.reqid)] = order.oid
        self.live_per_symbol[st.fqsn] = self.live_per_symbol.get(st.fqsn, 0) + 1
        self.open_by_account.setdefault(order.account, {}).setdefault(st.fqsn, {})[order.oid] = st
        log.info('adopted external order %s (reqid %s) at %s', order.oid, info.reqid, key)
        self._apply(st, M.Adopt(filled=info.filled))

    # --- restart --------------------------------------------------------------------------------

    def restore(self, rows: list[Any]) -> dict[str, int]:
        """Rebuild the order map from journal records (at emsd start): dark orders re-armed with
        their original direction, live orders bound to their reqids (their venues are reopened
        and reconciled), finished orders not yet seen by their owner kept for its snapshot."""
        counts = {'dark': 0, 'live': 0, 'unseen': 0, 'bad': 0}
        for row in rows:
            try:
                rec = row.record
                m = M.OrderMachine.from_record(rec['machine'])
            except Exception as err:
                counts['bad'] += 1
                log.error('journal: cannot restore order %s: %s', getattr(row, 'oid', '?'), err)
                continue
            st = OrderState(machine=m, unseen=row.unseen, last_msg=rec.get('last_msg'),
                            direction=rec.get('direction'), created_ns=rec.get('created_ns') or 0)
            self.orders[m.oid] = st
            if not m.final or st.unseen:
                self.showable[m.oid] = st
            if m.reqid is not None:
                self.by_reqid[(m.venue, m.reqid)] = m.oid
            if m.final:
                st.retired = True
                if st.unseen:
                    self._unseen[m.oid] = None
                    counts['unseen'] += 1
                continue
            self.live_per_symbol[st.fqsn] = self.live_per_symbol.get(st.fqsn, 0) + 1
            self.open_by_account.setdefault(m.req.account, {}).setdefault(st.fqsn, {})[m.oid] = st
            if m.dark:
                self.scans.get(st.fqsn).arm(st, direction=st.direction)
                counts['dark'] += 1
            else:
                counts['live'] += 1
        for key in {st.venue for st in self.orders.values() if st.machine.live}:
            self.venue_down.setdefault(key, self.clock())
            self.venues.link(key)  # opens it; on_venue_open reconciles
        log.info('restored from the journal: %s', counts)
        return counts

    # --- scans --------------------------------------------------------------------------------

    def _release_scan(self, fqsn: str) -> None:
        """Close a symbol's scan (and feed) once nothing needs it: no resting dark order, no
        live order, no client connected for the symbol."""
        scan = self.scans.peek(fqsn)
        if scan is None or len(scan):
            return
        if self.live_per_symbol.get(fqsn) or self.clients_per_symbol.get(fqsn):
            return
        if any(q[0][1].symbol.lower() == fqsn for q in self.waiting.values() if q):
            return
        self.scans.close(fqsn)

    # --- stats --------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counts for tests and the CLI."""
        states: dict[str, int] = {}
        phases: dict[str, int] = {}
        for st in self.orders.values():
            m = st.machine
            states[m.state] = states.get(m.state, 0) + 1
            phase = 'dark' if m.dark else 'live' if m.live else 'done'
            phases[phase] = phases.get(phase, 0) + 1
        links = self.venues.open_links()
        return {
            'clients': len(self.clients),
            'venues': [list(link.key) for link in links],
            'venue_requests': {'.'.join(link.key): getattr(link, 'sent', 0) for link in links},
            'scans': [s.fqsn for s in self.scans.all()],
            'dark': sum(len(s) for s in self.scans.all()),
            'states': states,
            'phases': phases,
            'orders': len(self.orders),
            'rejected_client_msgs': self.rejected_client_msgs,
            'rejected_broker_msgs': self.rejected_broker_msgs,
            'illegal_events': self.illegal_events,
            'late_events': self.late_events,
            'apply_failures': self.apply_failures,
            'client_failures': self.client_failures,
            'unknown_events': self.unknown_events,
            'client_msgs': self.client_msgs,
            'venue_events': self.venue_events,
            'trading_states': self.risk.snapshot(),
            'risk_refused': self.risk.refused,
        }
