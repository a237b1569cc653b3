# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
State owned by the actor that runs it, instead of class-level singletons or module globals.

A venue (the paper engine of a broker, the sim backend's markets and exchange) must outlive one
``trades_dialogue`` (resting orders and positions survive a client leaving, as at a real
broker) and be one per actor. It is therefore kept on the running ``tractor`` Actor instance, in
a per-actor dict, created by whichever endpoint needs it first. It dies with the actor, so a new
actor (or a test's new root actor) always starts clean and nothing has to be reset by hand.

tractor 0.1.0a5 has no per-actor user dict (older releases had ``statespace``; newer ones
may add one), so :func:`actor_state` uses the instance's ``statespace`` attribute if it exists
and creates it otherwise.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import tractor

__all__ = ['actor_state', 'owned']

T = TypeVar('T')

_ATTR = 'statespace'


def actor_state(actor: Any | None = None) -> dict[str, Any]:
    """The per-actor state dict of ``actor`` (default: the running actor).

    Raises ``tractor``'s ``NoRuntime`` outside an actor: venue state has no owner there.
    """
    if actor is None:
        actor = tractor.current_actor()
    space = getattr(actor, _ATTR, None)
    if not isinstance(space, dict):
        space = {}
        setattr(actor, _ATTR, space)
    return space


def owned(key: str, factory: Callable[[], T], actor: Any | None = None) -> T:
    """The object stored under ``key`` in the actor's state, made by ``factory()`` on first use."""
    space = actor_state(actor)
    obj = space.get(key)
    if obj is None:
        obj = space[key] = factory()
    return obj
