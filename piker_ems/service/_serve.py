"""``piker serve NAME``: one service in its own process, anywhere the registry can be reached.

The process is a small supervisor: a root actor (bound on the service's host) hosting a
:class:`~piker_ems.service._daemon.Services` of its own, which spawns the one service as its
child, listening at the requested address, with the same service task pikerd would run. The
supervisor then announces the service to pikerd (:mod:`._served`) and keeps it announced. The
child dies with the supervisor (see :mod:`._deathsig`), so killing the process group, or the
supervisor alone, ends both.
"""
from __future__ import annotations

import socket
from typing import Callable

import tractor
import trio

from ..log import get_logger, setup_console
from ._auth import (AUTH_MODULE, MIRROR_EVERY_S, WRONG_ANSWER, act_as_service, call, fetch_participants, guarded,
                    is_genuine, local_credential, secret_path)
from ._daemon import DEATHSIG_MODULE, TRACTOR_QUIET, _cancel_on_signal, _hosting_services
from ._registry import _registered, find_service, registry_is_up
from ._root import open_bound_root
from ._served import announce
from ._specs import PikerdError, ServiceSpec, service_spec

log = get_logger(__name__)

__all__ = ['check_bind', 'serve', 'served_spec']

PAPER_MODULES = ['piker_ems.clearing._paper', 'piker_ems.service._serve']


def served_spec(name: str) -> ServiceSpec:
    """What runs ``name`` when served on its own: ``emsd``, ``brokerd.<broker>`` as in pikerd,
    and ``paperboi.<broker>`` (elsewhere a child of emsd) with a service task of its own."""
    from ..brokers import get_brokermod

    prefix, dot, broker = name.partition('.')
    if prefix == 'paperboi' and dot and broker:
        get_brokermod(broker)
        return ServiceSpec(name, PAPER_MODULES, 'piker_ems.service._serve:_hold_paperboi', {'broker': broker})
    try:
        return service_spec(name)
    except PikerdError:
        raise PikerdError(f'no service named {name!r}: expected emsd, brokerd.<broker> or paperboi.<broker>') from None


@guarded('admin')
@tractor.context
async def _hold_paperboi(ctx: tractor.Context, broker: str, loglevel: str | None = None) -> None:
    """A served paper engine's service task: it only keeps the actor up (its engine is made by
    the first trades dialogue, from its journal, as in a paperboi spawned by emsd)."""
    setup_console(loglevel, process_name=f'paperboi.{broker}')
    act_as_service()
    await ctx.started(f'paperboi.{broker}')
    await trio.sleep_forever()


def check_bind(host: str, port: int) -> None:
    """Raise ``OSError`` (with the OS's reason) if nothing could listen at ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))


async def _check_pikerd(registry: tuple[str, int]) -> None:
    """pikerd must answer this process's identity challenge: else our secret is not the
    cluster's (or the registry is an impostor); either way, serving would be pointless."""
    async with tractor.get_arbiter(*registry) as reg:
        why = await is_genuine(reg, 'pikerd', local_credential())
    if why == WRONG_ANSWER:
        raise PikerdError(f'the pikerd at {registry[0]}:{registry[1]} does not hold the cluster secret '
                          f'in {secret_path()}: copy its cluster.secret here (--secret-file)')
    if why is not None:
        raise PikerdError(f'the registry at {registry[0]}:{registry[1]} is not a genuine pikerd: {why}')


async def _mirror_participants(child: tractor.Portal, registry: tuple[str, int],
                               task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Keep the served child's participants in step with pikerd's: the participants (and
    their roles) live on the pikerd host; a served service verifies them against this copy,
    refreshed every :data:`MIRROR_EVERY_S`. Started once the first copy is in place."""
    started = False
    while True:
        try:
            async with find_service('pikerd', registry) as pikerd:
                if pikerd is None:
                    raise PikerdError('no pikerd registered')
                while True:
                    nonce, table = await fetch_participants(pikerd)
                    await call(child, AUTH_MODULE, 'set_participants_mirror', cred=local_credential(),
                               nonce=nonce, table=table)
                    if not started:
                        started = True
                        task_status.started()
                    await trio.sleep(MIRROR_EVERY_S)
        except Exception as err:  # noqa: BLE001 - pikerd away: keep the last copy, retry
            if not started:
                raise PikerdError(f'could not get the participants from pikerd: {type(err).__name__}: {err}') from None
            log.warning('participants from pikerd: %s: %s (retrying)', type(err).__name__, err)
        await trio.sleep(MIRROR_EVERY_S)


async def serve(
    name: str,
    bind: tuple[str, int],
    registry: tuple[str, int],
    loglevel: str | None = None,
    tractor_loglevel: str | None = None,
    on_ready: Callable[[tuple[str, int]], None] | None = None,
) -> int:
    """Run service ``name`` listening at ``bind`` until stopped (0) or until it dies (1)."""
    spec = served_spec(name)
    setup_console(loglevel, process_name=f'serve {name}')
    tl = tractor_loglevel or TRACTOR_QUIET
    if not await registry_is_up(registry):  # (before any actor: it would become the registry)
        raise PikerdError(f'no pikerd running at {registry[0]}:{registry[1]} (start pikerd first, '
                          f'or give --registry HOST:PORT)')
    async with open_bound_root(f'serve.{name}', registry, (bind[0], 0),
                               enable_modules=[DEATHSIG_MODULE, AUTH_MODULE], loglevel=tl):
        await _check_pikerd(registry)
        async with find_service(name, registry) as other:
            if other is not None:
                where = other.channel.raddr
                raise PikerdError(f'{name} already runs (at {where[0]}:{where[1]}): stop it first')
        died = False
        async with trio.open_nursery() as guard:
            await guard.start(_cancel_on_signal, guard.cancel_scope)
            async with _hosting_services(registry, loglevel, tl, False) as services:
                await services.spawn(spec, bind=bind)
                portal, ended = services.portal(name), services.ended(name)
                assert portal is not None and ended is not None
                uid = tuple(portal.channel.uid)
                addr = next((a for u, a in await _registered(name, registry) if u == uid), None)
                if addr is None:
                    raise PikerdError(f'{name} did not register with the registry')
                await guard.start(_mirror_participants, portal, registry)
                # (a service that died is not retired: pikerd keeps it known, as down)
                await guard.start(announce, name, uid, addr, registry, lambda: not died)
                if on_ready is not None:
                    on_ready(addr)
                await ended.wait()
                died = True
                log.error('%s died', name)
                guard.cancel_scope.cancel()
    return 1 if died else 0
