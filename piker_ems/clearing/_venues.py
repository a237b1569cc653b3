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
from ._messages import BrokerdPosition, MsgError, parse_brokerd_msg, to_wire

if TYPE_CHECKING:
    from ._orders import VenueKey
    from ._router import Router

log = get_logger(__name__)

PAPER_MODULES = [DEATHSIG_MODULE, 'piker_ems.clearing._paper']


class Venue:
    """One open trades dialogue and the positions it reported."""

    def __init__(self, key: 'VenueKey', stream: tractor.MsgStream) -> None:
        self.key = key
        self.stream = stream
        self.positions: dict[tuple[str, str], BrokerdPosition] = {}
        self.closed = False
        self.sent = 0
        self.received = 0

    async def send(self, msg) -> None:
        """Send one request to the venue."""
        if self.closed:
            raise RuntimeError(f'trades dialogue {self.key} is closed')
        self.sent += 1
        await self.stream.send(to_wire(msg))


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
            try:
                async for raw in stream:
                    venue.received += 1
                    try:
                        msg = parse_brokerd_msg(raw)
                    except MsgError as err:
                        router.rejected_broker_msgs += 1
                        log.warning('invalid message from %s: %s', key, err)
                        continue
                    try:
                        await router.on_broker_msg(venue, msg)
                    except Exception:
                        log.exception('failed to handle %r from %s; continuing', msg, key)
            finally:
                venue.closed = True
                router.forget_venue(venue)
