"""pikerd: the root daemon, its :class:`Services` and the RPCs clients use to ask for services.

A daemon is a sub-actor of pikerd plus a *service task*: a remote context that pikerd opens on
the daemon and holds open. Because pikerd (not the client that asked) owns that context, the
daemon outlives its requester. Clients in other processes reach pikerd's :class:`Services`
through :func:`spawn_service` / :func:`cancel_service` / :func:`list_services` RPCs.
"""
from __future__ import annotations

import signal
import time
from collections import defaultdict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import tractor
import trio

from .. import config
from ..log import get_logger, setup_console
from ._auth import AUTH_MODULE, act_as_service, endpoint_name, ensure_secret, guarded, local_credential, make_auth
from ._cache import SharedCache
from ._ipc import open_supervisor
from ._registry import find_service, registry_is_up
from ._specs import PikerdError, ServiceDown, ServiceSpec, service_spec
from ._state import actor_state, maybe_actor_state

log = get_logger(__name__)

DEATHSIG_MODULE = 'piker_ems.service._deathsig'
PIKERD_MODULES = [DEATHSIG_MODULE, 'piker_ems.service._daemon', 'piker_ems.service._auth',
                  'piker_ems.service._served']
TRACTOR_QUIET = 'critical'

__all__ = ['PikerdError', 'ServiceSpec', 'Services', 'local_services', 'maybe_open_pikerd', 'open_pikerd']


@dataclass
class _Running:
    portal: tractor.Portal
    cancel_scope: trio.CancelScope
    done: trio.Event


@dataclass
class Served:
    """A service started elsewhere (``piker serve``) that pikerd accepted after it proved it
    holds the cluster secret. ``up`` while its announcement heartbeats; a service that died
    (rather than stopped) stays known as down, so pikerd does not replace it by default."""

    name: str
    uid: tuple[str, str]
    addr: tuple[str, int]
    up: bool = True
    since: float = field(default_factory=time.time)
    reason: str = ''

    def describe(self) -> dict:
        return {'uid': list(self.uid), 'addr': list(self.addr), 'up': self.up, 'since': self.since,
                'reason': self.reason}


def replace_remote_allowed(name: str, settings: dict | None = None) -> bool:
    """``[services] replace_remote`` of ``piker_ems.toml``: may pikerd (or emsd, for a paper
    engine) start a local ``name`` while the one started remotely is down? ``false`` (default),
    ``true``, or a list of service names."""
    if settings is None:
        settings = config.load_config().get('services') or {}
    allowed = settings.get('replace_remote', False)
    if isinstance(allowed, (list, tuple)):
        return name in allowed
    return bool(allowed)


class Services:
    """pikerd's handle: the actor nursery daemons live in and the service-task nursery.

    One instance per pikerd process, created by :func:`open_pikerd` (or by an embedded pikerd
    actor) and torn down with it.
    """

    def __init__(
        self,
        actor_n: tractor._supervise.ActorNursery,
        service_n: trio.Nursery,
        *,
        registry: tuple[str, int],
        loglevel: str | None = None,
        tractor_loglevel: str = TRACTOR_QUIET,
        debug_mode: bool = False,
    ) -> None:
        self.actor_n = actor_n
        self.service_n = service_n
        self.registry = registry
        self.loglevel = loglevel
        self.tractor_loglevel = tractor_loglevel
        self.debug_mode = debug_mode
        self._running: dict[str, _Running] = {}
        self._locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        self.served: dict[str, Served] = {}

    def replacement_refused(self, name: str) -> str | None:
        """Why a local ``name`` must not be started now (one line), or ``None``: a service
        that was started remotely is not replaced while it runs, nor by default while it is
        down (``[services] replace_remote``)."""
        served = self.served.get(name)
        if served is None:
            return None
        where = f'{served.addr[0]}:{served.addr[1]}'
        if served.up:
            return f'{name} is served from {where} (piker serve); not starting another one here'
        if replace_remote_allowed(name):
            return None
        down = time.strftime('%H:%M:%S', time.localtime(served.since))
        return (f'{name} is down since {down}{" (" + served.reason + ")" if served.reason else ""}: '
                f'it was started remotely (piker serve, last at {where}); start it again there '
                f'([services] replace_remote = true lets pikerd replace it meanwhile)')

    def describe(self) -> dict:
        """What runs where: pikerd's own services and the served ones."""
        own = {}
        for name, running in self._running.items():
            uid = running.portal.channel.uid
            own[name] = {'uid': list(uid) if uid else None}
        return {'own': own, 'served': {n: s.describe() for n, s in self.served.items()}}

    def list(self) -> list[str]:
        """Names of the services this pikerd runs."""
        return sorted(self._running)

    def portal(self, name: str) -> tractor.Portal | None:
        """The portal of a running service, if any."""
        running = self._running.get(name)
        return running.portal if running else None

    def ended(self, name: str) -> trio.Event | None:
        """Set when the running service ``name`` ends (stopped, or its process died)."""
        running = self._running.get(name)
        return running.done if running else None

    async def start_service_task(
        self,
        name: str,
        portal: tractor.Portal,
        target: Callable,
        **kwargs: Any,
    ) -> Any:
        """Open ``target`` as a context on ``portal`` from pikerd's service nursery.

        Returns the service's ``started()`` value once it is up. The context is held open by
        pikerd until :meth:`cancel_service`; if the service fails, the failure is logged and the
        service forgotten, but pikerd keeps running.
        """
        done = trio.Event()

        async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
            cs = trio.CancelScope()
            started = False
            try:
                with cs:
                    auth = make_auth(endpoint_name(target), local_credential())  # pikerd's own call
                    async with portal.open_context(target, auth=auth, **kwargs) as (ctx, first):
                        started = True
                        task_status.started((cs, first))
                        await ctx.result()
            except* tractor.ContextCancelled:
                log.info('service %s was cancelled', name)
            except* Exception as eg:
                if not started:
                    raise  # the requester sees why the service could not start
                log.error('service %s failed: %r', name, eg.exceptions[0])
            finally:
                done.set()
                current = self._running.get(name)
                if current is not None and current.done is done:
                    del self._running[name]

        cs, first = await self.service_n.start(run)
        self._running[name] = _Running(portal, cs, done)
        return first

    async def spawn(self, spec: ServiceSpec, bind: tuple[str, int] | None = None) -> bool:
        """Start ``spec`` (listening at ``bind``; default: pikerd's host and a free port) unless
        it already runs; return whether it was started now."""
        async with self._locks[spec.name]:
            running = self._running.get(spec.name)
            if running is not None and not running.done.is_set():
                return False
            refused = self.replacement_refused(spec.name)
            if refused is not None:
                raise (PikerdError if self.served[spec.name].up else ServiceDown)(refused)
            log.info('spawning %s', spec.name)
            portal = await self.actor_n.start_actor(
                spec.name,
                enable_modules=[DEATHSIG_MODULE, AUTH_MODULE, *spec.enable_modules],
                loglevel=self.tractor_loglevel,
                debug_mode=self.debug_mode,
                # (pikerd's children listen where pikerd does, so other hosts can reach them)
                bind_addr=bind or (_ipv4(self.registry[0]), 0),
            )
            try:
                await self.start_service_task(
                    spec.name, portal, spec.resolve_target(),
                    loglevel=self.loglevel, **spec.kwargs,
                )
            except BaseException:
                with trio.CancelScope(shield=True):
                    await portal.cancel_actor()
                raise
            uid = portal.channel.uid
            child = self.actor_n._children.get(uid)
            if child is not None:
                self.service_n.start_soon(self._watch_process, spec.name, uid, child[1])
            return True

    async def _watch_process(self, name: str, uid: tuple[str, str], proc: trio.Process) -> None:
        """Forget a service whose process died on its own (crash, OOM, SIGKILL).

        tractor 0.1.0a5 never tells a parent that a child's connection dropped: the service
        task would wait forever, the service would look alive and could never be respawned,
        and its registry entry would point at a dead address.
        """
        await proc.wait()
        running = self._running.get(name)
        if running is None or running.portal.channel.uid != uid:
            return  # stopped through cancel_service (or already replaced)
        log.error('service %s died (exit code %s)', name, proc.returncode)
        del self._running[name]
        running.cancel_scope.cancel()
        try:
            with trio.move_on_after(1):
                await self.forget_registration(uid)
        except Exception:  # already unregistered, or the registry is going away
            log.debug('could not unregister %s', uid, exc_info=True)

    async def forget_registration(self, uid: tuple[str, str]) -> None:
        """Drop ``uid``'s registry entry (an actor that died cannot do it itself)."""
        async with tractor.get_arbiter(*self.registry) as reg:
            await reg.run_from_ns('self', 'unregister_actor', uid=uid)

    async def cancel_service(self, name: str) -> bool:
        """Stop one service cleanly: end its service task, then cancel its actor."""
        running = self._running.pop(name, None)
        if running is None:
            return False
        running.cancel_scope.cancel()
        with trio.move_on_after(3):
            await running.done.wait()
        return await running.portal.cancel_actor()

    async def cancel_all(self) -> None:
        """Stop every service (used on pikerd shutdown)."""
        for name in list(self._running):
            await self.cancel_service(name)


def _ipv4(host: str) -> str:
    """``host`` as one IPv4 address (a name such as ``localhost`` could bind several)."""
    import socket

    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def local_services() -> Services | None:
    """The running actor's :class:`Services` if it is (or embeds) pikerd, else ``None``.

    Kept in the actor's own state (:mod:`._state`), set and cleared by the code that hosts the
    services, so it never outlives that actor.
    """
    state = maybe_actor_state()
    return None if state is None else state.get('services')


# --- RPC endpoints run inside pikerd ---------------------------------------------------------
# Each takes a signed ``auth`` argument (see ._auth): any participant may have a service started
# (a client needs its brokerd and emsd), only an admin may stop one.

@guarded()
async def spawn_service(name: str, loglevel: str | None = None) -> bool:
    """RPC: start the named service inside pikerd (idempotent); True if it was started now."""
    services = _require_local()
    return await services.spawn(service_spec(name, loglevel=loglevel))


@guarded('admin')
async def cancel_service(name: str) -> bool:
    """RPC: stop the named service."""
    return await _require_local().cancel_service(name)


@guarded()
async def list_services() -> list[str]:
    """RPC: names of running services."""
    return _require_local().list()


@guarded()
async def describe_services() -> dict:
    """RPC: pikerd's own services (``own``: name -> uid) and those started elsewhere with
    ``piker serve`` that it accepted (``served``: name -> uid, addr, up, since, reason)."""
    return _require_local().describe()


@guarded()
async def replacement_refused(name: str) -> str | None:
    """RPC: why a local ``name`` must not be started now (see
    :meth:`Services.replacement_refused`), or ``None``. emsd asks before starting its own
    paper engine."""
    return _require_local().replacement_refused(name)


def _require_local() -> Services:
    services = local_services()
    if services is None:
        raise PikerdError('this actor is not pikerd')
    return services


# --- opening pikerd ---------------------------------------------------------------------------

async def _cancel_on_signal(cancel_scope: trio.CancelScope, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Turn SIGTERM/SIGHUP into an orderly shutdown of the whole tree."""
    try:
        receiver = trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP)
    except (RuntimeError, ValueError):  # not the main thread
        task_status.started()
        await trio.sleep_forever()
    with receiver as signals:
        task_status.started()
        async for signum in signals:
            log.warning('received %s: shutting down', signal.Signals(signum).name)
            cancel_scope.cancel()
            return


@asynccontextmanager
async def _hosting_services(
    registry: tuple[str, int],
    loglevel: str | None,
    tractor_loglevel: str,
    debug_mode: bool,
) -> AsyncIterator[Services]:
    """Open an actor nursery and a service nursery in the current actor and publish Services."""
    state = actor_state()
    if state.get('services') is not None:
        raise PikerdError('this actor already hosts pikerd')
    ensure_secret()  # first start: the cluster secret (and so the local participant) exists
    async with open_supervisor() as (actor_n, service_n):
        services = Services(
            actor_n, service_n, registry=registry, loglevel=loglevel,
            tractor_loglevel=tractor_loglevel, debug_mode=debug_mode,
        )
        state['services'] = services
        try:
            yield services
        finally:
            if state.get('services') is services:
                del state['services']


@asynccontextmanager
async def open_pikerd(
    registry_addr: tuple[str, int] | None = None,
    loglevel: str | None = None,
    debug_mode: bool = False,
    tractor_loglevel: str | None = None,
) -> AsyncIterator[Services]:
    """Make this process the root daemon: the registry plus the owner of every service.

    Yields the :class:`Services` handle. SIGTERM and SIGHUP end the ``async with`` body and tear
    the whole tree down (SIGINT does the same through KeyboardInterrupt).
    """
    addr = registry_addr or config.registry_addr()
    setup_console(loglevel)
    if await registry_is_up(addr):
        raise PikerdError(f'something already listens at {addr[0]}:{addr[1]}; is pikerd running?')
    tl = tractor_loglevel or TRACTOR_QUIET
    async with tractor.open_root_actor(
        name='pikerd',
        arbiter_addr=addr,
        loglevel=tl,
        debug_mode=debug_mode,
        enable_modules=PIKERD_MODULES,
    ) as actor:
        if not actor.is_arbiter:
            raise PikerdError(f'lost the race for {addr[0]}:{addr[1]} to another registry')
        async with trio.open_nursery() as guard:
            await guard.start(_cancel_on_signal, guard.cancel_scope)
            async with _hosting_services(addr, loglevel, tl, debug_mode) as services:
                log.info('pikerd up at %s:%s', *addr)
                yield services
            guard.cancel_scope.cancel()


@guarded('admin')
@tractor.context
async def _embedded_pikerd(
    ctx: tractor.Context,
    loglevel: str | None = None,
    tractor_loglevel: str = TRACTOR_QUIET,
    debug_mode: bool = False,
) -> None:
    """Run pikerd's Services inside a child actor of someone else's tractor tree."""
    setup_console(loglevel)
    act_as_service()
    actor = tractor.current_actor()
    async with _hosting_services(tuple(actor._arb_addr), loglevel, tractor_loglevel, debug_mode):
        await ctx.started(True)
        await trio.sleep_forever()


@asynccontextmanager
async def _open_embedded_pikerd(loglevel: str | None, tractor_loglevel: str) -> AsyncIterator[None]:
    ensure_secret()  # this tree is about to host pikerd: its first start makes the secret
    async with tractor.open_nursery() as an:
        portal = await an.start_actor(
            'pikerd', enable_modules=PIKERD_MODULES, loglevel=tractor_loglevel,
        )
        async with portal.open_context(
            _embedded_pikerd, loglevel=loglevel, tractor_loglevel=tractor_loglevel,
            auth=make_auth(endpoint_name(_embedded_pikerd), local_credential()),
        ) as (ctx, _):
            try:
                yield
            finally:
                await ctx.cancel()
        await an.cancel()


@asynccontextmanager
async def maybe_open_pikerd(
    registry_addr: tuple[str, int] | None = None,
    loglevel: str | None = None,
    debug_mode: bool = False,
    name: str = 'piker',
    tractor_loglevel: str | None = None,
    enable_modules: list[str] | None = None,
) -> AsyncIterator[Services | None]:
    """Join the running pikerd if one answers, else become pikerd in this process.

    - No tractor runtime yet and a pikerd listening: open a plain client root actor named
      ``name`` (yields ``None``).
    - No tractor runtime and nothing listening: become pikerd (yields :class:`Services`); the
      services then die with this process.
    - Already inside a tractor tree (embedding): reuse it; if no pikerd is registered anywhere,
      start one as a child of this tree (shared by every caller in the process).
    """
    tl = tractor_loglevel or TRACTOR_QUIET
    actor = tractor.current_actor(err_on_no_runtime=False)
    if actor is not None:
        state = actor_state(actor)
        if state.get('services') is not None:
            yield state['services']
            return
        # the embedded pikerd child is shared by every caller in this actor (and lives in the
        # actor's own service nursery, so it goes with the actor)
        cache = state.get('embedded_pikerd')
        if cache is None:
            cache = state['embedded_pikerd'] = SharedCache(actor._service_n)
        if 'pikerd' not in cache:
            # (a pikerd we embedded ourselves is registered too: it is used through the
            # cache below, so every user in this process holds a reference to it)
            async with find_service('pikerd') as portal:
                found = portal is not None
            if found:
                yield None
                return
        async with cache.open('pikerd', lambda: _open_embedded_pikerd(loglevel, tl)):
            yield None
        return

    addr = registry_addr or config.registry_addr()
    setup_console(loglevel)
    if await registry_is_up(addr):
        from ._root import open_client_root  # (another host's registry: bind a local address)

        async with open_client_root(name, addr, loglevel=tl, debug_mode=debug_mode,
                                    enable_modules=[DEATHSIG_MODULE, *(enable_modules or [])]):
            yield None
    else:
        log.info('no pikerd at %s:%s: running services in this process', *addr)
        async with open_pikerd(addr, loglevel=loglevel, debug_mode=debug_mode, tractor_loglevel=tl) as services:
            yield services
