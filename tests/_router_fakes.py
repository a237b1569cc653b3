"""In-process fakes for driving emsd's Router without actors: venues, scans and a clock.

A test builds ``rig = Rig()``, connects clients with ``rig.client(name)``, sends client
messages with ``rig.send(conn, msg)``, injects venue events with ``rig.venue_msg(...)`` and
reads what each client received (``conn.got``) and what each venue was sent
(``rig.venue(key).sent``). Everything is synchronous: a step takes microseconds.
"""
from __future__ import annotations

from typing import Any

from piker_ems.clearing._darkbook import DarkBook
from piker_ems.clearing._messages import BrokerdPosition, Status, to_wire
from piker_ems.clearing._orders import ClientConn, VenueUnavailable
from piker_ems.clearing._router import Router
from piker_ems.simvenue._clock import FakeClock
from piker_ems.symbols import Symbol


class FakeLink:
    """A venue link that records every command sent to it."""

    def __init__(self, key: tuple[str, str]) -> None:
        self.key = key
        self.positions: dict[tuple[str, str], BrokerdPosition] = {}
        self.sent: list[Any] = []
        self.snapshot: Any = None
        self.closed = False
        self.refuse: str | None = None  # set: send_nowait raises VenueUnavailable
        self.observer: Any = None  # optional callable(link, cmd), called for each accepted cmd

    def send_nowait(self, cmd: Any) -> None:
        if self.closed or self.refuse:
            raise VenueUnavailable(self.refuse or f'{self.key} closed')
        if self.observer is not None:
            self.observer(self, cmd)
        self.sent.append(cmd)


class FakeVenues:
    """One FakeLink per key; ``live_brokers`` decides which accounts go to a live venue."""

    def __init__(self, live_brokers: tuple[str, ...] = ('sim',)) -> None:
        self.links: dict[tuple[str, str], FakeLink] = {}
        self.live_brokers = live_brokers
        self.reopened: list[tuple[str, str]] = []
        self.router: Router | None = None
        self.history: list[FakeLink] = []  # every link ever made, in order (lost ones included)
        self.observer: Any = None  # given to every new link (see FakeLink.observer)

    def bind(self, router: Router) -> None:
        self.router = router

    def key_for(self, broker: str, account: str) -> tuple[str, str]:
        return (broker, 'live' if account != 'paper' and broker in self.live_brokers else 'paper')

    def link(self, key: tuple[str, str]) -> FakeLink:
        link = self.links.get(key)
        if link is None or link.closed:
            link = self.links[key] = FakeLink(key)
            link.observer = self.observer
            self.history.append(link)
        return link

    def sent(self, key: tuple[str, str]) -> list[Any]:
        """Every command accepted by any link of ``key`` (across losses), in order."""
        return [cmd for link in self.history if link.key == key for cmd in link.sent]

    def open_links(self) -> list[FakeLink]:
        return [link for link in self.links.values() if not link.closed]

    def reopen(self, key: tuple[str, str], delay_s: float) -> None:
        self.reopened.append(key)

    def lose(self, key: tuple[str, str], reason: str = 'test') -> None:
        link = self.links[key]
        link.closed = True
        self.router.on_venue_lost(link, reason)

    def reconnect(self, key: tuple[str, str], snapshot: Any) -> FakeLink:
        """The venue's dialogue (re)opens and reports ``snapshot`` (a VenueSnapshot)."""
        old = self.links.get(key)
        if old is not None:
            old.closed = True
        link = self.links[key] = FakeLink(key)
        link.observer = self.observer
        link.snapshot = snapshot
        self.history.append(link)
        self.router.on_venue_open(link)
        return link


class FakeScan:
    """A dark scan whose quotes come from the test."""

    def __init__(self, fqsn: str, last: float, tick_size: float = 0.01, lot_size: float = 0.001) -> None:
        self.fqsn = fqsn
        sym, broker = fqsn.rsplit('.', 1)
        self.symbol = Symbol(key=sym, broker=broker, tick_size=tick_size, lot_size=lot_size)
        self.last = last
        self.failed: str | None = None
        self.book = DarkBook()
        self.router: Router | None = None

    def __len__(self) -> int:
        return len(self.book)

    def arm(self, st: Any, direction: str | None = None) -> Any:
        return self.book.arm(st.oid, st.req.action, st.req.price, self.last, payload=st,
                             direction=direction)

    def disarm(self, oid: str) -> None:
        self.book.disarm(oid)

    async def wait_ready(self, timeout: float) -> None:
        return None

    def tick(self, ttype: str, price: float) -> None:
        """One tick: moves ``last`` for prints and fires what it crosses."""
        if ttype in ('trade', 'last'):
            self.last = price
        for entry in self.book.on_tick(ttype, price):
            self.router.on_trigger(entry.payload, ttype, price, self.symbol.tick_size)


class FakeScans:
    def __init__(self, last: float = 100.0) -> None:
        self.scans: dict[str, FakeScan] = {}
        self.closed: list[str] = []
        self.default_last = last
        self.router: Router | None = None

    def bind(self, router: Router) -> None:
        self.router = router

    def get(self, fqsn: str) -> FakeScan:
        scan = self.scans.get(fqsn)
        if scan is None:
            scan = self.scans[fqsn] = FakeScan(fqsn, self.default_last)
            scan.router = self.router
        return scan

    def peek(self, fqsn: str) -> FakeScan | None:
        return self.scans.get(fqsn)

    def close(self, fqsn: str) -> None:
        if self.scans.pop(fqsn, None) is not None:
            self.closed.append(fqsn)

    def all(self) -> list[FakeScan]:
        return list(self.scans.values())


class FakeConn(ClientConn):
    """A client connection that keeps what it received, parsed, in ``got``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.got: list[Any] = []

    def push(self, msg: dict) -> None:
        if self.closed:
            return
        self.sent += 1
        self.got.append(Status.model_validate(msg) if msg.get('name') == 'status' else msg)

    def statuses(self, oid: str | None = None) -> list[Status]:
        return [m for m in self.got if isinstance(m, Status) and (oid is None or m.oid == oid)]

    def resps(self, oid: str | None = None) -> list[str]:
        return [m.resp for m in self.statuses(oid)]


class Rig:
    """A Router with fake venues, scans and clock, plus helpers to drive it."""

    def __init__(self, last: float = 100.0, live_brokers: tuple[str, ...] = ('sim',)) -> None:
        self.clock = FakeClock()
        self.venues = FakeVenues(live_brokers)
        self.scans = FakeScans(last)
        self.router = Router(self.venues, self.scans, clock=self.clock)

    def client(self, name: str = 'alice', fqsn: str = 'btcusd.sim', account: str = 'paper', **kw: Any) -> FakeConn:
        conn = FakeConn(name, fqsn, fqsn.rsplit('.', 1)[1], account, **kw)
        self.router.add_client(conn)
        return conn

    def send(self, conn: FakeConn, msg: Any) -> None:
        self.router.handle_client_msg(conn, to_wire(msg) if hasattr(msg, 'model_dump') else msg)

    def venue(self, key: tuple[str, str] = ('sim', 'live')) -> FakeLink:
        return self.venues.link(key)

    def venue_msg(self, msg: Any, key: tuple[str, str] = ('sim', 'live')) -> None:
        self.router.on_venue_msg(self.venue(key), to_wire(msg) if hasattr(msg, 'model_dump') else msg)
