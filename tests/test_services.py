"""pikerd and its services: spawning, lookup, sharing, shutdown, embedding (SPEC §1)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import tractor
import trio

from _proc import (
    actor_pids, is_alive, parent_pid, port_open, start_pikerd, stop_hard, wait_gone, wait_until,
)
from piker_ems.service._auth import call
from piker_ems.testing import descendants
from piker_ems.data import open_feed
from piker_ems.service import (
    Services,
    find_service,
    list_registry,
    maybe_open_pikerd,
    maybe_spawn_brokerd,
    open_pikerd,
)


def names(registry: dict) -> list[str]:
    """Actor names (without uuids) in a registry table."""
    return sorted(key.rpartition('.')[0] for key in registry)


def test_pikerd_spawns_lists_and_cancels_brokerd(reg_addr):
    async def main():
        with trio.fail_after(15):
            async with open_pikerd(reg_addr) as services:
                actor = tractor.current_actor()
                assert actor.name == 'pikerd' and actor.is_arbiter
                assert port_open(reg_addr[1])
                assert services.list() == []

                async with maybe_spawn_brokerd('sim') as portal:
                    assert portal.channel.uid[0] == 'brokerd.sim'
                assert services.list() == ['brokerd.sim']
                assert names(await list_registry(reg_addr)) == ['brokerd.sim', 'pikerd']

                [pid] = actor_pids('brokerd.sim')
                assert parent_pid(pid) == os.getpid()

                assert await services.cancel_service('brokerd.sim') is True
                await trio.to_thread.run_sync(wait_gone, [pid], 5)
                assert services.list() == []
                assert names(await list_registry(reg_addr)) == ['pikerd']
                # cancelling something that does not run is a no-op, not an error
                assert await services.cancel_service('brokerd.sim') is False

    trio.run(main)
    assert not port_open(reg_addr[1])


def test_brokerd_crash_is_noticed_and_respawned(reg_addr):
    """A daemon that dies under pikerd is forgotten (and unregistered), so asking for it again
    spawns a fresh one instead of waiting forever on the dead one."""
    async def main():
        with trio.fail_after(15):
            async with open_pikerd(reg_addr) as services:
                async with maybe_spawn_brokerd('sim'):
                    pass
                [pid] = actor_pids('brokerd.sim')
                os.kill(pid, signal.SIGKILL)
                await trio.to_thread.run_sync(wait_gone, [pid], 5)
                with trio.fail_after(5):
                    while services.list():
                        await trio.sleep(0.05)
                assert names(await list_registry(reg_addr)) == ['pikerd']

                async with maybe_spawn_brokerd('sim') as portal:
                    assert await call(portal, 'piker_ems.data._brokerd', 'feed_stats') == {
                        'active': {}, 'started': {},
                    }
                [new_pid] = actor_pids('brokerd.sim')
                assert new_pid != pid
                assert services.list() == ['brokerd.sim']

    trio.run(main)


def test_maybe_open_pikerd_becomes_pikerd_when_none_runs(reg_addr):
    async def main():
        assert not port_open(reg_addr[1])
        with trio.fail_after(10):
            async with maybe_open_pikerd(reg_addr) as services:
                assert isinstance(services, Services)
                actor = tractor.current_actor()
                assert actor.name == 'pikerd' and actor.is_arbiter
                assert names(await list_registry(reg_addr)) == ['pikerd']

    trio.run(main)
    assert not port_open(reg_addr[1])


def test_concurrent_spawn_requests_spawn_one_brokerd(reg_addr):
    async def main():
        uids = []
        async with open_pikerd(reg_addr) as services:
            all_in = trio.Event()

            async def user():
                async with maybe_spawn_brokerd('sim') as portal:
                    uids.append(tuple(portal.channel.uid))
                    if len(uids) == 5:
                        all_in.set()
                    await all_in.wait()

            with trio.fail_after(15):
                async with trio.open_nursery() as n:
                    for _ in range(5):
                        n.start_soon(user)
            assert len(uids) == 5 and len(set(uids)) == 1
            assert services.list() == ['brokerd.sim']
            assert len(actor_pids('brokerd.sim')) == 1
            assert names(await list_registry(reg_addr)) == ['brokerd.sim', 'pikerd']

    trio.run(main)


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_remote_pikerd_serves_clients_and_stops_with_its_tree(reg_addr, tmp_path, sig):
    """pikerd in its own OS process: a client finds it, its feed makes pikerd spawn brokerd as
    pikerd's child, brokerd outlives the client, and any of SIGINT / SIGTERM / SIGKILL to
    pikerd leaves no process behind (SIGKILL: the children notice their parent died)."""
    pikerd = start_pikerd(reg_addr[1], tmp_path / 'pikerd.log')
    try:
        brokerd_uid = {}

        async def client():
            with trio.fail_after(15):
                async with maybe_open_pikerd(reg_addr, name='client') as services:
                    assert services is None  # a plain client of the remote daemon
                    actor = tractor.current_actor()
                    assert actor.name == 'client' and not actor.is_arbiter
                    async with open_feed('btcusd.sim') as feed:
                        packet = await feed.stream.receive()
                        assert 'btcusd.sim' in packet
                    async with find_service('brokerd.sim') as portal:
                        brokerd_uid['first'] = tuple(portal.channel.uid)

        trio.run(client)
        # the one brokerd is pikerd's child, not this client's
        [brokerd] = actor_pids('brokerd.sim')
        assert parent_pid(brokerd) == pikerd.pid

        async def second_client():
            # brokerd outlived the first client: same actor, still registered
            with trio.fail_after(10):
                async with maybe_open_pikerd(reg_addr, name='client2') as services:
                    assert services is None
                    async with find_service('brokerd.sim') as portal:
                        assert tuple(portal.channel.uid) == brokerd_uid['first']
                    assert names(await list_registry(reg_addr)) == ['brokerd.sim', 'client2', 'pikerd']

        trio.run(second_client)
        assert is_alive(brokerd)

        tree = descendants(pikerd.pid)
        assert brokerd in tree
        pikerd.send_signal(sig)
        pikerd.wait(timeout=5)
        wait_gone(tree, timeout=5)
        assert not port_open(reg_addr[1])
        if sig != signal.SIGKILL:
            assert pikerd.returncode is not None
    finally:
        stop_hard(pikerd)


def test_embedded_in_a_foreign_tree(reg_addr):
    """An app with its own root actor and no pikerd anywhere: open_feed starts an embedded
    pikerd child which spawns brokerd; leaving tears all of it down."""
    async def main():
        with trio.fail_after(20):
            async with tractor.open_root_actor(name='myapp', arbiter_addr=reg_addr, loglevel='critical'):
                async with open_feed('btcusd.sim') as feed:
                    assert feed.symbols['btcusd.sim'].tick_size > 0
                    packet = await feed.stream.receive()
                    assert packet['btcusd.sim']['bid'] < packet['btcusd.sim']['ask']
                    assert names(await list_registry(reg_addr)) == ['brokerd.sim', 'myapp', 'pikerd']
                    [pikerd] = actor_pids('pikerd')
                    [brokerd] = actor_pids('brokerd.sim')
                    assert parent_pid(pikerd) == os.getpid()
                    assert parent_pid(brokerd) == pikerd
                await trio.to_thread.run_sync(wait_gone, [pikerd, brokerd], 5)
                assert names(await list_registry(reg_addr)) == ['myapp']

    trio.run(main)
    wait_until(lambda: not descendants(os.getpid()), 5)


def test_daemon_survives_the_thread_that_spawned_it(reg_addr, tmp_path):
    """trio spawns subprocesses from a worker thread that exits when idle (10 s; 1.5 s here,
    still long after brokerd armed its parent-death watch). A daemon must die with pikerd's
    *process*, not with that thread (PR_SET_PDEATHSIG did: brokerd died 10 s after spawning)."""
    log = open(tmp_path / 'pikerd.log', 'wb')
    code = (
        'import trio._core._thread_cache as tc; tc.IDLE_TIMEOUT = 1.5\n'
        'from piker_ems.cli import pikerd\n'
        f'pikerd(["--port", "{reg_addr[1]}"])\n'
    )
    pikerd = subprocess.Popen(
        [sys.executable, '-c', code], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        start_new_session=True,
    )
    log.close()
    try:
        wait_until(lambda: port_open(reg_addr[1]), 10)

        async def spawn_brokerd():
            with trio.fail_after(10):
                async with maybe_open_pikerd(reg_addr, name='client'):
                    async with maybe_spawn_brokerd('sim'):
                        pass

        trio.run(spawn_brokerd)
        [brokerd] = actor_pids('brokerd.sim')
        # wait for pikerd's worker threads (the one that forked brokerd among them) to exit
        wait_until(lambda: len(os.listdir(f'/proc/{pikerd.pid}/task')) == 1, 5)

        async def use_brokerd():
            with trio.fail_after(10):
                async with maybe_open_pikerd(reg_addr, name='client'):
                    async with find_service('brokerd.sim') as portal:
                        assert portal is not None
                        await call(portal, 'piker_ems.data._brokerd', 'feed_stats')

        trio.run(use_brokerd)
        assert is_alive(brokerd)

        pikerd.send_signal(signal.SIGKILL)  # and it still dies with pikerd
        pikerd.wait(timeout=5)
        wait_gone([brokerd], 5)
    finally:
        stop_hard(pikerd)


def test_embedded_services_live_while_any_user_remains(reg_addr):
    """Two tasks of an embedding app share the embedded pikerd: the first one leaving must not
    tear down brokerd under the second one's feed."""
    async def main():
        with trio.fail_after(20):
            async with tractor.open_root_actor(name='myapp', arbiter_addr=reg_addr, loglevel='critical'):
                first_in, first_out, first_gone = trio.Event(), trio.Event(), trio.Event()

                async def first():
                    async with open_feed('btcusd.sim') as feed:
                        await feed.stream.receive()
                        first_in.set()
                        await first_out.wait()
                    first_gone.set()

                async with trio.open_nursery() as n:
                    n.start_soon(first)
                    await first_in.wait()
                    async with open_feed('ethusd.sim') as feed:
                        await feed.stream.receive()
                        [brokerd] = actor_pids('brokerd.sim')
                        first_out.set()
                        await first_gone.wait()
                        # the first user left: still the same brokerd, and quotes keep coming
                        with trio.fail_after(5):
                            for _ in range(10):
                                assert 'ethusd.sim' in await feed.stream.receive()
                        assert actor_pids('brokerd.sim') == [brokerd]
                await trio.to_thread.run_sync(wait_gone, [brokerd], 5)

    trio.run(main)
    wait_until(lambda: not descendants(os.getpid()), 5)
