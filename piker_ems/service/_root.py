"""A root actor that joins an existing registry *and binds where it is told*.

tractor 0.1.0a5's ``open_root_actor`` binds a joining root actor to ``(<registry host>, 0)``:
on another machine that address is not local (the bind fails), and a service that must listen on
``127.0.0.2`` or a LAN address cannot say so. :func:`open_bound_root` is the same start-up
(the actor registers its *bound* address with the registry) with the bind address as a
parameter. It only joins: a registry must already answer (nobody becomes the registry here).
"""
from __future__ import annotations

import ipaddress
import os
import socket
from contextlib import asynccontextmanager
from functools import partial
from typing import AsyncIterator

import tractor
import trio

from ..log import get_logger

log = get_logger(__name__)

__all__ = ['is_loopback', 'local_host_towards', 'open_bound_root', 'open_client_root']


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is a loopback address of this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def local_host_towards(registry: tuple[str, int]) -> str:
    """The local address this machine uses to reach ``registry`` (no packet is sent): a client
    on another host binds there, so the address it registers is one the cluster can reach."""
    if is_loopback(registry[0]):
        return registry[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(registry)
        return s.getsockname()[0]


@asynccontextmanager
async def open_bound_root(
    name: str,
    registry: tuple[str, int],
    bind: tuple[str, int],
    enable_modules: list[str] | None = None,
    loglevel: str | None = None,
) -> AsyncIterator[object]:
    """Run this process's root actor ``name`` bound at ``bind``, registered with ``registry``."""
    from tractor import _state
    from tractor import log as tlog
    from tractor._actor import Actor

    if _state._current_actor is not None:
        raise RuntimeError('a tractor runtime already runs in this process')
    os.environ['PYTHONBREAKPOINT'] = 'tractor._debug._set_trace'  # as open_root_actor does
    _state._runtime_vars['_is_root'] = True
    level = (loglevel or tlog._default_loglevel).upper()
    tlog.get_console_log(level)
    actor = Actor(name, arbiter_addr=registry, loglevel=level, enable_modules=list(enable_modules or []))
    _state._current_actor = actor
    body_done = False
    try:
        async with trio.open_nursery() as n:
            await n.start(partial(actor._async_main, accept_addr=bind, parent_addr=None))
            try:
                yield actor
                body_done = True
            finally:
                await actor.cancel()
    except* tractor.RemoteActorError as eg:
        # a registry that restarted meanwhile no longer knows us: its refusal to unregister
        # us on the way out is no failure of this process
        if not body_done or not all(getattr(e, 'type', None) is KeyError for e in eg.exceptions):
            raise
        log.warning('the registry did not know %s any more at shutdown', name)
    finally:
        _state._current_actor = None


def open_client_root(name: str, registry: tuple[str, int], loglevel: str | None = None,
                     enable_modules: list[str] | None = None, debug_mode: bool = False):
    """The root actor of a client joining ``registry``: tractor's own when the registry's host
    is one of this machine's addresses, else :func:`open_bound_root` on the local address
    that reaches it (tractor's would try to bind the registry host's address, and fail)."""
    local = local_host_towards(registry)
    if local == registry[0]:
        return tractor.open_root_actor(name=name, arbiter_addr=registry, loglevel=loglevel,
                                       debug_mode=debug_mode, enable_modules=enable_modules)
    return open_bound_root(name, registry, (local, 0), enable_modules=enable_modules, loglevel=loglevel)
