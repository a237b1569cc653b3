"""emsd's trades dialogues: exactly one per venue (a broker's live endpoint or its paper engine).

A :class:`VenueLink` takes commands at once, without waiting: they queue (bounded) while the
dialogue opens or is reopened, and go out in order when it is up. If the dialogue cannot be
opened within :data:`OPEN_TIMEOUT_S`, or dies, every queued command is failed back to the sink.
So no client waits on a venue spawn: dark orders, alerts and cancels are answered at once.

The relay task lives in emsd's service nursery, not in any client's task, so it survives clients
coming and going. Every event from the venue goes to the *sink* (emsd's Router, duck-typed:
``on_venue_msg``, ``on_venue_lost``, ``on_send_failed``); this module does not import the Router.
"""
from __future__ import annotations

import math
import time
from contextlib import AsyncExitStack, nullcontext
from typing import Any, Callable

import tractor
import trio

from ..brokers import get_brokermod
from ..log import get_logger
from ..service import PikerdError, find_service, maybe_spawn_brokerd
from ..service._auth import AUTH_MODULE, NotGenuine, endpoint_name, local_credential, make_auth
from ..service._served import replacement_refused
from ..service._daemon import DEATHSIG_MODULE
from ..service._ipc import HEARTBEAT_TIMEOUT_S, Silence, abandon_context, is_heartbeat
from ._outage import OutageLog
from ._messages import BrokerdPosition, MsgError, VenueSnapshot, parse_venue_snapshot, to_wire, unbatch
from ._orders import VenueKey, VenueUnavailable

log = get_logger(__name__)

PAPER_MODULES = [DEATHSIG_MODULE, AUTH_MODULE, 'piker_ems.clearing._paper']
#: Commands a link holds while its dialogue is not open (beyond: refused at once).
QUEUE_MAX = 10_000
#: How long a dialogue may take to open before its queued commands are failed.
OPEN_TIMEOUT_S = 30.0
#: The most events the paper engine packs into one message when it has a backlog (the batch
#: form of docs/backends.md: a lone event still leaves at once, as itself).
PAPER_MAX_BATCH = 64


class VenueLink:
    """One trades dialogue: a command queue, its state, and the positions it reported."""

    def __init__(self, key: VenueKey) -> None:
        self.key = key
        self.state = 'opening'   # opening -> open -> closed
        self.lost: str | None = None
        self.positions: dict[tuple[str, str], BrokerdPosition] = {}
        self.snapshot: VenueSnapshot | None = None  # what the venue reported when it opened
        self.tx, self.rx = trio.open_memory_channel[Any](math.inf)
        self.opened = trio.Event()
        self.relay_scope = trio.CancelScope()
        self.sent = 0
        self.received = 0
        self.served_from: str | None = None  # 'host:port' of a venue served elsewhere

    @property
    def name(self) -> str:
        return '.'.join(self.key)

    @property
    def queued(self) -> int:
        """Commands taken but not yet sent (what the queue holds)."""
        return self.rx.statistics().current_buffer_used

    @property
    def closed(self) -> bool:
        return self.state == 'closed'

    def send_nowait(self, cmd: Any) -> None:
        """Queue one command; sent in order once the dialogue is open."""
        if self.closed:
            raise VenueUnavailable(f'trades dialogue {self.name} is {"lost: " + self.lost if self.lost else "closed"}')
        if self.queued >= QUEUE_MAX:
            raise VenueUnavailable(f'trades dialogue {self.name} has {QUEUE_MAX} requests queued')
        self.tx.send_nowait(cmd)

    def lose(self, reason: str) -> None:
        """Declare the dialogue dead: stop its relay (which then tells the sink)."""
        if not self.closed:  # (the directory logs it, once per outage)
            self.state = 'closed'
            self.lost = reason
        self.relay_scope.cancel()

    def drain_failed(self) -> list[Any]:
        """Commands that never went out (the dialogue closed): take them off the queue."""
        out = []
        while True:
            try:
                out.append(self.rx.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return out


class VenueDirectory:
    """emsd's venue links, one per (broker, kind), opened in the service nursery on first need."""

    def __init__(self, start_soon: Callable[..., Any], actor_n: Any, loglevel: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.start_soon = start_soon
        self.actor_n = actor_n
        self.loglevel = loglevel
        self.links: dict[VenueKey, VenueLink] = {}
        self.sink: Any = None
        # (a lost venue is retried every second: its outage is logged once, not per attempt)
        self.outages = OutageLog(log, 'trades dialogue', clock)

    def bind(self, sink: Any) -> None:
        self.sink = sink

    def key_for(self, broker: str, account: str) -> VenueKey:
        mod = get_brokermod(broker)
        if account != 'paper' and hasattr(mod, 'trades_dialogue'):
            return (broker, 'live')
        return (broker, 'paper')

    def link(self, key: VenueKey) -> VenueLink:
        link = self.links.get(key)
        if link is None or link.closed:
            link = self.links[key] = VenueLink(key)
            self.start_soon(self._run, link)
        return link

    def open_links(self) -> list[VenueLink]:
        return [link for link in self.links.values() if not link.closed]

    def reopen(self, key: VenueKey, delay_s: float) -> None:
        """Open ``key`` again after ``delay_s`` (a lost venue, to reconcile its orders)."""
        async def later() -> None:
            await trio.sleep(delay_s)
            self.link(key)

        self.start_soon(later)

    async def wait_open(self, key: VenueKey, timeout: float) -> VenueLink | None:
        """The link for ``key`` once open (None if it did not open within ``timeout``)."""
        link = self.link(key)
        with trio.move_on_after(timeout):
            await link.opened.wait()
        return link if link.state == 'open' else None

    async def _run(self, link: VenueLink) -> None:
        """Open the dialogue, relay it until it ends, then fail what never went out."""
        try:
            with trio.move_on_after(OPEN_TIMEOUT_S) as open_cs:
                await self._open_and_relay(link, open_cs)
            if open_cs.cancelled_caught and link.state == 'opening':
                link.lost = link.lost or f'did not open within {OPEN_TIMEOUT_S:g}s'
        except* Exception as eg:
            err = eg.exceptions[0]
            # (our own one-line refusals read as they are: owners see this reason)
            said = isinstance(err, (VenueUnavailable, PikerdError)) and str(err)
            link.lost = link.lost or said or f'{type(err).__name__}: {err}'
        finally:
            if link.lost:
                self.outages.down(link.name, link.lost)
            link.state = 'closed'
            link.opened.set()
            if self.links.get(link.key) is link:
                del self.links[link.key]
            reason = link.lost or 'the dialogue closed'
            # queued commands never left: their requests failed (the rest is reconciled)
            try:
                for cmd in link.drain_failed():
                    self.sink.on_send_failed(link, cmd, f'trades dialogue {link.name}: {reason}')
                if link.lost:  # (an orderly stop of emsd is no loss to report)
                    self.sink.on_venue_lost(link, reason)
            except Exception:  # a sink bug must not take emsd's service nursery down with it
                log.exception('handling the end of trades dialogue %s failed', link.name)

    async def _open_and_relay(self, link: VenueLink, open_cs: trio.CancelScope) -> None:
        broker, kind = link.key
        if kind == 'paper':
            from . import _paper

            kwargs = {'broker': broker, 'since_ns': self.sink.since_ns_for(link.key),
                      'max_batch': PAPER_MAX_BATCH}
            async with AsyncExitStack() as stack:
                served = await self._served_paperboi(broker, stack)
                if served is not None:  # (a served engine is never cancelled from here)
                    link.served_from = '{}:{}'.format(*served.channel.raddr)
                    log.info('trades dialogue %s: using paperboi.%s served at %s', link.name, broker, link.served_from)
                    await self._relay(link, served, _paper.trades_dialogue, kwargs, open_cs)
                    return
            refused = await replacement_refused(f'paperboi.{broker}')
            if refused is not None:
                raise VenueUnavailable(refused)
            # (it listens where emsd does: emsd may be served on another host)
            host = tractor.current_actor().accept_addr[0]
            portal = await self.actor_n.start_actor(f'paperboi.{broker}', enable_modules=PAPER_MODULES,
                                                    bind_addr=(host, 0))
            try:
                await self._relay(link, portal, _paper.trades_dialogue, kwargs, open_cs)
            finally:
                with trio.CancelScope(shield=True):
                    await portal.cancel_actor()
        else:
            endpoint = get_brokermod(broker).trades_dialogue
            async with maybe_spawn_brokerd(broker, loglevel=self.loglevel) as portal:
                await self._relay(link, portal, endpoint,
                                  {'since_ns': self.sink.since_ns_for(link.key)}, open_cs)

    async def _served_paperboi(self, broker: str, stack: AsyncExitStack) -> tractor.Portal | None:
        """A genuine ``paperboi.<broker>`` registered by someone else (``piker serve``), if any.

        emsd's own paper engine exists only while its link runs, so any live registration seen
        while opening a link is a served one. An impostor entry is ignored (and reported)."""
        try:
            return await stack.enter_async_context(find_service(f'paperboi.{broker}'))
        except NotGenuine as err:
            log.error('ignoring the registered paperboi.%s: %s', broker, err)
            return None

    async def _relay(self, link: VenueLink, portal: tractor.Portal, endpoint, kwargs: dict,
                     open_cs: trio.CancelScope) -> None:
        auth = make_auth(endpoint_name(endpoint), local_credential())  # emsd's own call
        async with portal.open_context(endpoint, loglevel=self.loglevel, auth=auth, **kwargs) as (ctx, first):
            try:
                async with ctx.open_stream() as stream:
                    try:
                        snapshot = parse_venue_snapshot(first)
                    except MsgError as err:
                        log.warning('bad start-up snapshot from %s: %s', link.name, err)
                        snapshot = VenueSnapshot()
                    for pos in snapshot.positions:
                        link.positions[(pos.account, pos.symbol)] = pos
                    link.snapshot = snapshot
                    link.state = 'open'
                    open_cs.deadline = math.inf  # opened: no more open timeout
                    if not self.outages.up(link.name):
                        log.info('trades dialogue %s open', link.name)
                    self.sink.on_venue_open(link)  # reconcile before anything else is relayed
                    link.opened.set()
                    with link.relay_scope:
                        async with trio.open_nursery() as n:
                            n.start_soon(self._write, link, stream)
                            await self._relay_events(link, stream)
                            n.cancel_scope.cancel()
            finally:
                if link.lost:
                    await abandon_context(ctx)

    async def _write(self, link: VenueLink, stream: tractor.MsgStream) -> None:
        """Send queued commands in order; a failed send loses the dialogue.

        To the paper engine (which takes the list form, docs/backends.md) a backlog of commands
        goes as one list of up to :data:`PAPER_MAX_BATCH`; a lone command, and every command to
        any other venue, goes alone and at once.
        """
        max_batch = PAPER_MAX_BATCH if link.key[1] == 'paper' else 1
        while True:
            cmd = await link.rx.receive()
            batch = None
            while max_batch > 1 and (batch is None or len(batch) < max_batch):
                try:
                    nxt = link.rx.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if batch is None:
                    batch = [to_wire(cmd)]
                batch.append(to_wire(nxt))
            try:
                await stream.send(to_wire(cmd) if batch is None else batch)
                link.sent += 1 if batch is None else len(batch)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
                # it may or may not have left: the reconciliation on reopening tells
                link.lose(f'send failed ({type(err).__name__})')
                return

    async def _relay_events(self, link: VenueLink, stream: tractor.MsgStream) -> None:
        """Feed every venue event to the sink until the dialogue ends or goes silent.

        Venues heartbeat when idle (part of the ``trades_dialogue`` contract), so
        :data:`HEARTBEAT_TIMEOUT_S` of silence means the broker died or hung.
        """
        with Silence(HEARTBEAT_TIMEOUT_S) as silence:
            while True:
                try:
                    raw = await stream.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError) as err:
                    link.lose(f'the dialogue closed ({type(err).__name__})')
                    return
                silence.heard()
                if isinstance(raw, list):  # a backlog in one message (docs/backends.md)
                    self._relay_batch(link, raw)
                    continue
                if is_heartbeat(raw):
                    continue
                link.received += 1
                self.sink.on_venue_msg(link, raw)
        link.lose(f'no message or heartbeat for {HEARTBEAT_TIMEOUT_S:g}s')

    def _relay_batch(self, link: VenueLink, batch: list) -> None:
        """A batch's events, in order, as if each had arrived alone; inside the sink's
        ``group()`` (if it has one: the Router's journal commits them together, before anything
        they cause can leave emsd)."""
        group = getattr(self.sink, 'group', None)
        with group() if group is not None else nullcontext():
            for item in unbatch(batch):
                if is_heartbeat(item) or isinstance(item, list):  # (never nested: skip)
                    continue
                link.received += 1
                self.sink.on_venue_msg(link, item)
