"""Per-actor state: the objects an actor's service task owns, reachable from its RPC endpoints.

tractor runs each RPC (a client's context, a stats call) in its own task, so an endpoint cannot
be handed the objects of the service task that owns them. They are kept on the actor itself
(not in a module global or a class attribute): they live and die with that actor, and a test
that opens a new root actor starts with nothing to reset.
"""
from __future__ import annotations

from typing import Any

import tractor

_ATTR = '_piker_ems_state'


def actor_state() -> dict[str, Any]:
    """This actor's state dict (created empty on first use)."""
    actor = tractor.current_actor()
    state = actor.__dict__.get(_ATTR)
    if state is None:
        state = {}
        setattr(actor, _ATTR, state)
    return state
