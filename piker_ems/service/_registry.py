"""Finding pikerd and services through the tractor registry, without tractor's traps.

- A root actor opened while nobody listens at the registry address silently *becomes* the
  registry. :func:`registry_is_up` probes with plain TCP first so a client never does that.
- A SIGKILLed actor stays registered; connecting to it raises ``OSError``. :func:`find_service`
  skips such stale entries and unregisters them.
"""
from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from typing import AsyncIterator

import tractor
import trio

from ..log import get_logger
from ._auth import NotGenuine

log = get_logger(__name__)


async def registry_is_up(addr: tuple[str, int], timeout: float = 1.0) -> bool:
    """Return whether something accepts TCP connections at the registry address."""
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(*addr)
            await stream.aclose()
            return True
    except (OSError, trio.TooSlowError):
        return False


def current_registry() -> tuple[str, int]:
    """The registry address the running actor uses."""
    actor = tractor.current_actor()
    return tuple(actor._arb_addr)  # type: ignore[return-value]


async def list_registry(addr: tuple[str, int] | None = None) -> dict[str, tuple[str, int]]:
    """Return ``{'<name>.<uuid>': (host, port)}`` for every registered actor."""
    addr = addr or current_registry()
    async with tractor.get_arbiter(*addr) as reg:
        table = await reg.run_from_ns('self', 'get_registry')
    return {k: (v[0], int(v[1])) for k, v in table.items()}


async def _registered(name: str, addr: tuple[str, int]) -> list[tuple[tuple[str, str], tuple[str, int]]]:
    async with tractor.get_arbiter(*addr) as reg:
        table = await reg.run_from_ns('self', 'get_registry')
    out = []
    for key, sockaddr in table.items():
        aname, _, uuid = key.rpartition('.')
        if aname == name:
            out.append(((aname, uuid), (sockaddr[0], int(sockaddr[1]))))
    return out


def _started_here(name: str, uid: tuple[str, str]) -> bool:
    """Whether ``uid`` is the ``name`` this process's own pikerd started (no challenge needed)."""
    from ._state import maybe_actor_state

    state = maybe_actor_state()
    services = state.get('services') if state is not None else None  # this actor's pikerd
    portal = services.portal(name) if services is not None else None
    return portal is not None and tuple(portal.channel.uid) == tuple(uid)


async def _our_key_is_wrong(addr: tuple[str, int]) -> bool:
    """Whether the registry itself (pikerd) answers our identity challenge wrongly: then a
    service failing it says nothing about the service, and everything about our key."""
    from ._auth import WRONG_ANSWER, is_genuine

    try:
        async with tractor.get_arbiter(*addr) as reg:
            if not isinstance(reg, tractor.Portal) or reg.channel.uid is None:
                return False  # we are the registry
            return await is_genuine(reg, reg.channel.uid[0]) == WRONG_ANSWER
    except Exception:  # noqa: BLE001 - a registry that cannot answer (an embedding app's) tells nothing
        return False


def _whose_key(participant: str) -> str:
    """What is wrong with this client's key, in words (the local participant has no token)."""
    from ._auth import LOCAL, secret_path

    if participant == LOCAL:
        return f"this host's cluster secret ({secret_path()}) is not the cluster's"
    return f"wrong token for participant {participant!r} (or not this cluster's secret)"


async def _connect_live(name: str, addr: tuple[str, int], stack: AsyncExitStack) -> tractor.Portal | None:
    """Connect to the newest live, *genuine* registration of ``name``; unregister dead ones on
    the way, and skip (and report) any that cannot prove it is this cluster's service."""
    from ._auth import client_credential, is_genuine

    registered = await _registered(name, addr)
    if registered:
        client_credential()  # no credential (no secret here, no participant): say so before connecting
    rejected = 0
    for uid, sockaddr in reversed(registered):
        candidate = AsyncExitStack()
        try:
            chan = await candidate.enter_async_context(tractor._ipc._connect_chan(*sockaddr))
            portal = await candidate.enter_async_context(tractor._portal.open_portal(chan))
        except OSError:
            await candidate.aclose()
            log.warning('dropping stale registry entry %s at %s', uid, sockaddr)
            try:
                async with tractor.get_arbiter(*addr) as reg:
                    await reg.run_from_ns('self', 'unregister_actor', uid=uid)
            except Exception:  # the registry may itself be going away
                log.debug('could not unregister %s', uid, exc_info=True)
            continue
        try:
            why = None if _started_here(name, uid) else await is_genuine(portal, name)
        except BaseException:
            await candidate.aclose()  # (else its portal's tasks outlive this call)
            raise
        if why is not None:
            rejected += 1
            await candidate.aclose()  # (no cancel scope around it: it exits the portal's nursery)
            if rejected == 1 and await _our_key_is_wrong(addr):
                raise NotGenuine(f'{_whose_key(client_credential().participant)}: the registry at '
                                 f'{addr[0]}:{addr[1]} does not recognise it')
            log.error('IGNORED registry entry %s at %s:%s: not a genuine %s (%s)', uid, *sockaddr, name, why)
            continue
        stack.push_async_callback(candidate.aclose)
        return portal
    if rejected:
        raise NotGenuine(
            f'{name}: wrong token for participant {client_credential().participant!r} (or cluster secret), '
            f'or an impostor: {rejected} registration(s) failed the identity challenge'
        )
    return None


@asynccontextmanager
async def find_service(name: str, addr: tuple[str, int] | None = None) -> AsyncIterator[tractor.Portal | None]:
    """Yield a portal to the live actor registered as ``name``, or ``None``.

    Entries whose address refuses connections (actors that died without unregistering) are
    removed from the registry so later lookups do not trip over them.
    """
    async with AsyncExitStack() as stack:
        yield await _connect_live(name, addr or current_registry(), stack)


@asynccontextmanager
async def wait_for_service(name: str, timeout: float = 15.0, addr: tuple[str, int] | None = None) -> AsyncIterator[tractor.Portal]:
    """Yield a portal to ``name`` once it registers, or raise ``trio.TooSlowError``.

    Used right after asking pikerd to spawn something: the child registers only after it has
    connected back to its parent, so a single lookup can miss it.
    """
    addr = addr or current_registry()
    async with AsyncExitStack() as stack:
        portal = None
        deadline = trio.current_time() + timeout
        while portal is None:
            with trio.move_on_at(deadline):
                while not await _registered(name, addr):
                    await trio.sleep(0.05)
            if trio.current_time() >= deadline:
                raise trio.TooSlowError(f'{name} did not register within {timeout:g}s')
            # connect outside the timeout scope: the portal's nursery must not nest inside it
            try:
                portal = await _connect_live(name, addr, stack)
            except NotGenuine:
                portal = None
            if portal is None:  # only dead or impostor entries so far: wait for a real one
                await trio.sleep(0.05)
        yield portal
