"""emsd's trades dialogues: exactly one per venue (a broker's live endpoint or its paper engine).

The relay task lives in the Router's nursery, not in any client's task, so it survives clients
coming and going. Every event from the venue is validated; an invalid one is logged and counted,
never fatal.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import tractor
import trio

from ..brokers import get_brokermod
from ..log import get_logger
from ..service import maybe_spawn_brokerd
from ..service._daemon import DEATHSIG_MODULE
from ..service._ipc import HEARTBEAT_TIMEOUT_S, abandon_context, is_heartbeat
from ._messages import BrokerdPosition, MsgError, parse_brokerd_msg, to_wire

if TYPE_CHECKING:
    from ._orders import VenueKey
    from ._router import Router

log = get_logger(__name__)

PAPER_MODULES = [DEATHSIG_MODULE, 'piker_ems.clearing._paper']


class VenueLost(RuntimeError):
    """A trades dialogue died (its broker process crashed, hung or closed the dialogue)."""


class Venue:
    """One open trades dialogue and the positions it reported."""

    def __init__(self, key: 'VenueKey', stream: tractor.MsgStream) -> None:
        self.key = key
        self.stream = stream
        self.positions: dict[tuple[str, str], BrokerdPosition] = {}
        self.closed = False
        self.lost: str | None = None  # why the dialogue was lost (None: open, or closed cleanly)
        self.relay_scope = trio.CancelScope()
        self.sent = 0
        self.received = 0

    @property
    def name(self) -> str:
        return '.'.join(self.key)

    def lose(self, reason: str) -> None:
        """Declare the dialogue dead: stop its relay (which then tells the Router)."""
        if not self.closed:
            self.closed = True
            self.lost = reason
            log.error('trades dialogue %s lost: %s', self.name, reason)
        self.relay_scope.cancel()

    async def send(self, msg) -> None:
        """Send one request to the venue; a dead venue raises :class:`VenueLost`."""
        if self.closed:
            raise VenueLost(f'trades dialogue {self.name} is {"lost: " + self.lost if self.lost else "closed"}')
        self.sent += 1
        try:
            await self.stream.send(to_wire(msg))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
            self.lose(f'send failed ({type(err).__name__})')
            raise VenueLost(f'trades dialogue {self.name} lost: send failed') from None


async def open_venue(router: 'Router', key: 'VenueKey', task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Open the dialogue for ``key`` and relay its events into the Router until it ends."""
    broker, kind = key
    started = False

    def report(venue: Venue) -> None:
        nonlocal started
        started = True
        task_status.started(venue)

    try:
        if kind == 'paper':
            from . import _paper

            portal = await router.actor_n.start_actor(
                f'paperboi.{broker}', enable_modules=PAPER_MODULES,
            )
            try:
                await _relay(router, key, portal, _paper.trades_dialogue, {'broker': broker}, report)
            finally:
                with trio.CancelScope(shield=True):
                    await portal.cancel_actor()
        else:
            endpoint = get_brokermod(broker).trades_dialogue
            async with maybe_spawn_brokerd(broker, loglevel=router.loglevel) as portal:
                await _relay(router, key, portal, endpoint, {}, report)
    except* Exception as eg:
        log.error('trades dialogue %s ended: %r', key, eg.exceptions[0])
        if not started:
            raise  # the client that needed this venue sees why it could not open


async def _relay(router: 'Router', key: 'VenueKey', portal: tractor.Portal, endpoint, kwargs: dict, report) -> None:
    async with portal.open_context(endpoint, loglevel=router.loglevel, **kwargs) as (ctx, positions):
        venue: Venue | None = None
        try:
            async with ctx.open_stream() as stream:
                venue = Venue(key, stream)
                for raw in positions or ():
                    try:
                        pos = parse_brokerd_msg(raw)
                        venue.positions[(pos.account, pos.symbol)] = pos
                    except MsgError as err:
                        log.warning('bad position from %s: %s', key, err)
                log.info('trades dialogue %s open', key)
                report(venue)
                with venue.relay_scope:
                    await _relay_events(router, venue, stream)
        finally:
            if venue is not None:
                venue.closed = True
                router.forget_venue(venue)
                if venue.lost:
                    await router.on_venue_lost(venue)
                    await abandon_context(ctx)


async def _relay_events(router: 'Router', venue: Venue, stream: tractor.MsgStream) -> None:
    """Feed every venue event to the Router until the dialogue ends or goes silent.

    Venues heartbeat when idle (part of the ``trades_dialogue`` contract), so
    :data:`HEARTBEAT_TIMEOUT_S` of silence means the broker died or hung.
    """
    while True:
        try:
            with trio.fail_after(HEARTBEAT_TIMEOUT_S):
                raw = await stream.receive()
        except trio.TooSlowError:
            venue.lose(f'no message or heartbeat for {HEARTBEAT_TIMEOUT_S:g}s')
            return
        except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError) as err:
            venue.lose(f'the dialogue closed ({type(err).__name__})')
            return
        if is_heartbeat(raw):
            continue
        venue.received += 1
        try:
            msg = parse_brokerd_msg(raw)
        except MsgError as err:
            router.rejected_broker_msgs += 1
            log.warning('invalid message from %s: %s', venue.name, err)
            continue
        try:
            await router.on_broker_msg(venue, msg)
        except Exception:
            log.exception('failed to handle %r from %s; continuing', msg, venue.name)
