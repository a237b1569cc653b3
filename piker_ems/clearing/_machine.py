# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
The order state machine: one per oid, the only code that decides what an order's state is and
which statuses and venue commands an event produces.

It is pure: no trio, no tractor, no clock (``now_ns`` is passed in), no I/O. The Router feeds it
events (client requests, dark triggers, venue messages, venue loss) and carries out what
:meth:`OrderMachine.apply` returns: statuses to route, commands to send to the venue, and
whether to arm or disarm the order in the dark book.

The transitions are data (:data:`TRANSITIONS`): for each state, the events it accepts and the
states each may lead to. An event a state does not accept raises :class:`IllegalEvent`; the
Router catches it once, logs and counts it, and relays nothing. ``docs/order-states.md`` is the
trader's version of the table (``tests/test_machine.py`` checks the two agree).

Race rules (FIX semantics, adapted to a protocol where the venue's id ``reqid`` arrives in an
ack and later events carry only that id):

- a cancel or modify requested before the venue's ack is *pending* and goes out with the ack;
  nothing reaches the venue for an order before its ack;
- a fill that beats a cancel wins: the order ends ``broker_executed`` and the venue's refusal of
  the cancel, arriving after the final status, is dropped (counted, never relayed);
- a modify crossing a fill: the fill is applied to the order whatever its pending price; a
  refused modify puts the order back at its last confirmed price (``error`` to the requester,
  with that request, so a chart can move the line back);
- fills never exceed the order size (an overfill is an illegal event); a fill id seen before is
  a duplicate and is dropped;
- a modify requested while another is pending waits for that one to be confirmed (chained
  replaces are not sent blind);
- each oid gets exactly one final status and no status after it; a later request about it is
  answered with ``error`` to the requester alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from . import _statuses as S
from ._messages import (
    BrokerdCancel,
    BrokerdError,
    BrokerdFill,
    BrokerdOrder,
    BrokerdOrderAck,
    BrokerdStatus,
    Order,
    Status,
)

__all__ = [
    'FINAL_STATES',
    'STATES',
    'TRANSITIONS',
    'Ack',
    'Adopt',
    'CancelRequest',
    'Effects',
    'Event',
    'IllegalEvent',
    'ModifyRequest',
    'OrderMachine',
    'SendFailed',
    'SubmitDark',
    'SubmitLive',
    'Trigger',
    'VenueError',
    'VenueFill',
    'VenueDown',
    'VenueLost',
    'VenueStatus',
]

# --- states -----------------------------------------------------------------------------------

NEW = 'new'                            # created, no event applied yet
ARMED = 'armed'                        # dark order or alert resting in emsd's dark book
PENDING_NEW = 'pending_new'            # sent to the venue, not yet confirmed working
WORKING = 'working'                    # the venue works it, nothing filled
PARTIALLY_FILLED = 'partially_filled'  # the venue works it, part filled
PENDING_CANCEL = 'pending_cancel'      # a cancel was requested (sent, or waiting for the ack)
PENDING_REPLACE = 'pending_replace'    # a modify was requested (sent, or waiting for the ack)
FILLED = 'filled'                      # final: fully executed
CANCELLED = 'cancelled'                # final: cancelled (dark or at the venue), expired, closed
REJECTED = 'rejected'                  # final: the venue refused or failed the order
TRIGGERED = 'triggered'                # final: an alert fired
LOST = 'lost'                          # final: its venue was lost; the order's fate is unknown

STATES: tuple[str, ...] = (
    NEW, ARMED, PENDING_NEW, WORKING, PARTIALLY_FILLED, PENDING_CANCEL, PENDING_REPLACE,
    FILLED, CANCELLED, REJECTED, TRIGGERED, LOST,
)
FINAL_STATES: frozenset[str] = frozenset({FILLED, CANCELLED, REJECTED, TRIGGERED, LOST})
#: States in which the order lives at a venue.
LIVE_STATES: frozenset[str] = frozenset({
    PENDING_NEW, WORKING, PARTIALLY_FILLED, PENDING_CANCEL, PENDING_REPLACE,
})

# --- events -----------------------------------------------------------------------------------

Requester = Any  # an opaque token of the client that made a request (the Router's connection)


@dataclass(frozen=True, slots=True)
class SubmitDark:
    """A new dark buy/sell or alert (held in emsd)."""
    kind = 'submit_dark'


@dataclass(frozen=True, slots=True)
class Adopt:
    """An order found working at the venue that emsd never placed (reconciliation), with what
    the venue says is already filled."""
    filled: float = 0.0
    kind = 'adopt'


@dataclass(frozen=True, slots=True)
class SubmitLive:
    """A new live order, sent to the venue at once (its price already on the tick grid)."""
    kind = 'submit_live'


@dataclass(frozen=True, slots=True)
class ModifyRequest:
    """A client resent a known oid: new price and/or size (already validated)."""
    price: float
    size: float
    requester: Requester = None
    kind = 'modify'


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A client (or a disconnect policy, a halt, a risk refusal at trigger) asks to cancel;
    ``reason`` goes on a dark order's ``dark_cancelled`` status."""
    requester: Requester = None
    reason: str | None = None
    kind = 'cancel'


@dataclass(frozen=True, slots=True)
class Trigger:
    """The market crossed a dark order or alert at ``price``; a buy/sell is released as a limit
    at ``limit_price``."""
    price: float
    limit_price: float | None = None
    kind = 'trigger'


@dataclass(frozen=True, slots=True)
class Ack:
    """The venue bound its id to our order."""
    reqid: int | str
    kind = 'ack'


@dataclass(frozen=True, slots=True)
class VenueStatus:
    """A venue status word for the order (``submitted``, ``cancelled``, ``filled`` ...)."""
    status: str
    filled: float = 0.0
    remaining: float = 0.0
    reason: str = ''
    details: dict | None = None

    @property
    def kind(self) -> str:
        resp = S.venue_status_resp(self.status, self.remaining)
        if resp is None:
            return 'bad_status'
        return _STATUS_KINDS.get(resp, 'notice')


@dataclass(frozen=True, slots=True)
class VenueFill:
    """One execution reported by the venue."""
    size: float
    price: float
    fill_id: str | None = None
    details: dict | None = None
    kind = 'fill'


@dataclass(frozen=True, slots=True)
class VenueError:
    """The venue refused or failed something about this order."""
    reason: str
    details: dict | None = None
    kind = 'venue_error'


@dataclass(frozen=True, slots=True)
class VenueDown:
    """The order's venue dialogue was lost; emsd reconnects and reconciles (state unchanged)."""
    reason: str
    kind = 'venue_down'


@dataclass(frozen=True, slots=True)
class VenueLost:
    """The order's venue died or went silent: its state there is unknown."""
    reason: str
    kind = 'venue_lost'


@dataclass(frozen=True, slots=True)
class SendFailed:
    """A command for this order could not be delivered to its venue."""
    reason: str
    kind = 'send_failed'


Event = Union[
    Adopt, SubmitDark, SubmitLive, ModifyRequest, CancelRequest, Trigger, Ack, VenueStatus,
    VenueFill, VenueError, VenueDown, VenueLost, SendFailed,
]

#: Venue status resps and the event kind each is.
_STATUS_KINDS: dict[str, str] = {
    S.BROKER_SUBMITTED: 'confirmed',
    S.BROKER_PARTIALLY_FILLED: 'progress',
    S.BROKER_EXECUTED: 'executed',
    S.BROKER_CANCELLED: 'venue_cancelled',
    S.BROKER_EXPIRED: 'venue_cancelled',
    S.BROKER_CLOSED: 'venue_cancelled',
    S.BROKER_INACTIVE: 'venue_cancelled',
    S.BROKER_ERRORED: 'venue_error',
}

# --- the table --------------------------------------------------------------------------------

_PENDING = (PENDING_CANCEL, PENDING_REPLACE)
_WORK = (WORKING, PARTIALLY_FILLED)

#: state -> {event kind: the states it may lead to}. Anything else is an IllegalEvent.
#: Client requests (modify, cancel) are accepted in every state: where they cannot act they
#: are answered with ``error`` to the requester and the state stays.
TRANSITIONS: dict[str, dict[str, tuple[str, ...]]] = {
    NEW: {
        'submit_dark': (ARMED,),
        'submit_live': (PENDING_NEW,),
        'adopt': (WORKING, PARTIALLY_FILLED),
    },
    ARMED: {
        'modify': (ARMED,),
        'cancel': (CANCELLED,),
        'trigger': (PENDING_NEW, TRIGGERED),
    },
    PENDING_NEW: {
        'modify': (PENDING_REPLACE, PENDING_NEW),
        'cancel': (PENDING_CANCEL,),
        'ack': (PENDING_NEW,),
        'confirmed': (WORKING,),
        'progress': (WORKING,),
        'fill': (PARTIALLY_FILLED, FILLED),
        'executed': (FILLED,),
        'venue_cancelled': (CANCELLED,),
        'notice': (PENDING_NEW,),
        'venue_error': (REJECTED,),
        'venue_down': (PENDING_NEW,),
        'venue_lost': (LOST,),
        'send_failed': (REJECTED,),
    },
    WORKING: {
        'modify': (PENDING_REPLACE, WORKING),
        'cancel': (PENDING_CANCEL,),
        'ack': (WORKING,),
        'confirmed': (WORKING,),
        'progress': (WORKING,),
        'fill': (PARTIALLY_FILLED, FILLED),
        'executed': (FILLED,),
        'venue_cancelled': (CANCELLED,),
        'notice': (WORKING,),
        'venue_error': (WORKING,),
        'venue_down': (WORKING,),
        'venue_lost': (LOST,),
    },
    PARTIALLY_FILLED: {
        'modify': (PENDING_REPLACE, PARTIALLY_FILLED),
        'cancel': (PENDING_CANCEL,),
        'ack': (PARTIALLY_FILLED,),
        'confirmed': (PARTIALLY_FILLED,),
        'progress': (PARTIALLY_FILLED,),
        'fill': (PARTIALLY_FILLED, FILLED),
        'executed': (FILLED,),
        'venue_cancelled': (CANCELLED,),
        'notice': (PARTIALLY_FILLED,),
        'venue_error': (PARTIALLY_FILLED,),
        'venue_down': (PARTIALLY_FILLED,),
        'venue_lost': (LOST,),
    },
    PENDING_CANCEL: {
        'modify': (PENDING_CANCEL,),
        'cancel': (PENDING_CANCEL,),
        'ack': (PENDING_CANCEL,),
        'confirmed': (PENDING_CANCEL,),
        'progress': (PENDING_CANCEL,),
        'fill': (PENDING_CANCEL, FILLED),
        'executed': (FILLED,),
        'venue_cancelled': (CANCELLED,),
        'notice': (PENDING_CANCEL,),
        'venue_error': (WORKING, PARTIALLY_FILLED, FILLED, REJECTED),
        'venue_down': (PENDING_CANCEL,),
        'venue_lost': (LOST,),
        'send_failed': (WORKING, PARTIALLY_FILLED, FILLED, REJECTED),
    },
    PENDING_REPLACE: {
        'modify': (PENDING_REPLACE,),
        'cancel': (PENDING_CANCEL,),
        'ack': (PENDING_REPLACE,),
        'confirmed': (PENDING_REPLACE, WORKING, PARTIALLY_FILLED, FILLED),
        'progress': (PENDING_REPLACE,),
        'fill': (PENDING_REPLACE, FILLED),
        'executed': (FILLED,),
        'venue_cancelled': (CANCELLED,),
        'notice': (PENDING_REPLACE,),
        'venue_error': (WORKING, PARTIALLY_FILLED, FILLED, REJECTED),
        'venue_down': (PENDING_REPLACE,),
        'venue_lost': (LOST,),
        'send_failed': (WORKING, PARTIALLY_FILLED, FILLED, REJECTED),
    },
    **{final: {'modify': (final,), 'cancel': (final,)} for final in FINAL_STATES},
    # the venue's own "filled" after the fill that completed the order: confirms, says nothing
    FILLED: {'modify': (FILLED,), 'cancel': (FILLED,), 'executed': (FILLED,)},
}

#: What each state means, for the docs and the CLI.
STATE_DOC: dict[str, str] = {
    NEW: 'created; no event applied yet',
    ARMED: 'dark order or alert resting in emsd, invisible to the venue',
    PENDING_NEW: 'sent to the venue; not yet confirmed working',
    WORKING: 'working at the venue, nothing filled',
    PARTIALLY_FILLED: 'working at the venue, partly filled',
    PENDING_CANCEL: 'a cancel is on its way (or waits for the venue ack)',
    PENDING_REPLACE: 'a modify is on its way (or waits for the venue ack)',
    FILLED: 'final: fully filled',
    CANCELLED: 'final: cancelled, expired or closed without a complete fill',
    REJECTED: 'final: the venue refused or failed it',
    TRIGGERED: 'final: an alert fired',
    LOST: 'final: its venue was lost for good, or does not know it; its state there is unknown',
}

# Relative tolerance for comparing fill sums with the order size (float sums of lots).
_SIZE_EPS = 1e-9


class IllegalEvent(Exception):
    """An event the order's state does not accept: logged and counted, never relayed."""

    def __init__(self, oid: str, state: str, kind: str, why: str = '') -> None:
        self.oid, self.state, self.kind = oid, state, kind
        super().__init__(
            f'order {oid[:12]}: {kind} not allowed in state {state}' + (f' ({why})' if why else '')
        )


# --- effects ----------------------------------------------------------------------------------

Audience = Literal['all', 'requester']


@dataclass(slots=True)
class Effects:
    """What the Router must do after an event, in order.

    ``statuses``: (audience, Status) pairs: ``all`` is the owner and watchers, ``requester`` is
    only the client that made the request the status answers (``requester`` token).
    ``commands``: venue requests (``BrokerdOrder`` / ``BrokerdCancel``).
    ``book``: ``arm`` (rest or re-arm in the dark book), ``disarm`` or None.
    """

    statuses: list[tuple[Audience, Status, Requester]] = field(default_factory=list)
    commands: list[BrokerdOrder | BrokerdCancel] = field(default_factory=list)
    book: Literal['arm', 'disarm'] | None = None

    @property
    def empty(self) -> bool:
        return not (self.statuses or self.commands or self.book)


# --- the machine ------------------------------------------------------------------------------

@dataclass(eq=False)
class OrderMachine:
    """One order's state and data; :meth:`apply` is its only mutator."""

    req: Order                  # the order as last requested (price, size, owner, account)
    owner: str
    venue: tuple[str, str]      # (broker, 'paper' | 'live')
    symbol: str                 # the broker-local symbol key sent to the venue
    state: str = NEW
    reqid: int | str | None = None
    filled: float = 0.0
    confirmed: bool = False     # the venue confirmed the new order working
    confirmed_req: Order | None = None  # the request the venue last confirmed
    queued_modify: Order | None = None  # a modify waiting for the pending one
    requester: Requester = None  # who asked for the pending cancel/modify
    trigger_price: float | None = None
    last_resp: str | None = None
    fill_ids: set[str] = field(default_factory=set)

    @property
    def oid(self) -> str:
        return self.req.oid

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def dark(self) -> bool:
        return self.state == ARMED

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    # -- public ------------------------------------------------------------------------------

    def accepts(self, event: Event) -> bool:
        """Whether :meth:`apply` would accept ``event`` (without applying it)."""
        return event.kind in TRANSITIONS[self.state]

    def apply(self, event: Event, now_ns: int) -> Effects:
        """Apply one event: change state and return what the Router must do.

        Raises :class:`IllegalEvent` (and changes nothing) for an event the state does not
        accept.
        """
        kind = event.kind
        allowed = TRANSITIONS[self.state].get(kind)
        if allowed is None:
            raise IllegalEvent(self.oid, self.state, kind)
        before = self.state
        saved = dict(self.__dict__, fill_ids=set(self.fill_ids))
        fx = Effects()
        try:
            getattr(self, f'_on_{kind}')(event, fx, now_ns)
            if self.state not in allowed:  # a bug in a handler, never the venue's fault
                raise AssertionError(f'{kind} took {self.oid} from {before} to {self.state}: not in the table')
        except BaseException:
            self.__dict__.update(saved)  # all or nothing: a failed event changes nothing
            raise
        return fx

    # -- helpers -----------------------------------------------------------------------------

    def _status(self, fx: Effects, resp: str, now_ns: int, audience: Audience = 'all',
                requester: Requester = None, **fields: Any) -> None:
        if audience == 'all':
            self.last_resp = resp
        fx.statuses.append((audience, Status(
            oid=self.oid, time_ns=now_ns, resp=resp, req=self.req, owner=self.owner,
            broker_reqid=self.reqid, trigger_price=fields.pop('trigger_price', self.trigger_price),
            **fields,
        ), requester))

    def _refuse(self, fx: Effects, requester: Requester, reason: str, now_ns: int) -> None:
        """Answer a client request with ``error`` to that client only; the state stays."""
        self._status(fx, S.ERROR, now_ns, audience='requester', requester=requester, reason=reason)

    def _order_cmd(self, fx: Effects, now_ns: int, reqid: int | str | None) -> None:
        fx.commands.append(BrokerdOrder(
            action=self.req.action, oid=self.oid, account=self.req.account, time_ns=now_ns,
            reqid=reqid, symbol=self.symbol, price=self.req.price, size=self.req.size,
        ))

    def _cancel_cmd(self, fx: Effects, now_ns: int) -> None:
        fx.commands.append(BrokerdCancel(
            oid=self.oid, account=self.req.account, time_ns=now_ns, reqid=self.reqid,
            symbol=self.symbol,
        ))

    def _working_state(self) -> str:
        return PARTIALLY_FILLED if self.filled > 0 else WORKING

    def _fill_cap(self) -> float:
        """The most the venue may fill: while a modify is pending (or a cancel that followed
        one) the venue may still work the confirmed size, so a fill crossing a size-shrinking
        modify is real, not an overfill."""
        if self.state in (PENDING_REPLACE, PENDING_CANCEL) and self.confirmed_req is not None:
            return max(self.req.size, self.confirmed_req.size)
        return self.req.size

    # -- client side -------------------------------------------------------------------------

    def _on_submit_dark(self, ev: SubmitDark, fx: Effects, now: int) -> None:
        self.state = ARMED
        fx.book = 'arm'
        self._status(fx, S.ALERT_SUBMITTED if self.req.action == 'alert' else S.DARK_SUBMITTED, now)

    def _on_submit_live(self, ev: SubmitLive, fx: Effects, now: int) -> None:
        self.state = PENDING_NEW
        self.confirmed_req = self.req
        self._order_cmd(fx, now, reqid=None)

    def _on_adopt(self, ev: Adopt, fx: Effects, now: int) -> None:
        self.filled = ev.filled
        self.confirmed = True
        self.confirmed_req = self.req
        self.state = self._working_state()
        self._status(fx, S.BROKER_SUBMITTED, now, reason='working at the venue; not placed through emsd')

    def _on_modify(self, ev: ModifyRequest, fx: Effects, now: int) -> None:
        st = self.state
        if st in FINAL_STATES:
            return self._refuse(fx, ev.requester, f'order {self.oid} is closed ({self.last_resp})', now)
        if st == PENDING_CANCEL:
            return self._refuse(fx, ev.requester, f'order {self.oid} is being cancelled', now)
        size = ev.size if ev.size else self.req.size
        if self.req.action != 'alert' and size <= self.filled * (1 + _SIZE_EPS):
            return self._refuse(
                fx, ev.requester, f'size {size:g} is not above the filled {self.filled:g}', now)
        new = self.req.model_copy(update={'price': ev.price, 'size': size})
        if st == ARMED:
            self.req = new
            fx.book = 'arm'
            self._status(fx, S.ALERT_SUBMITTED if new.action == 'alert' else S.DARK_SUBMITTED, now)
            return
        self.requester = ev.requester
        if st == PENDING_REPLACE and self.reqid is not None:
            self.queued_modify = new  # sent once the pending one is confirmed
            return
        self.req = new  # confirmed_req keeps what the venue works, for a refusal
        self.state = PENDING_REPLACE
        if self.reqid is not None:
            self._order_cmd(fx, now, reqid=self.reqid)
        # else: waits for the ack (sent in _on_ack)

    def _on_cancel(self, ev: CancelRequest, fx: Effects, now: int) -> None:
        st = self.state
        if st in FINAL_STATES:
            return self._refuse(fx, ev.requester, f'order {self.oid} is already closed ({self.last_resp})', now)
        if st == ARMED:
            self.state = CANCELLED
            fx.book = 'disarm'
            self._status(fx, S.DARK_CANCELLED, now, reason=ev.reason)
            return
        if st == PENDING_CANCEL:
            return  # already on its way: one cancel is enough
        self.queued_modify = None  # what is cancelled is the order, at whatever price
        self.requester = ev.requester
        self.state = PENDING_CANCEL
        if self.reqid is not None:
            self._cancel_cmd(fx, now)
        # else: goes out with the ack

    def _on_trigger(self, ev: Trigger, fx: Effects, now: int) -> None:
        self.trigger_price = ev.price
        fx.book = 'disarm'
        if self.req.action == 'alert':
            self.state = TRIGGERED
            self._status(fx, S.ALERT_TRIGGERED, now, trigger_price=ev.price)
            return
        if ev.limit_price is not None:
            self.req = self.req.model_copy(update={'price': ev.limit_price})
        self.state = PENDING_NEW
        self.confirmed_req = self.req
        self._status(fx, S.DARK_TRIGGERED, now, trigger_price=ev.price)
        self._order_cmd(fx, now, reqid=None)

    # -- venue side --------------------------------------------------------------------------

    def _on_ack(self, ev: Ack, fx: Effects, now: int) -> None:
        if self.reqid is not None:
            if ev.reqid != self.reqid:
                raise IllegalEvent(self.oid, self.state, 'ack', f'rebinds reqid {self.reqid} to {ev.reqid}')
            return  # a duplicate ack: nothing to do
        self.reqid = ev.reqid
        if self.state == PENDING_CANCEL:
            self._cancel_cmd(fx, now)
        elif self.state == PENDING_REPLACE:
            self._order_cmd(fx, now, reqid=self.reqid)

    def _on_confirmed(self, ev: VenueStatus, fx: Effects, now: int) -> None:
        st = self.state
        details = ev.details or {}
        if not self.confirmed:
            # the venue confirms the new order; in PENDING_REPLACE/CANCEL the modify or cancel
            # sent with the ack is still pending
            self.confirmed = True
            if st == PENDING_NEW:
                self.state = WORKING
            self._status(fx, S.BROKER_SUBMITTED, now, brokerd_msg=details)
            return
        if st == PENDING_REPLACE:
            self.confirmed_req = self.req
            self.state = self._working_state()
            if self.filled >= self.req.size * (1 - _SIZE_EPS):
                # the venue took a size the fills meanwhile reached: the order is done
                self.state = FILLED
                self.queued_modify = None
                self._status(fx, S.BROKER_EXECUTED, now,
                             brokerd_msg={**details, 'filled': self.filled, 'remaining': 0.0})
                return
            # the status carries what the venue confirmed, before a waiting modify goes out
            self._status(fx, S.BROKER_SUBMITTED, now, brokerd_msg=details)
            if self.queued_modify is not None:
                self.req, self.queued_modify = self.queued_modify, None
                self.state = PENDING_REPLACE
                self._order_cmd(fx, now, reqid=self.reqid)
            return
        if st == PENDING_CANCEL:
            return  # a late confirmation of a modify: the cancel is what counts now
        self._status(fx, S.BROKER_SUBMITTED, now, brokerd_msg=details)

    def _on_progress(self, ev: VenueStatus, fx: Effects, now: int) -> None:
        # progress reports are information; the fill state follows the fills themselves
        if self.state == PENDING_NEW:  # (a fill would have moved it on already)
            self.confirmed = True
            self.state = WORKING
        self._status(fx, S.BROKER_PARTIALLY_FILLED, now, brokerd_msg=ev.details or {})

    def _on_fill(self, ev: VenueFill, fx: Effects, now: int) -> None:
        if not (math.isfinite(ev.size) and math.isfinite(ev.price)) or ev.size <= 0 or ev.price <= 0:
            raise IllegalEvent(self.oid, self.state, 'fill', f'bad size/price {ev.size!r} @ {ev.price!r}')
        if ev.fill_id is not None and ev.fill_id in self.fill_ids:
            raise IllegalEvent(self.oid, self.state, 'fill', f'duplicate fill id {ev.fill_id}')
        total = self.filled + ev.size
        cap = self._fill_cap()
        if total > cap * (1 + _SIZE_EPS):
            raise IllegalEvent(
                self.oid, self.state, 'fill', f'overfill: {self.filled:g} + {ev.size:g} > size {cap:g}')
        if ev.fill_id is not None:
            self.fill_ids.add(ev.fill_id)
        self.filled = total
        if self.state == PENDING_NEW:
            self.confirmed = True
        details = ev.details or {}
        self._status(fx, S.BROKER_FILLED, now, brokerd_msg=details)
        if total >= cap * (1 - _SIZE_EPS):
            self.state = FILLED
            # the final status carries what a venue's "filled" status would: the totals
            self._status(fx, S.BROKER_EXECUTED, now,
                         brokerd_msg={**details, 'filled': total, 'remaining': 0.0})
        elif self.state in (PENDING_NEW, WORKING):
            self.state = PARTIALLY_FILLED

    def _on_executed(self, ev: VenueStatus, fx: Effects, now: int) -> None:
        if self.state == FILLED:
            return  # our fills already completed it; one final status only
        self.state = FILLED
        self._status(fx, S.BROKER_EXECUTED, now, brokerd_msg=ev.details or {})

    def _on_venue_cancelled(self, ev: VenueStatus, fx: Effects, now: int) -> None:
        self.state = CANCELLED
        resp = S.venue_status_resp(ev.status, ev.remaining)
        self._status(fx, resp, now, brokerd_msg=ev.details or {}, reason=ev.reason or None)

    def _on_notice(self, ev: VenueStatus, fx: Effects, now: int) -> None:
        resp = S.venue_status_resp(ev.status, ev.remaining)
        self._status(fx, resp, now, brokerd_msg=ev.details or {}, reason=ev.reason or None)

    def _on_venue_error(self, ev: VenueStatus | VenueError, fx: Effects, now: int) -> None:
        reason = ev.reason or 'venue error'
        details = ev.details or {}
        st = self.state
        if st == PENDING_NEW or (st in _PENDING and not self.confirmed and self.filled == 0):
            # the venue refused the new order itself
            self.state = REJECTED
            self._status(fx, S.BROKER_ERRORED, now, brokerd_msg=details, reason=reason)
            return
        if st in _PENDING:
            self._revert_pending(fx, now, f'venue refused the {_verb(st)}: {reason}')
            return
        # working, unsolicited: the order keeps working; everyone concerned is told
        self._status(fx, S.ERROR, now, brokerd_msg=details, reason=f'venue: {reason}')

    def _on_send_failed(self, ev: SendFailed, fx: Effects, now: int) -> None:
        st = self.state
        if st == PENDING_NEW or (st in _PENDING and self.reqid is None):
            self.state = REJECTED
            self._status(fx, S.BROKER_ERRORED, now, reason=f'not sent: {ev.reason}')
            return
        self._revert_pending(fx, now, f'the {_verb(st)} was not sent: {ev.reason}')

    def _revert_pending(self, fx: Effects, now: int, reason: str) -> None:
        """A pending cancel/modify failed: back to working at the last confirmed request."""
        requester, self.requester = self.requester, None
        if self.state == PENDING_REPLACE and self.confirmed_req is not None:
            self.req = self.confirmed_req
        self.queued_modify = None
        self.state = self._working_state()
        self._status(fx, S.ERROR, now, audience='requester', requester=requester, reason=reason)
        if self.filled >= self.req.size * (1 - _SIZE_EPS):
            # fills that arrived while a size increase was pending reached the size it keeps
            self.state = FILLED
            self._status(fx, S.BROKER_EXECUTED, now,
                         brokerd_msg={'filled': self.filled, 'remaining': 0.0})

    def _on_venue_down(self, ev: VenueDown, fx: Effects, now: int) -> None:
        self._status(fx, S.BROKER_DISCONNECTED, now, reason=f'{ev.reason}; reconnecting')

    def _on_venue_lost(self, ev: VenueLost, fx: Effects, now: int) -> None:
        self.state = LOST
        self._status(fx, S.BROKER_ERRORED, now, reason=f'{ev.reason}; order state unknown')

    def resend_commands(self, now_ns: int) -> list[BrokerdOrder | BrokerdCancel]:
        """The venue requests this order still needs, to send again after a reconnect (the
        venue is asked first, so nothing it already has is sent twice). No state change."""
        fx = Effects()
        if self.state == PENDING_NEW and self.reqid is None:
            req, self.req = self.req, (self.confirmed_req or self.req)
            self._order_cmd(fx, now_ns, reqid=None)
            self.req = req
        elif self.reqid is None:
            pass  # pending cancel/modify of an order the venue never got: the caller decides
        elif self.state == PENDING_CANCEL:
            self._cancel_cmd(fx, now_ns)
        elif self.state == PENDING_REPLACE:
            self._order_cmd(fx, now_ns, reqid=self.reqid)
        return fx.commands

    def to_record(self) -> dict[str, Any]:
        """The machine as plain JSON-safe data (for the journal); requesters are not kept."""
        return {
            'req': self.req.model_dump(mode='json'), 'owner': self.owner,
            'venue': list(self.venue), 'symbol': self.symbol, 'state': self.state,
            'reqid': self.reqid, 'filled': self.filled, 'confirmed': self.confirmed,
            'confirmed_req': self.confirmed_req.model_dump(mode='json') if self.confirmed_req else None,
            'queued_modify': self.queued_modify.model_dump(mode='json') if self.queued_modify else None,
            'trigger_price': self.trigger_price, 'last_resp': self.last_resp,
            'fill_ids': sorted(self.fill_ids),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> 'OrderMachine':
        """Rebuild a machine from :meth:`to_record` output."""
        def order(d):
            return Order.model_validate(d) if d else None
        state = rec['state']
        if state not in STATES:
            raise ValueError(f'unknown state {state!r}')
        return cls(
            req=order(rec['req']), owner=rec['owner'], venue=tuple(rec['venue']),
            symbol=rec['symbol'], state=state, reqid=rec.get('reqid'),
            filled=float(rec.get('filled', 0.0)), confirmed=bool(rec.get('confirmed')),
            confirmed_req=order(rec.get('confirmed_req')),
            queued_modify=order(rec.get('queued_modify')),
            trigger_price=rec.get('trigger_price'), last_resp=rec.get('last_resp'),
            fill_ids=set(rec.get('fill_ids', ())),
        )

    def snapshot_fields(self) -> dict:
        """Plain facts for a snapshot status built without a routed one."""
        return {'state': self.state, 'filled': self.filled}


def _verb(state: str) -> str:
    return 'cancel' if state == PENDING_CANCEL else 'modify'


def venue_event(msg: Any) -> Event:
    """The machine event for a parsed venue message (ack, status, fill, error)."""
    details = msg.model_dump(mode='json')
    if isinstance(msg, BrokerdOrderAck):
        return Ack(reqid=msg.reqid)
    if isinstance(msg, BrokerdStatus):
        return VenueStatus(status=msg.status, filled=msg.filled, remaining=msg.remaining,
                           reason=msg.reason, details=details)
    if isinstance(msg, BrokerdFill):
        fill_id = getattr(msg, 'fill_id', None) or msg.broker_details.get('fill_id')
        return VenueFill(size=msg.size, price=msg.price,
                         fill_id=str(fill_id) if fill_id is not None else None, details=details)
    if isinstance(msg, BrokerdError):
        return VenueError(reason=msg.reason, details=details)
    raise TypeError(f'not an order event: {type(msg).__name__}')
