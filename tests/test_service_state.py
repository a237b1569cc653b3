"""No process-global state in the service layer (issue 8, item 3): every singleton is owned by
the running actor, so a new root actor (the next trio.run, e.g. the next test) starts clean
without anyone resetting globals by hand. (The package-wide checks are in test_structure.)"""
from __future__ import annotations

import pytest
import tractor
import trio

from piker_ems.service._auth import call
from piker_ems.data import _brokerd
from piker_ems.service import local_services, maybe_spawn_brokerd, open_pikerd
from piker_ems.service._state import actor_state, maybe_actor_state, spawn_lock


def test_state_belongs_to_the_actor_and_dies_with_it(reg_addr):
    """Services are visible only inside the actor that hosts them; outside a runtime there is
    no state at all; a spawn lock left held by a run that died does not block the next run."""
    assert maybe_actor_state() is None and local_services() is None

    async def dies_holding_a_lock():
        async with open_pikerd(reg_addr) as services:
            assert local_services() is services
            assert actor_state()['services'] is services
            spawn_lock('brokerd.sim').acquire_nowait()  # never released: this run "crashes"
            with pytest.raises(RuntimeError, match='not a brokerd'):
                _brokerd.FeedBus.current()

    trio.run(dies_holding_a_lock)
    assert local_services() is None

    async def next_run():
        async with open_pikerd(reg_addr) as services:
            assert local_services() is services
            assert not spawn_lock('brokerd.sim').locked()
            with trio.fail_after(15):
                async with maybe_spawn_brokerd('sim') as portal:
                    stats = await call(portal, 'piker_ems.data._brokerd', 'feed_stats')
            assert stats == {'active': {}, 'started': {}}
            assert tractor.current_actor().name == 'pikerd'

    trio.run(next_run)
