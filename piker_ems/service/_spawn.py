"""Find a service by name, or have pikerd spawn it.

Service names are fixed (SPEC §1): ``brokerd.<broker>`` and ``emsd``. :func:`service_spec`
maps a name to what runs it; :func:`maybe_spawn_daemon` is the one find-or-spawn path every
caller uses, whether this process is pikerd, a client of a remote pikerd, or embedded in
someone else's tractor tree.
"""
from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from typing import AsyncIterator

import tractor

from ..log import get_logger
from ._auth import call
from ._daemon import local_services, maybe_open_pikerd
from ._registry import _connect_live, current_registry, find_service, wait_for_service
from ._specs import BROKERD_MODULES, EMSD_MODULES, PikerdError, ServiceDown, ServiceSpec, remote_error, service_spec
from ._state import spawn_lock

log = get_logger(__name__)

__all__ = [
    'BROKERD_MODULES', 'EMSD_MODULES', 'SPAWN_TIMEOUT', 'ServiceSpec', 'maybe_open_emsd',
    'maybe_spawn_brokerd', 'maybe_spawn_daemon', 'service_spec',
]

SPAWN_TIMEOUT = 30.0


async def _request_spawn(name: str, loglevel: str | None) -> None:
    services = local_services()
    if services is not None:
        await services.spawn(service_spec(name, loglevel))
        return
    async with find_service('pikerd') as pikerd:
        if pikerd is None:
            raise PikerdError('no pikerd is registered to spawn services')
        try:
            await call(pikerd, 'piker_ems.service._daemon', 'spawn_service', name=name, loglevel=loglevel)
        except BaseException as err:
            refused = _pikerd_refusal(err)
            if refused is None:
                raise
            raise refused from None


def _pikerd_refusal(err: BaseException) -> PikerdError | None:
    """pikerd's own one-line refusal to spawn (e.g. :class:`ServiceDown`: a served service
    that is down) out of the remote error around it, so callers (a venue, a feed, the CLI)
    report that line, not a remote traceback."""
    return remote_error(err, ServiceDown, PikerdError)  # type: ignore[return-value]


@asynccontextmanager
async def maybe_spawn_daemon(name: str, loglevel: str | None = None) -> AsyncIterator[tractor.Portal]:
    """Yield a portal to service ``name``, spawning it inside pikerd when it is not running.

    Must be called inside a tractor runtime. When no pikerd exists anywhere (an embedding app's
    own tree), one is started as a child of the calling tree for the duration of this block.
    """
    service_spec(name)  # validate the name (and the broker) before touching anything
    async with AsyncExitStack() as stack:
        async with spawn_lock(name):
            if local_services() is None:
                # join the remote pikerd, or hold a reference to the pikerd embedded in this
                # tree (starting it if there is none): its services live while we use them
                await stack.enter_async_context(maybe_open_pikerd(loglevel=loglevel))
            portal = await _connect_live(name, current_registry(), stack)
            if portal is None:
                await _request_spawn(name, loglevel)
                portal = await stack.enter_async_context(wait_for_service(name, SPAWN_TIMEOUT))
        yield portal


def maybe_spawn_brokerd(broker: str, loglevel: str | None = None):
    """Find or spawn ``brokerd.<broker>`` (async context manager yielding its portal)."""
    return maybe_spawn_daemon(f'brokerd.{broker}', loglevel=loglevel)


def maybe_open_emsd(loglevel: str | None = None):
    """Find or spawn the ``emsd`` singleton (async context manager yielding its portal)."""
    return maybe_spawn_daemon('emsd', loglevel=loglevel)
