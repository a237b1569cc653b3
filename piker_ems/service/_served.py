"""Services started elsewhere (``piker serve``) and pikerd's record of them.

A served service registers with the registry like any actor, and its supervisor (the ``piker
serve`` process) *announces* it to pikerd over :func:`accept_served`: a context pikerd holds
open while heartbeats flow both ways. pikerd first challenges the service (it must answer with
the cluster secret), then keeps it in :attr:`Services.served`. If the announcement goes silent
(the serving host or process died) pikerd marks it down and drops its registry entry; by default
it then refuses to start a local replacement (``[services] replace_remote``). A ``piker serve``
that is stopped says so (``retire``): then it is forgotten and may be replaced.

The announcer re-registers the service and re-announces it whenever pikerd comes back, so a
restarted pikerd finds its served services again.
"""
from __future__ import annotations

import time
from typing import Callable

import tractor
import trio

from ..log import get_logger
from ._auth import Refused, endpoint_name, guarded, is_genuine, local_credential, make_auth, refusal
from ._daemon import PikerdError, Served, _require_local, local_services
from ._ipc import HEARTBEAT_S, HEARTBEAT_TIMEOUT_S, abandon_context, heartbeat, is_heartbeat
from ._registry import find_service, registry_is_up

log = get_logger(__name__)

__all__ = ['accept_served', 'announce', 'replacement_refused']

RETIRE = {'name': 'retire'}
#: Pause between attempts to reach pikerd when it is gone.
RETRY_S = 1.0


def _check_name(name: str) -> None:
    prefix, dot, rest = name.partition('.')
    if not (name == 'emsd' or (prefix in ('brokerd', 'paperboi') and dot and rest)):
        raise Refused(f'accept_served: {name!r} is not a service name')


@guarded('admin')
@tractor.context
async def accept_served(ctx: tractor.Context, name: str, uid: list, addr: list,
                        supervisor: list | None = None) -> None:
    """RPC (pikerd): take ``name``, registered as ``uid`` at ``addr``, as served from there for
    as long as this context heartbeats. Admin only (the announcer holds the cluster secret).
    ``supervisor`` is the announcing ``piker serve`` actor's uid: its registry entry is dropped
    with the service's if the announcement is lost."""
    services = _require_local()
    _check_name(name)
    uid_t, addr_t = (str(uid[0]), str(uid[1])), (str(addr[0]), int(addr[1]))
    if services.portal(name) is not None:
        raise PikerdError(f'{name} already runs in pikerd\'s own tree: stop it first '
                          f'(a second one would serve the same {name})')
    current = services.served.get(name)
    # (one killed a moment ago is still marked up until its announcement times out: a TCP probe)
    if current is not None and current.up and current.uid != uid_t and await registry_is_up(current.addr):
        raise PikerdError(f'{name} is already served from {current.addr[0]}:{current.addr[1]}')
    # the announcer holds the secret; the service it names must prove it too
    try:
        async with tractor._ipc._connect_chan(*addr_t) as chan, tractor._portal.open_portal(chan) as portal:
            why = await is_genuine(portal, name, local_credential())
    except OSError as err:
        why = f'unreachable ({type(err).__name__})'
    if why is not None:
        raise Refused(f'accept_served: {name} at {addr_t[0]}:{addr_t[1]}: {why}')
    served = services.served[name] = Served(name, uid_t, addr_t)
    log.info('accepted %s served from %s:%s', name, *addr_t)
    retired = False
    try:
        await ctx.started({'accepted': name})
        async with ctx.open_stream() as stream, trio.open_nursery() as n:
            async def beat() -> None:
                while True:
                    await trio.sleep(HEARTBEAT_S)
                    try:
                        await stream.send(heartbeat())
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
                        log.debug('%s: heartbeat not sent: %r', name, err)
                        served.reason = 'connection lost'  # (users read it: no class names)
                        n.cancel_scope.cancel()
                        return

            n.start_soon(beat)
            while True:
                try:
                    with trio.fail_after(HEARTBEAT_TIMEOUT_S):
                        msg = await stream.receive()
                except trio.TooSlowError:
                    served.reason = f'silent for {HEARTBEAT_TIMEOUT_S:g}s'
                    break
                except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError) as err:
                    log.debug('%s: announcement ended: %r', name, err)
                    served.reason = 'connection closed'
                    break
                if msg == RETIRE:
                    retired = True
                    break
                if not is_heartbeat(msg):
                    log.warning('accept_served %s: unexpected message %r', name, msg)
            n.cancel_scope.cancel()
    finally:
        if services.served.get(name) is served:
            if retired:
                del services.served[name]
                log.info('%s (served from %s:%s) stopped', name, *addr_t)
            else:
                served.up, served.since = False, time.time()
                served.reason = served.reason or 'pikerd stopped'
                log.error('%s (served from %s:%s) is lost: %s', name, *addr_t, served.reason)
                dead = [uid_t] + ([(str(supervisor[0]), str(supervisor[1]))] if supervisor else [])
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    for u in dead:
                        try:
                            await services.forget_registration(u)
                        except Exception:  # noqa: BLE001 - the registry may be going away
                            log.debug('could not unregister %s', u, exc_info=True)


async def replacement_refused(name: str) -> str | None:
    """Why this cluster must not start a local ``name`` now (a remotely started one is down
    and ``[services] replace_remote`` says no), or ``None``. Asks pikerd; no pikerd: ``None``."""
    from ._auth import call

    services = local_services()
    if services is not None:
        return services.replacement_refused(name)
    async with find_service('pikerd') as pikerd:
        if pikerd is None:
            return None
        return await call(pikerd, 'piker_ems.service._daemon', 'replacement_refused', name=name)


async def _announce_once(name: str, uid: tuple[str, str], addr: tuple[str, int],
                         registry: tuple[str, int], accepted: trio.Event,
                         retire: Callable[[], bool]) -> None:
    """Register ``uid`` at ``addr`` and hold one announcement to pikerd until it ends."""
    async with find_service('pikerd', registry) as pikerd:
        if pikerd is None:
            raise PikerdError(f'no pikerd registered at {registry[0]}:{registry[1]}')
        # (a pikerd that restarted has an empty registry: put the service back in it)
        me = tractor.current_actor()
        async with tractor.get_arbiter(*registry) as reg:
            await reg.run_from_ns('self', 'register_actor', uid=uid, sockaddr=addr)
            await reg.run_from_ns('self', 'register_actor', uid=me.uid, sockaddr=me.accept_addr)
        auth = make_auth(endpoint_name(accept_served), local_credential())
        async with pikerd.open_context(accept_served, name=name, uid=list(uid), addr=list(addr),
                                       supervisor=list(tractor.current_actor().uid), auth=auth) as (ctx, _):
            lost = False
            try:
                async with ctx.open_stream() as stream, trio.open_nursery() as n:
                    async def beat() -> None:
                        while True:
                            await stream.send(heartbeat())
                            await trio.sleep(HEARTBEAT_S)

                    n.start_soon(beat)
                    accepted.set()
                    log.info('pikerd at %s:%s accepted %s', *registry, name)
                    try:
                        while True:
                            with trio.fail_after(HEARTBEAT_TIMEOUT_S):
                                await stream.receive()
                    except trio.Cancelled:  # this serve is stopping: tell pikerd (bounded)
                        if retire():
                            with trio.CancelScope(shield=True), trio.move_on_after(1):
                                await stream.send(RETIRE)
                        raise
                    except (trio.TooSlowError, trio.EndOfChannel, trio.ClosedResourceError,
                            trio.BrokenResourceError) as err:
                        lost = True
                        log.warning('lost pikerd at %s:%s (%s)', *registry, type(err).__name__)
                        n.cancel_scope.cancel()
            finally:
                if lost:
                    await abandon_context(ctx)
                else:
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await ctx.cancel()


def one_line(err: BaseException) -> str:
    """A failure of the announcement as one line (a refusal, pikerd's own error, or local)."""
    refused = refusal(err)
    if refused is not None:
        return str(refused)
    stack = [err]
    while stack:
        exc = stack.pop()
        msgdata = getattr(exc, 'msgdata', None)
        if isinstance(msgdata, dict):
            tb = (msgdata.get('tb_str') or '').strip().splitlines()
            return tb[-1] if tb else str(exc)
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        elif not stack:
            return f'{type(exc).__name__}: {exc}' if not str(exc) else str(exc)
    return str(err)


async def announce(name: str, uid: tuple[str, str], addr: tuple[str, int], registry: tuple[str, int],
                   retire: Callable[[], bool] = lambda: True, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Keep ``name`` announced to the registry's pikerd, re-announcing whenever pikerd comes
    back. Reports started once pikerd first accepted it; until then any failure is raised as
    :class:`PikerdError` (one line: the serve command cannot go on), afterwards retried. When
    cancelled, tells pikerd the service retired if ``retire()`` (an orderly stop)."""
    started = False
    while True:
        accepted = trio.Event()
        try:
            if await registry_is_up(registry):
                async with trio.open_nursery() as n:
                    n.start_soon(_announce_once, name, uid, addr, registry, accepted, retire)
                    await accepted.wait()
                    if not started:
                        started = True
                        task_status.started()
            elif not started:
                raise PikerdError(f'no pikerd running at {registry[0]}:{registry[1]}')
        except Exception as err:  # noqa: BLE001 - pikerd went away: try again
            if not started:
                raise PikerdError(f'pikerd did not accept {name}: {one_line(err)}') from None
            log.warning('announcing %s to pikerd failed (%s): retrying', name, one_line(err))
        await trio.sleep(RETRY_S)
