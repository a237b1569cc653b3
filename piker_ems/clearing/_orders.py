"""emsd's record of one client connection and of one order (its state machine plus routing)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import trio

from ..log import get_logger
from ._machine import OrderMachine
from ._messages import Order, Status, to_wire

log = get_logger(__name__)

Watch = Literal['symbol', 'all', None]  # which other clients' flows a connection receives
DisconnectPolicy = Literal['keep', 'cancel', 'cancel-dark']
VenueKey = tuple[str, str]  # (broker, 'paper' | 'live')

CLIENT_QUEUE = 50_000


class VenueUnavailable(RuntimeError):
    """A venue link cannot take a command (its queue is full, or it is closed for good)."""

_client_ids = itertools.count(1)


def owner_name(participant: str, label: str) -> str:
    """The owner of a client's orders: the pair (participant, label) as one string.

    ``participant/label``, except for the local participant (everyone who holds the cluster
    secret on this machine), whose orders keep the bare label as before participants existed
    (so journals of earlier versions stay theirs). Labels may not contain ``/``, so the two
    forms never collide.
    """
    return label if participant == 'local' else f'{participant}/{label}'


class ClientConn:
    """One connected client stream as seen by the Router.

    Outbound messages go through a large bounded queue drained by the connection's writer task,
    so a slow client can never stall a relay or a dark scan; a client that falls 50k messages
    behind is disconnected (and told why in the log) rather than silently losing statuses.
    """

    def __init__(
        self,
        name: str,
        fqsn: str,
        broker: str,
        account: str,
        watch: 'Watch' = None,
        control_others: bool = False,
        on_disconnect: 'DisconnectPolicy' = 'keep',
        queue_size: int = CLIENT_QUEUE,
        participant: str = 'local',
        may_trade: bool = True,
    ) -> None:
        self.uid = next(_client_ids)
        self.name = name  # the owner string: see owner_name()
        self.participant = participant
        self.may_trade = may_trade
        self.fqsn = fqsn
        self.broker = broker
        self.account = account
        self.watch = watch
        self.control_others = control_others
        self.on_disconnect = on_disconnect
        self.tx, self.rx = trio.open_memory_channel[dict](queue_size)
        self.closed = False
        self.sent = 0

    def __repr__(self) -> str:
        return f'<client {self.name}#{self.uid} {self.fqsn}>'

    def push(self, msg: dict) -> None:
        """Queue a message for this client without waiting."""
        if self.closed:
            return
        try:
            self.tx.send_nowait(msg)
            self.sent += 1
        except trio.WouldBlock:
            log.error('%r is not reading: dropping the connection', self)
            self.close()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True

    def watches(self, st: 'OrderState') -> bool:
        """Whether this connection watches ``st`` (an order it may not own)."""
        if self.watch == 'all':
            return st.venue[0] == self.broker
        if self.watch == 'symbol':
            return st.fqsn == self.fqsn
        return False

    def close(self) -> None:
        """Stop queueing; the writer task ends once the queue is drained."""
        self.closed = True
        self.tx.close()


@dataclass(eq=False)
class OrderState:
    """Everything emsd knows about one oid: its state machine and who hears about it."""

    machine: OrderMachine
    holder: int | None = None     # uid of the connection whose disconnect policy covers it
    unseen: bool = False          # finished while its owner was away: in the owner's next snapshot
    retired: bool = False         # its end was accounted (memory bound, symbol users)
    direction: str | None = None  # a dark order's trigger direction, chosen when armed
    created_ns: int = 0           # when emsd accepted it (reconciliation asks the venue since)
    last_msg: dict | None = None  # wire form of the last status routed to all (its snapshot)
    queued_on: Any = None         # the venue link its last command was queued on (not journaled)

    @property
    def oid(self) -> str:
        return self.machine.oid

    @property
    def req(self) -> Order:
        return self.machine.req

    @property
    def owner(self) -> str:
        return self.machine.owner

    @property
    def venue(self) -> VenueKey:
        return self.machine.venue

    @cached_property
    def fqsn(self) -> str:
        """The order's symbol (fixed for its life: a modify may not change it), lower-cased
        once: the router asks for it several times per event."""
        return self.machine.req.symbol.lower()

    @property
    def state(self) -> str:
        return self.machine.state

    def record(self) -> dict:
        """What the journal keeps of this order (JSON-safe)."""
        return {'machine': self.machine.to_record(), 'direction': self.direction,
                'created_ns': self.created_ns, 'last_msg': self.last_msg}

    def snapshot(self) -> dict:
        """Wire form of the order's current state, for a (re)connecting client.

        That is its last routed status (already serialized: connecting with 1000 open orders
        costs no model work), or one built from the current state if none was routed yet.
        """
        if self.last_msg is not None:
            return self.last_msg
        m = self.machine
        return to_wire(Status(
            oid=m.oid, resp=m.last_resp or 'broker_pending', req=m.req, owner=m.owner,
            broker_reqid=m.reqid, trigger_price=m.trigger_price,
            brokerd_msg=m.snapshot_fields(),
        ))
