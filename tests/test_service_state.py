"""No process-global state in the service layer (issue 8, item 3) and no import cycle through
it: every singleton is owned by the running actor, so a new root actor (the next trio.run,
e.g. the next test) starts clean without anyone resetting globals by hand."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tractor
import trio

from piker_ems.data import _brokerd
from piker_ems.service import _daemon, _spawn, local_services, maybe_spawn_brokerd, open_pikerd
from piker_ems.service._state import actor_state, maybe_actor_state, spawn_lock

ROOT = Path(__file__).resolve().parent.parent


def test_service_and_data_modules_are_in_no_import_cycle():
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tests' / '_import_cycles.py')],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    cycles = [line for line in proc.stdout.splitlines() if line.startswith('CYCLE:')]
    ours = [c for c in cycles if 'piker_ems.service' in c or 'piker_ems.data' in c]
    assert not ours, '\n'.join(ours)


def test_no_class_level_singletons_left():
    assert not hasattr(_spawn, '_SpawnLocks')
    assert not hasattr(_daemon, '_Local') and not hasattr(_daemon, '_Embedded')
    assert '_current' not in vars(_brokerd.FeedBus)


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
                    stats = await portal.run_from_ns('piker_ems.data._brokerd', 'feed_stats')
            assert stats == {'active': {}, 'started': {}}
            assert tractor.current_actor().name == 'pikerd'

    trio.run(next_run)
