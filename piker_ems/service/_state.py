"""Per-actor state: objects owned by the running tractor actor instead of module globals.

tractor 0.1.0a5's ``Actor`` has no slot for application state, so we keep one dict on the
actor instance. It lives exactly as long as that actor: a new ``trio.run`` (a new root actor,
e.g. the next test in the same process) starts from an empty state, and nothing has to be
reset by hand.

Keys used here (each set and cleared by the service task / context manager that owns it):

- ``'services'``: pikerd's :class:`~piker_ems.service._daemon.Services` when this actor is
  (or embeds) pikerd;
- ``'embedded_pikerd'``: the :class:`~piker_ems.service._cache.SharedCache` holding a pikerd
  child this actor started for an embedding app;
- ``'spawn_locks'``: per-service-name locks of :func:`~piker_ems.service.maybe_spawn_daemon`;
- ``'feed_bus'``: brokerd's :class:`~piker_ems.data._brokerd.FeedBus`;
- ``'router'``: emsd's :class:`~piker_ems.clearing._router.Router`;
- venue state made with :func:`owned`: the paper engine of a broker, the sim backend's markets
  and exchange (they outlive one ``trades_dialogue``, as at a real broker).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

import tractor
import trio

_ATTR = '_piker_ems_state'
T = TypeVar('T')


def actor_state(actor: Any = None) -> dict[str, Any]:
    """The state dict of ``actor`` (default: the running actor; raises if there is none)."""
    actor = actor or tractor.current_actor()
    state = actor.__dict__.get(_ATTR)
    if state is None:
        state = actor.__dict__[_ATTR] = {}
    return state


def maybe_actor_state() -> dict[str, Any] | None:
    """The running actor's state dict, or ``None`` outside a tractor runtime."""
    actor = tractor.current_actor(err_on_no_runtime=False)
    return None if actor is None else actor_state(actor)


def spawn_lock(name: str) -> trio.Lock:
    """This actor's lock for spawning service ``name`` (concurrent callers spawn it once)."""
    locks = actor_state().setdefault('spawn_locks', defaultdict(trio.Lock))
    return locks[name]


def owned(key: str, factory: Callable[[], T], actor: Any = None) -> T:
    """The object under ``key`` in the actor's state, made by ``factory()`` on first use."""
    state = actor_state(actor)
    obj = state.get(key)
    if obj is None:
        obj = state[key] = factory()
    return obj
