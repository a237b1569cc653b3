"""Feeds (SPEC §2-3): one upstream per symbol shared by every actor, slow consumers isolated,
dead brokerds detected, and the seeded ``sim`` market."""
from __future__ import annotations

import math
import os
import signal

import pytest
import tractor
import trio

import feed_consumers
from _proc import actor_pids, wait_gone
from conftest import write_config
from piker_ems.service._auth import call
from piker_ems.testing import descendants
from piker_ems.brokers import NoBrokerBackend, available_backends, get_brokermod
from piker_ems.brokers.sim import SimConfig, SimMarket
from piker_ems.brokers.sim._market import sim_config
from piker_ems.data import FeedLost, open_feed
from piker_ems.service import find_service, list_registry, open_pikerd
from piker_ems.symbols import FqsnError, tick_digits

FQSN = 'btcusd.sim'


async def feed_stats() -> dict:
    async with find_service('brokerd.sim') as portal:
        assert portal is not None, 'brokerd.sim is not running'
        return await call(portal, 'piker_ems.data._brokerd', 'feed_stats')


class Consumer:
    """Drives one ``feed_consumers.consume`` context in a sub-actor from a task of its own."""

    def __init__(self, portal: tractor.Portal, **kwargs) -> None:
        self.portal = portal
        self.kwargs = kwargs
        self.ready = trio.Event()
        self.leave = trio.Event()
        self.done = trio.Event()
        self.stream = None
        self.final: dict | None = None
        self.symbol: dict | None = None

    async def run(self) -> None:
        async with self.portal.open_context(feed_consumers.consume, fqsn=FQSN, **self.kwargs) as (ctx, sym):
            self.symbol = sym
            async with ctx.open_stream() as stream:
                self.stream = stream
                self.ready.set()
                await self.leave.wait()
            self.final = await ctx.result()
        self.done.set()

    async def stats(self) -> dict:
        await self.stream.send('stats')
        return await self.stream.receive()

    async def exit(self) -> dict:
        self.leave.set()
        await self.done.wait()
        return self.final


async def start_consumers(an, n: trio.Nursery, specs: list[dict]) -> list[Consumer]:
    """Spawn one actor per spec and open all their feeds at the same time."""
    consumers = []
    for i, kwargs in enumerate(specs):
        portal = await an.start_actor(f'consumer{i}', enable_modules=['feed_consumers'])
        consumers.append(Consumer(portal, **kwargs))
    for c in consumers:
        n.start_soon(c.run)
    for c in consumers:
        await c.ready.wait()
    return consumers


async def wait_for_updates(consumers: list[Consumer], at_least: int, timeout: float = 5) -> list[dict]:
    with trio.fail_after(timeout):
        while True:
            stats = [await c.stats() for c in consumers]
            if all(s['updates'] >= at_least for s in stats):
                return stats
            await trio.sleep(0.05)


def test_one_upstream_shared_by_three_actors(reg_addr, config_dir):
    write_config(config_dir, '[sim]\nrate = 50\n')

    async def main():
        with trio.fail_after(20):
            async with open_pikerd(reg_addr) as services:
                async with tractor.open_nursery() as an, trio.open_nursery() as n:
                    consumers = await start_consumers(an, n, [{}, {}, {}])
                    assert all(c.symbol['key'] == 'btcusd' for c in consumers)

                    # three actors subscribed concurrently: one brokerd, one upstream
                    assert services.list() == ['brokerd.sim']
                    assert len(actor_pids('brokerd.sim')) == 1
                    assert await feed_stats() == {'active': {'btcusd': 3}, 'started': {'btcusd': 1}}

                    await wait_for_updates(consumers, 5)

                    expected_active = [2, 1]
                    for c, active in zip(consumers[:2], expected_active, strict=True):
                        final = await c.exit()
                        assert final['updates'] >= 5 and final['dropped'] == 0
                        assert await feed_stats() == {
                            'active': {'btcusd': active}, 'started': {'btcusd': 1},
                        }
                    await wait_for_updates(consumers[2:], 10)  # the last one still gets ticks
                    await consumers[2].exit()
                    # the last subscriber left: the upstream stopped (and was started once)
                    assert await feed_stats() == {'active': {}, 'started': {'btcusd': 1}}

                    # a new subscriber starts a fresh upstream
                    [again] = await start_consumers(an, n, [{}])
                    assert await feed_stats() == {'active': {'btcusd': 1}, 'started': {'btcusd': 2}}
                    await again.exit()
                    await an.cancel()

    trio.run(main)


def test_a_consumer_that_never_reads_does_not_slow_the_others(reg_addr, config_dir):
    rate = 50
    write_config(config_dir, f'[sim]\nrate = {rate}\n')

    async def main():
        with trio.fail_after(20):
            async with open_pikerd(reg_addr):
                async with tractor.open_nursery() as an, trio.open_nursery() as n:
                    fast1, fast2, slow = await start_consumers(
                        an, n, [{}, {}, {'read': False, 'bufsize': 4}],
                    )
                    await wait_for_updates([fast1, fast2], 5)
                    before = [await c.stats() for c in (fast1, fast2, slow)]
                    t0 = trio.current_time()
                    await trio.sleep(2.0)  # the measurement window
                    after = [await c.stats() for c in (fast1, fast2, slow)]
                    window = trio.current_time() - t0

                    nominal = rate * window
                    for b, a in zip(before[:2], after[:2], strict=True):
                        got = a['updates'] - b['updates']
                        assert 0.6 * nominal <= got <= 1.2 * nominal + 2, (got, nominal)
                        assert a['dropped'] == 0
                    # the slow one's buffer (4) overflowed long ago: its losses are counted
                    assert after[2]['updates'] == 0
                    assert after[2]['dropped'] - before[2]['dropped'] >= 0.5 * nominal
                    assert (await feed_stats())['active'] == {'btcusd': 3}

                    for c in (fast1, fast2, slow):
                        await c.exit()
                    await an.cancel()

    trio.run(main)


def test_a_killed_consumer_actor_releases_its_subscription(reg_addr, config_dir):
    """A subscriber process that dies without saying goodbye (SIGKILL) must not keep the
    upstream alive forever: brokerd notices on its next send and drops it."""
    write_config(config_dir, '[sim]\nrate = 50\n')

    async def main():
        with trio.fail_after(20):
            async with open_pikerd(reg_addr):
                async with tractor.open_nursery() as an:
                    async with trio.open_nursery() as n:
                        doomed, survivor = await start_consumers(an, n, [{}, {}])
                        assert (await feed_stats())['active'] == {'btcusd': 2}
                        [pid] = actor_pids('consumer0')
                        os.kill(pid, signal.SIGKILL)
                        with trio.fail_after(5):
                            while (await feed_stats())['active'] != {'btcusd': 1}:
                                await trio.sleep(0.05)
                        before = (await survivor.stats())['updates']
                        await wait_for_updates([survivor], before + 10)
                        await survivor.exit()
                        assert await feed_stats() == {'active': {}, 'started': {'btcusd': 1}}
                        n.cancel_scope.cancel()  # the dead consumer's context never ends by itself
                    await an.cancel()

    trio.run(main)


def test_feed_lost_when_brokerd_dies_then_reopened(reg_addr, config_dir):
    write_config(config_dir, '[sim]\nrate = 50\n')

    async def main():
        with trio.fail_after(20):
            async with open_pikerd(reg_addr) as services:
                async with open_feed(FQSN) as feed:
                    await feed.stream.receive()
                    [brokerd] = actor_pids('brokerd.sim')
                    os.kill(brokerd, signal.SIGKILL)
                    t0 = trio.current_time()
                    with trio.fail_after(6):
                        with pytest.raises(FeedLost, match='brokerd.sim'):
                            while True:
                                await feed.stream.receive()
                    lost_after = trio.current_time() - t0
                    assert lost_after < 5
                    # async iteration reports the loss too (instead of ending quietly)
                    with pytest.raises(FeedLost):
                        async for _ in feed.stream:
                            pass
                await trio.to_thread.run_sync(wait_gone, [brokerd], 5)

                # asking again spawns a fresh brokerd and quotes flow
                async with open_feed(FQSN) as feed:
                    packet = await feed.stream.receive()
                    assert FQSN in packet
                    [new] = actor_pids('brokerd.sim')
                    assert new != brokerd
                    assert services.list() == ['brokerd.sim']

    trio.run(main)


def test_consumer_leaving_with_an_error_releases_its_subscription(reg_addr):
    async def main():
        with trio.fail_after(15):
            async with open_pikerd(reg_addr):
                with pytest.raises(KeyError):
                    async with open_feed(FQSN) as feed:
                        await feed.stream.receive()
                        assert (await feed_stats())['active'] == {'btcusd': 1}
                        raise KeyError('consumer bug')
                with trio.fail_after(3):
                    while (await feed_stats())['active']:
                        await trio.sleep(0.05)

    trio.run(main)


# --- unknown brokers and bad symbols -------------------------------------------------------

@pytest.mark.parametrize('name', ['doggy', '', '_private', 'sim.x', '../sim'])
def test_get_brokermod_unknown_lists_available(name):
    with pytest.raises(NoBrokerBackend) as err:
        get_brokermod(name)
    msg = str(err.value)
    assert f'no broker backend named {name!r}' in msg
    assert 'available: ' in msg and 'sim' in msg.split('available: ')[1]
    assert get_brokermod('sim').name == 'sim'
    assert 'sim' in available_backends()


@pytest.mark.parametrize('host', ['pikerd', 'foreign_tree'])
@pytest.mark.parametrize('fqsn, exc', [('x.doggy', NoBrokerBackend), ('btcusd', FqsnError)])
def test_open_feed_bad_symbol_fails_cleanly(reg_addr, host, fqsn, exc):
    async def main():
        with trio.fail_after(10):
            if host == 'pikerd':
                async with open_pikerd(reg_addr) as services:
                    with pytest.raises(exc):
                        async with open_feed(fqsn):
                            pass
                    assert services.list() == []
                    assert not descendants(os.getpid())
            else:
                async with tractor.open_root_actor(name='myapp', arbiter_addr=reg_addr, loglevel='critical'):
                    with pytest.raises(exc):
                        async with open_feed(fqsn):
                            pass
                    assert not descendants(os.getpid())  # not even an embedded pikerd
                    assert [k.rpartition('.')[0] for k in await list_registry(reg_addr)] == ['myapp']

    trio.run(main)


# --- the sim market (unit level, no actors) -------------------------------------------------

def steps(market: SimMarket, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        q = market.step()
        q.pop('time')
        out.append(q)
    return out


def test_sim_same_seed_same_sequence_different_seed_differs():
    a = steps(SimMarket('btcusd', SimConfig(seed=3)), 300)
    b = steps(SimMarket('btcusd', SimConfig(seed=3)), 300)
    c = steps(SimMarket('btcusd', SimConfig(seed=4)), 300)
    d = steps(SimMarket('ethusd', SimConfig(seed=3)), 300)
    assert a == b
    assert a != c
    assert a != d
    assert any(t['type'] == 'trade' for q in a for t in q['ticks'])


@pytest.mark.parametrize('tick', [0.25, 0.01, 0.5, 0.001])
def test_sim_prices_on_grid_spread_whole_ticks_trades_at_touch(tick):
    market = SimMarket('es', SimConfig(seed=11, tick_size=tick, start_price=4321.0, max_spread=3))
    digits = tick_digits(tick)
    trades = 0
    spreads = set()
    for q in steps(market, 2000):
        prices = [q['bid'], q['ask'], q['last'], *(t['price'] for t in q['ticks'])]
        for p in prices:
            assert math.isclose(p / tick, round(p / tick), abs_tol=1e-6), (p, tick)
            assert round(p, digits) == p, p
        assert q['bid'] < q['ask']
        spread = (q['ask'] - q['bid']) / tick
        assert math.isclose(spread, round(spread), abs_tol=1e-6) and round(spread) >= 1
        spreads.add(round(spread))
        types = [t['type'] for t in q['ticks']]
        assert types[:2] == ['bid', 'ask']
        for t in q['ticks']:
            if t['type'] == 'trade':
                trades += 1
                assert t['price'] in (q['bid'], q['ask'])
                assert t['price'] == q['last'] and t['size'] == q['size'] > 0
    assert trades > 100
    assert spreads == {1, 2, 3}


def test_sim_config_from_toml(config_dir):
    write_config(config_dir, (
        '[sim]\nseed = 7\nrate = 40\ntick_size = 0.25\n'
        '[sim.symbols.ethusd]\ntick_size = 0.01\nrate = 5\n'
    ))
    cfg = sim_config('btcusd')
    assert (cfg.seed, cfg.rate, cfg.tick_size) == (7, 40, 0.25)
    eth = sim_config('ethusd')
    assert (eth.seed, eth.rate, eth.tick_size) == (7, 5, 0.01)
    assert steps(SimMarket('btcusd', cfg), 50) == steps(SimMarket('btcusd', sim_config('btcusd')), 50)
    assert steps(SimMarket('btcusd', cfg), 50) != steps(SimMarket('btcusd', SimConfig(seed=8, tick_size=0.25)), 50)


@pytest.mark.parametrize('bad', ['rate = 0', 'tick_size = -1', 'max_spread = 0'])
def test_sim_config_rejects_nonsense(config_dir, bad):
    write_config(config_dir, f'[sim]\n{bad}\n')
    with pytest.raises(ValueError):
        sim_config('btcusd')


def count_bids(ticks: list[dict]) -> int:
    """Upstream updates in a tick list (each sim step has exactly one bid tick)."""
    return sum(1 for t in ticks if t['type'] == 'bid')


def test_sim_feed_honours_config_end_to_end(reg_addr, config_dir):
    """brokerd.sim streams exactly the seeded sequence, on the configured grid, at the rate."""
    rate = 80  # 4x the default, so "honoured" is unambiguous
    write_config(config_dir, f'[sim]\nseed = 7\nrate = {rate}\ntick_size = 0.25\n')
    local = SimMarket('btcusd', sim_config('btcusd'))
    expected_first = local.quote()
    expected_ticks = [t for q in steps(local, 400) for t in q['ticks']]

    async def main():
        with trio.fail_after(15):
            async with open_pikerd(reg_addr):
                async with open_feed(FQSN) as feed:
                    assert feed.symbols[FQSN].tick_size == 0.25
                    first = dict(feed.first_quotes[FQSN])
                    assert {k: first[k] for k in ('bid', 'ask', 'last')} == {
                        k: expected_first[k] for k in ('bid', 'ask', 'last')
                    }
                    ticks = list((await feed.stream.receive())[FQSN]['ticks'])
                    t0, first_updates = trio.current_time(), count_bids(ticks)
                    async for packet in feed.stream:
                        ticks.extend(packet[FQSN]['ticks'])
                        if count_bids(ticks) >= 120:
                            break
                    elapsed = trio.current_time() - t0
        return ticks, count_bids(ticks) - first_updates, elapsed

    ticks, updates, elapsed = trio.run(main)
    # we were the upstream's first subscriber: we saw the seeded sequence from its first step
    assert ticks == expected_ticks[:len(ticks)]
    assert all((t['price'] / 0.25).is_integer() for t in ticks)
    measured = updates / elapsed
    assert 0.5 * rate <= measured <= 1.5 * rate, measured
