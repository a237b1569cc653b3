"""Several hosts on one machine: the loopback range is all local on Linux, so pikerd listens on
127.0.0.1, ``piker serve paperboi.sim`` on 127.0.0.2 and ``piker serve brokerd.sim`` on
127.0.0.3, each in its own process group and its own config dir (its own "host": a copy of
the cluster secret, its own journals), and the clients run in other processes.

Orders must flow through the served services (their own counters say so, and pikerd's tree
holds no paperboi or brokerd of its own); ``piker services`` lists each at its address; after a
``kill -9`` of the served paper engine its owners are told, new orders to it fail clearly, and
once it is served again orders flow again, with the same emsd.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import trio

from piker_ems.clearing import open_ems
from piker_ems.data import open_feed
from piker_ems.service import maybe_open_pikerd
from piker_ems.service._auth import add_participant, credential_for, refusal, use_credential

from _ems_helpers import SIM_CALM, collect_until, rpc
from _proc import actor_pids, cli, json_lines, run_cli, script, start_daemon, start_pikerd, stop_hard, wait_until
from conftest import write_config

RPC_S = 15.0       # bound on one RPC or one status (loaded 2-core machine)
RECOVER_S = 40.0   # bound on a lost venue being noticed / coming back
PAPER_HOST, BROKER_HOST = '127.0.0.2', '127.0.0.3'


def make_host(tmp_path: Path, name: str, pikerd_config: Path) -> tuple[Path, Path]:
    """A config dir for another "host", with the cluster secret copied as a user would
    (``install -m 600``): returns (config dir, secret file)."""
    home = tmp_path / name
    home.mkdir()
    secret = home / 'cluster.secret.copy'
    secret.write_bytes((pikerd_config / 'cluster.secret').read_bytes())
    os.chmod(secret, 0o600)
    write_config(home, SIM_CALM)
    return home, secret


def start_serve(name: str, host: str, port: int, home: Path, secret: Path, log: Path,
                timeout: float = 30.0) -> subprocess.Popen:
    """``piker serve NAME --host HOST`` in its own session; returns once it says it serves
    (its stderr line ``NAME served at HOST:PORT``)."""
    env = {**os.environ, 'PIKER_EMS_CONFIG_DIR': str(home)}
    env.pop('PIKER_EMS_SECRET_FILE', None)
    return start_daemon(
        [script('piker'), 'serve', name, '--host', host, '--registry', f'127.0.0.1:{port}',
         '--secret-file', str(secret), '--loglevel', 'info'],
        log, lambda: f'{name} served at {host}:' in log.read_text(), timeout, f'piker serve {name}', env)


def by_name(port: int) -> dict[str, list[tuple[str, str]]]:
    proc = cli(port, 'services', '--json')
    assert proc.returncode == 0, proc.stderr
    out: dict[str, list[tuple[str, str]]] = {}
    for key, v in json.loads(proc.stdout).items():
        out.setdefault(key.rpartition('.')[0], []).append((v['addr'], v['kind']))
    return out


async def paper_stats() -> dict:
    with trio.fail_after(RPC_S):
        return await rpc('paperboi.sim', 'piker_ems.clearing._paper', 'paper_stats', broker='sim')


async def exchange_stats() -> dict:
    with trio.fail_after(RPC_S):
        return await rpc('brokerd.sim', 'piker_ems.brokers.sim', 'exchange_stats')


def test_orders_flow_through_served_services_and_survive_a_kill(reg_addr, config_dir, tmp_path):
    port = reg_addr[1]
    write_config(config_dir, SIM_CALM)
    pikerd = start_pikerd(port, tmp_path / 'pikerd.log')
    wait_until((config_dir / 'cluster.secret').exists, 10, msg='pikerd made no cluster secret')
    serves: dict[str, subprocess.Popen] = {}
    bob = add_participant('bob', ['trade'])  # on the pikerd host only
    try:
        paper_home, paper_secret = make_host(tmp_path, 'host-b', config_dir)
        broker_home, broker_secret = make_host(tmp_path, 'host-c', config_dir)
        serves['paper'] = start_serve('paperboi.sim', PAPER_HOST, port, paper_home, paper_secret,
                                      tmp_path / 'paper-0.log')
        serves['broker'] = start_serve('brokerd.sim', BROKER_HOST, port, broker_home, broker_secret,
                                       tmp_path / 'broker.log')

        listed = by_name(port)
        [(addr, kind)] = listed['paperboi.sim']
        assert addr.startswith(f'{PAPER_HOST}:') and kind == 'served'
        [(addr, kind)] = listed['brokerd.sim']
        assert addr.startswith(f'{BROKER_HOST}:') and kind == 'served'
        assert listed['pikerd'] == [(f'127.0.0.1:{port}', 'pikerd')]

        # a paper order and a live order, each placed by a CLI process
        paper = cli(port, 'order', 'buy', 'btcusd.sim', '--price', '200', '--size', '1', '--mode', 'live',
                    '--json', timeout=60)
        assert paper.returncode == 0, paper.stdout + paper.stderr
        paper_oid = json_lines(paper.stdout)[-1]['oid']
        assert json_lines(paper.stdout)[-1]['resp'] == 'broker_executed'
        live = cli(port, 'order', 'buy', 'btcusd.sim', '--price', '200', '--size', '1', '--mode', 'live',
                   '--account', 'acct1', '--json', timeout=60)
        assert live.returncode == 0, live.stdout + live.stderr
        live_oid = json_lines(live.stdout)[-1]['oid']

        # the venues that traded were the served ones; pikerd's tree has neither of its own
        assert not actor_pids('paperboi.sim', pikerd.pid) and not actor_pids('brokerd.sim', pikerd.pid)

        async def through_served() -> None:
            async with maybe_open_pikerd(reg_addr, name='test.stats'):
                stats = await paper_stats()
                assert [r['oid'] for r in stats['requests']] == [paper_oid]
                assert stats['executions'] == 1
                ex = await exchange_stats()
                assert live_oid in {r['oid'] for r in ex['requests']}
                assert ex['executions'] == 1
                # the served brokerd knows pikerd's participants (its own host has none)
                with use_credential(credential_for('bob', bob)):
                    async with open_feed('btcusd.sim') as feed:
                        assert feed.first_quotes['btcusd.sim']['last'] > 0
                with use_credential(credential_for('bob', 'not-the-token')), pytest.raises(BaseException) as err:
                    async with open_feed('btcusd.sim'):
                        pass
                assert "wrong token for participant 'bob'" in str(refusal(err.value))

        trio.run(through_served)

        [emsd] = actor_pids('emsd', pikerd.pid)

        # kill -9 the served paper engine while an owner has an order resting there
        async def kill_and_come_back() -> None:
            async with maybe_open_pikerd(reg_addr, name='test.owner'):
                async with open_ems('btcusd.sim', mode='paper', name='owner') as (book, trades, _):
                    resting = book.send('buy', 100.0, 1)  # rests: far below the market, inside the default price band
                    await collect_until(trades, {'broker_submitted'}, resting, timeout=RPC_S)
                    await trio.to_thread.run_sync(stop_hard, serves.pop('paper'))
                    told = await collect_until(trades, {'broker_disconnected'}, resting, timeout=RECOVER_S)
                    assert [s.resp for s in told][-1:] == ['broker_disconnected'], told
                    assert 'paperboi.sim' in told[-1].reason or 'sim.paper' in told[-1].reason

                    # orders to it now fail, saying why
                    # (blocking calls run in a thread: this process's own emsd session must
                    # keep reading its heartbeats)
                    late = await trio.to_thread.run_sync(lambda: cli(
                        port, 'order', 'buy', 'btcusd.sim', '--price', '200', '--size', '1', '--mode', 'live',
                        timeout=60))
                    assert late.returncode == 1, late.stdout + late.stderr
                    assert 'paperboi.sim is down since' in late.stdout, late.stdout
                    assert 'Unavailable' not in late.stdout and 'Error' not in late.stdout, late.stdout
                    assert 'broker_executed' not in late.stdout
                    assert not actor_pids('paperboi.sim', pikerd.pid)  # not replaced (default)
                    [(addr, kind)] = (await trio.to_thread.run_sync(by_name, port))['paperboi.sim']  # known, down
                    assert addr.startswith(f'{PAPER_HOST}:') and kind.startswith('served,down(since ')

                    # served again (same host, same journal): emsd reconnects by itself
                    serves['paper'] = await trio.to_thread.run_sync(
                        start_serve, 'paperboi.sim', PAPER_HOST, port, paper_home, paper_secret,
                        tmp_path / 'paper-1.log')
                    again = book.send('buy', 200.0, 1)
                    done = await collect_until(trades, {'broker_executed', 'broker_errored', 'error'}, again,
                                               timeout=RECOVER_S)
                    assert done[-1].resp == 'broker_executed', done
                    stats = await paper_stats()  # the new process's own counters
                    assert again in {r['oid'] for r in stats['requests']}
                    assert resting in {o['oid'] for o in stats['open_orders']}  # restored from its journal
                    book.cancel(resting)
                    cancelled = await collect_until(trades, {'broker_cancelled', 'error'}, resting,
                                                    timeout=RPC_S)
                    assert cancelled[-1].resp == 'broker_cancelled'

        trio.run(kill_and_come_back)
        assert not actor_pids('paperboi.sim', pikerd.pid)

        # the same for the served brokerd: orders fail in one line while it is down
        # (pikerd does not start a brokerd.sim of its own), and trades again once it is back
        stop_hard(serves.pop('broker'))
        wait_until(lambda: by_name(port)['brokerd.sim'][0][1].startswith('served,down'), RECOVER_S,
                   interval=0.5, msg='pikerd did not notice the served brokerd.sim died')
        late = cli(port, 'order', 'buy', 'btcusd.sim', '--price', '200', '--size', '1', '--mode', 'live',
                   '--account', 'acct1', timeout=60)
        assert late.returncode == 1, late.stdout + late.stderr
        # (emsd has no quotes for the symbol either: the order is refused at connect)
        # one clean line: the service, that it is down and since when (no exception class names)
        [line] = (late.stdout + late.stderr).splitlines()
        assert re.match(r'error: brokerd\.sim is down since \d\d:\d\d:\d\d \(.+\): it was started '
                        rf'remotely \(piker serve, last at {re.escape(BROKER_HOST)}:\d+\); start it again there', line), line
        assert 'Error' not in line and 'in a service' not in line, line
        assert not actor_pids('brokerd.sim', pikerd.pid)
        serves['broker'] = start_serve('brokerd.sim', BROKER_HOST, port, broker_home, broker_secret,
                                       tmp_path / 'broker-1.log')
        again = cli(port, 'order', 'buy', 'btcusd.sim', '--price', '200', '--size', '1', '--mode', 'live',
                    '--account', 'acct1', '--json', timeout=60)
        assert again.returncode == 0, again.stdout + again.stderr
        assert json_lines(again.stdout)[-1]['resp'] == 'broker_executed'
        assert actor_pids('emsd', pikerd.pid) == [emsd]  # the same emsd throughout

        # an orderly stop retires the served service: pikerd forgets it (it may start its own)
        stopping = serves.pop('paper')
        stopping.send_signal(signal.SIGTERM)
        assert stopping.wait(timeout=20) == 0
        wait_until(lambda: 'paperboi.sim' not in by_name(port), RECOVER_S, interval=0.5,
                   msg='pikerd still lists the retired paperboi.sim')
    finally:
        for proc in serves.values():
            stop_hard(proc)
        stop_hard(pikerd)


@pytest.mark.parametrize('args, says', [
    (['serve', 'foo'], "no service named 'foo'"),
    (['serve', 'paperboi.nope'], "no broker backend named 'nope'"),
    (['serve', 'brokerd.sim', '--host', '192.0.2.7'], 'not a loopback address: add --allow-remote'),
    (['serve', 'brokerd.sim', '--host', '0.0.0.0'], 'bind one address'),
    (['serve', 'brokerd.sim', '--registry', 'x:y'], '--registry: bad registry address'),
])
def test_serve_usage_errors_are_one_line(args, says):
    proc = run_cli(*args)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith('error: ') and says in line, proc.stderr


def test_serve_without_secret_or_pikerd_says_so(reg_addr, tmp_path):
    missing = tmp_path / 'nope.secret'
    proc = run_cli('serve', 'paperboi.sim', '--registry', f'127.0.0.1:{reg_addr[1]}', '--secret-file', str(missing))
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert line == f'error: no cluster secret at {missing}: copy cluster.secret from the pikerd host ' \
                   f'(mode 0600, see README "Several machines") and give --secret-file'
    assert not missing.exists()  # piker serve never makes a secret of its own
    secret = tmp_path / 'ok.secret'
    secret.write_text('ab' * 32)
    secret.chmod(0o600)
    proc = run_cli('serve', 'paperboi.sim', '--registry', f'127.0.0.1:{reg_addr[1]}', '--secret-file', str(secret))
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert line == f'error: no pikerd running at 127.0.0.1:{reg_addr[1]} (start pikerd first, or give --registry HOST:PORT)'


def test_replacing_a_served_service_is_a_setting(config_dir):
    """pikerd's rule (no actors needed): a served service is never doubled while it is up, and
    not replaced while it is down unless ``[services] replace_remote`` says so."""
    from piker_ems.service._daemon import Served, Services

    services = Services(None, None, registry=('127.0.0.1', 1))
    assert services.replacement_refused('paperboi.sim') is None  # never served: pikerd's own
    services.served['paperboi.sim'] = Served('paperboi.sim', ('paperboi.sim', 'u'), ('127.0.0.2', 7001))
    assert 'is served from 127.0.0.2:7001' in services.replacement_refused('paperboi.sim')
    services.served['paperboi.sim'].up = False
    assert services.replacement_refused('paperboi.sim').startswith('paperboi.sim is down since ')
    write_config(config_dir, '[services]\nreplace_remote = ["brokerd.sim"]\n')
    assert 'was started remotely' in services.replacement_refused('paperboi.sim')
    write_config(config_dir, '[services]\nreplace_remote = ["paperboi.sim"]\n')
    assert services.replacement_refused('paperboi.sim') is None
    write_config(config_dir, '[services]\nreplace_remote = true\n')
    assert services.replacement_refused('paperboi.sim') is None


def test_a_service_down_crosses_actors_as_its_one_line():
    """pikerd's :class:`ServiceDown` reaches a client as a RemoteActorError naming its type:
    it is rebuilt as the local exception with its line, which the CLI prints as is."""
    import tractor

    from piker_ems.cli._common import _known_errors
    from piker_ems.service._specs import PikerdError, ServiceDown, remote_error

    line = 'brokerd.sim is down since 04:01:02 (silent for 3s): it was started remotely (piker serve, last at 127.0.0.3:4001)'
    remote = tractor.RemoteActorError(
        'remote', suberror_type=None, type_str='ServiceDown',
        tb_str=f'Traceback (most recent call last):\n  ...\npiker_ems.service._specs.ServiceDown: {line}\n')
    found = remote_error(BaseExceptionGroup('x', [RuntimeError('other'), remote]), ServiceDown, PikerdError)
    assert type(found) is ServiceDown and str(found) == line
    assert isinstance(found, _known_errors())  # the CLI prints 'error: <line>'
    assert remote_error(RuntimeError('other'), ServiceDown) is None
