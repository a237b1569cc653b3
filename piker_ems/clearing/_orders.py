"""emsd's record of one order (dark, pending at a venue, live, or done) and of one client."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import trio

from ..log import get_logger
from ._messages import Order, Status, to_wire

log = get_logger(__name__)

OrderPhase = Literal['dark', 'pending', 'live', 'done']
Watch = Literal['symbol', 'all', None]  # which other clients' flows a connection receives
DisconnectPolicy = Literal['keep', 'cancel', 'cancel-dark']
VenueKey = tuple[str, str]  # (broker, 'paper' | 'live')

CLIENT_QUEUE = 50_000
_client_ids = itertools.count(1)


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
    ) -> None:
        self.uid = next(_client_ids)
        self.name = name
        self.fqsn = fqsn
        self.broker = broker
        self.account = account
        self.watch = watch
        self.control_others = control_others
        self.on_disconnect = on_disconnect
        self.tx, self.rx = trio.open_memory_channel[dict](CLIENT_QUEUE)
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


@dataclass
class OrderState:
    """Everything emsd knows about one oid."""

    req: Order
    owner: str
    venue: VenueKey
    phase: OrderPhase = 'dark'
    owner_conn: ClientConn | None = None
    reqid: int | str | None = None
    cancel_stashed: bool = False     # cancel requested before the venue's ack
    modify_stashed: Order | None = None  # modify requested before the venue's ack
    filled: float = 0.0
    last_resp: str | None = None
    trigger_price: float | None = None
    unseen: bool = False  # closed while its owner was away: shown in the owner's next snapshot
    last_msg: dict | None = None  # wire form of the last status routed (the order's snapshot)

    @property
    def oid(self) -> str:
        return self.req.oid

    @property
    def fqsn(self) -> str:
        return self.req.symbol.lower()

    def status(self, resp: str, **fields) -> Status:
        """Build a Status for this order (with its originating request and owner)."""
        self.last_resp = resp
        return Status(
            oid=self.oid, resp=resp, req=self.req, owner=self.owner,
            broker_reqid=self.reqid, **fields,
        )

    def snapshot(self) -> dict:
        """Wire form of the order's current state, for a (re)connecting client.

        That is its last routed status (already serialized: connecting with 1000 open orders
        costs no model work), or one built from the current state if none was routed yet.
        """
        if self.last_msg is not None:
            return self.last_msg
        return to_wire(Status(
            oid=self.oid, resp=self.last_resp or 'broker_pending', req=self.req,
            owner=self.owner, broker_reqid=self.reqid, trigger_price=self.trigger_price,
            brokerd_msg={'phase': self.phase, 'filled': self.filled},
        ))
