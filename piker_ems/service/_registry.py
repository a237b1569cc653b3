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


async def _connect_live(name: str, addr: tuple[str, int], stack: AsyncExitStack) -> tractor.Portal | None:
    """Connect to the newest live registration of ``name``; unregister dead ones on the way."""
    for uid, sockaddr in reversed(await _registered(name, addr)):
        try:
            chan = await stack.enter_async_context(tractor._ipc._connect_chan(*sockaddr))
        except OSError:
            log.warning('dropping stale registry entry %s at %s', uid, sockaddr)
            try:
                async with tractor.get_arbiter(*addr) as reg:
                    await reg.run_from_ns('self', 'unregister_actor', uid=uid)
            except Exception:  # the registry may itself be going away
                log.debug('could not unregister %s', uid, exc_info=True)
            continue
        return await stack.enter_async_context(tractor._portal.open_portal(chan))
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
            portal = await _connect_live(name, addr, stack)
        yield portal
