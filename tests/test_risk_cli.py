"""Risk controls as a user meets them (issue 14): a real ``pikerd`` process and the ``piker`` CLI.

The price band refuses a fat-fingered live order in one line; ``piker halt`` cancels resting
orders of every kind and refuses new ones, survives a ``kill -9`` of emsd, and ``piker resume``
re-enables trading; only an ``admin`` participant may change the state.
"""
from __future__ import annotations

import json
import os
import signal

import pytest

from _ems_helpers import SIM_CALM
from _proc import actor_pids, cli, cli_running, json_lines, pikerd_process, run_cli, wait_gone
from conftest import write_config

RISK = """
[risk]
price_band_pct = 20
"""


@pytest.fixture
def pikerd(reg_addr, tmp_path, config_dir):
    write_config(config_dir, SIM_CALM + RISK)
    with pikerd_process(reg_addr[1], tmp_path / 'pikerd.log') as proc:
        yield reg_addr[1], proc


@pytest.fixture
def newcomer(reg_addr, tmp_path, config_dir):
    """A pikerd with no [risk] table at all (only the calm sim market)."""
    write_config(config_dir, SIM_CALM)
    with pikerd_process(reg_addr[1], tmp_path / 'pikerd.log') as proc:
        yield reg_addr[1], proc


def last_price(port: int) -> float:
    return json_lines(cli(port, 'quote', 'btcusd.sim', '--count', '1', '--json').stdout)[0]['last']


def refused_line(port: int, price: float) -> str:
    """``piker order buy`` live at ``price``, refused: its one output line (exit 1, no traceback)."""
    out = cli(port, 'order', 'buy', 'btcusd.sim', '--price', f'{price:.2f}', '--size', '1', '--mode', 'live')
    assert out.returncode == 1 and 'Traceback' not in out.stderr, out
    [line] = out.stdout.strip().splitlines()
    assert ' error ' in line, line
    return line


def resting_live(port: int, action: str, price: float) -> str:
    """A live order of size 1 at ``price`` the venue accepted (``broker_submitted``): its oid."""
    ok = cli(port, 'order', action, 'btcusd.sim', '--price', f'{price:.2f}', '--size', '1',
             '--mode', 'live', '--detach', '--json')
    assert ok.returncode == 0 and json_lines(ok.stdout)[-1]['resp'] == 'broker_submitted', ok.stdout
    return json_lines(ok.stdout)[-1]['oid']


def test_price_band_refuses_a_fat_finger_in_one_line(pikerd):
    port, _ = pikerd
    last = last_price(port)
    line = refused_line(port, last * 2)
    assert 'risk: price_band_pct 20' in line, line
    resting_live(port, 'buy', last * 0.9)


def test_halt_cancels_refuses_survives_kill_9_of_emsd_and_resume(pikerd):
    port, proc = pikerd
    last = last_price(port)
    placed = []
    for args in (('buy', '--price', f'{last * 0.9:.2f}', '--size', '1', '--mode', 'live'),   # paper, resting
                 ('buy', '--price', f'{last * 0.9:.2f}', '--size', '1', '--mode', 'live', '--account', 'acct1'),
                 ('buy', '--price', f'{last * 0.5:.2f}', '--size', '1'),                  # dark
                 ('alert', '--price', f'{last * 0.5:.2f}')):
        out = cli(port, 'order', args[0], 'btcusd.sim', *args[1:], '--detach', '--json')
        assert out.returncode == 0, out.stderr
        placed.append(json_lines(out.stdout)[-1]['oid'])

    halted = cli(port, 'halt', '--json')
    assert halted.returncode == 0, halted.stderr
    assert json_lines(halted.stdout)[0]['cancelled'] == 3  # alerts stay without --alerts
    for oid in placed[:3]:  # each one is closed now
        again = cli(port, 'cancel', oid)
        assert again.returncode == 1 and 'already closed' in again.stdout + again.stderr, again.stdout
    refused = cli(port, 'order', 'buy', 'btcusd.sim', '--price', f'{last * 0.9:.2f}', '--size', '1', '--mode', 'live')
    assert refused.returncode == 1 and 'risk: trading is halted (cluster)' in refused.stdout
    # cancels still work while halted
    assert cli(port, 'cancel', placed[3]).returncode == 0

    [pid] = actor_pids('emsd', proc.pid)
    os.kill(pid, signal.SIGKILL)
    wait_gone([pid])
    services = cli(port, 'order', 'buy', 'btcusd.sim', '--price', f'{last * 0.9:.2f}', '--size', '1',
                   '--mode', 'live', '--json')
    assert services.returncode == 1 and 'trading is halted' in services.stdout, services.stdout + services.stderr
    shown = cli(port, 'services')
    assert 'trading: cluster halted' in shown.stdout, shown.stdout

    assert cli(port, 'resume').stdout.strip() == 'cluster: active'
    resting_live(port, 'buy', last * 0.9)


def test_only_admin_may_halt(pikerd):
    port, _ = pikerd
    token = run_cli('participants', 'add', 'bob', '--roles', 'watch,trade').stdout.strip()
    out = cli(port, 'halt', '--participant', 'bob', '--token', token)
    assert out.returncode != 0
    [line] = out.stderr.strip().splitlines()
    assert 'admin' in line, line
    assert cli(port, 'services').stdout.count('trading: cluster active') == 1


def test_newcomer_default_band_refuses_2x_in_one_line_and_a_watcher_sees_the_halt(newcomer):
    """Issue 14's done-means with no config: ``--price <last*2> --mode live`` is refused by the
    default price band in one line naming it; last*1.2 is accepted. A ``piker orders`` watcher
    is told of a halt (pushed by emsd) before the halt's cancel of the resting order."""
    port, _ = newcomer
    last = last_price(port)
    line = refused_line(port, last * 2)
    assert 'reason: risk: price_band_pct 50: limit ' in line, line
    oid = resting_live(port, 'sell', last * 1.2)

    with cli_running(port, 'orders', 'btcusd.sim', '--all', '--json', '--count', '2') as watcher:
        snapshot = json.loads(watcher.stdout.readline())   # the resting sell, then it follows
        assert snapshot['oid'] == oid and snapshot['resp'] == 'broker_submitted'
        assert cli(port, 'halt').stdout.strip() == 'cluster: halted, 1 order cancelled'
        out, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err
    notice, cancelled = json_lines(out)
    assert (notice['name'], notice['state'], notice['scope']) == ('trading_state', 'halted', '*')
    assert cancelled['oid'] == oid and cancelled['resp'] == 'broker_cancelled', cancelled

    # --timeout: a follower that does not get its --count in time says so and exits 3;
    # without --count it just stops (exit 0) after printing the open orders (none now)
    short = cli(port, 'orders', 'btcusd.sim', '--count', '1', '--timeout', '1')
    assert short.returncode == 3 and 'timed out after 1s with 0 of 1 new messages' in short.stderr, short
    assert short.stdout == ''
    plain = cli(port, 'orders', 'btcusd.sim', '--timeout', '0.5', '--json')
    assert plain.returncode == 0 and plain.stdout == '', plain
