"""The real console scripts (``pikerd``, ``piker``) run as subprocesses."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from _proc import (
    actor_pids, default_sigint, port_open, run_cli, run_script, script, start_pikerd, stop_hard,
    wait_gone,
)
from conftest import free_port
from piker_ems.testing import descendants


def assert_one_line_error(proc, *fragments: str) -> str:
    err = proc.stderr.strip()
    assert 'Traceback' not in proc.stderr, proc.stderr
    assert len(err.splitlines()) == 1, proc.stderr
    assert err.startswith('error: ')
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_quote_without_broker_suffix_is_a_usage_error(reg_addr):
    proc = run_cli('--port', str(reg_addr[1]), 'quote', 'btcusd')
    assert proc.returncode == 2
    assert proc.stdout == ''
    assert_one_line_error(proc, "'btcusd'", '<symbol>.<broker>')
    assert not port_open(reg_addr[1])  # failed before starting anything


def test_quote_unknown_broker_lists_the_available_ones(reg_addr):
    proc = run_cli('--port', str(reg_addr[1]), 'quote', 'x.doggy')
    assert proc.returncode == 2
    assert proc.stdout == ''
    assert_one_line_error(proc, "no broker backend named 'doggy'", 'available: ', 'sim')


def test_services_without_a_daemon_fails_in_one_line(reg_addr):
    proc = run_cli('--port', str(reg_addr[1]), 'services')
    assert proc.returncode != 0
    assert proc.stdout == ''
    assert_one_line_error(proc, f'no pikerd running at 127.0.0.1:{reg_addr[1]}')


def test_done_means_scenario(reg_addr, tmp_path):
    """pikerd in the background, then quotes (text and JSON) and the service list through it,
    then SIGTERM stops the whole tree."""
    port = str(reg_addr[1])
    pikerd = start_pikerd(reg_addr[1], tmp_path / 'pikerd.log')
    try:
        proc = run_cli('--port', port, 'quote', 'btcusd.sim', '--count', '5')
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert len(lines) == 5, proc.stdout
        for line in lines:
            fields = line.split()
            assert fields[0] == 'btcusd.sim' and 'bid' in fields and 'ask' in fields
            bid, ask = float(fields[fields.index('bid') + 1]), float(fields[fields.index('ask') + 1])
            assert bid < ask
        assert 'private service tree' not in proc.stderr  # it used the running pikerd

        proc = run_cli('--port', port, 'quote', 'btcusd.sim', '--count', '5', '--json')
        assert proc.returncode == 0, proc.stderr
        quotes = [json.loads(line) for line in proc.stdout.splitlines()]
        assert len(quotes) == 5
        for q in quotes:
            assert q['fqsn'] == 'btcusd.sim'
            assert isinstance(q['bid'], float) and isinstance(q['ask'], float) and q['bid'] < q['ask']
            assert {t['type'] for t in q['ticks']} <= {'bid', 'ask', 'trade', 'last'}

        proc = run_cli('--port', port, 'services')
        assert proc.returncode == 0, proc.stderr
        listed = sorted(line.split()[0] for line in proc.stdout.splitlines())
        assert listed == ['brokerd.sim', 'pikerd']
        for line in proc.stdout.splitlines():
            assert line.split()[1].startswith('127.0.0.1:')

        proc = run_cli('--port', port, 'services', '--json')
        assert proc.returncode == 0, proc.stderr
        assert sorted(k.rpartition('.')[0] for k in json.loads(proc.stdout)) == ['brokerd.sim', 'pikerd']

        [brokerd] = actor_pids('brokerd.sim', root=pikerd.pid)
        tree = descendants(pikerd.pid)
        pikerd.send_signal(signal.SIGTERM)
        assert pikerd.wait(timeout=5) == 0
        wait_gone(tree, timeout=5)
        assert brokerd in tree
        assert not port_open(reg_addr[1])
        assert 'SIGTERM' in (tmp_path / 'pikerd.log').read_text()
    finally:
        stop_hard(pikerd)


def test_quote_without_a_daemon_runs_a_private_tree(reg_addr):
    proc = run_cli('--port', str(reg_addr[1]), 'quote', 'btcusd.sim', '--count', '1')
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    assert proc.stdout.startswith('btcusd.sim')
    assert 'private service tree' in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert not port_open(reg_addr[1])
    assert not descendants(os.getpid())


def test_second_pikerd_on_a_taken_port_refuses(reg_addr, tmp_path):
    pikerd = start_pikerd(reg_addr[1], tmp_path / 'pikerd.log')
    try:
        proc = run_script('pikerd', '--port', str(reg_addr[1]))
        assert proc.returncode != 0
        assert_one_line_error(proc, f'{reg_addr[1]}', 'pikerd running')
        assert pikerd.poll() is None  # the first one is unharmed
    finally:
        pikerd.send_signal(signal.SIGTERM)
        pikerd.wait(timeout=5)
        stop_hard(pikerd)


@pytest.mark.parametrize('args', [['--count', '0'], ['--bogus']])
def test_quote_bad_options_are_usage_errors(reg_addr, args):
    proc = run_cli('--port', str(reg_addr[1]), 'quote', 'btcusd.sim', *args)
    assert proc.returncode == 2
    assert 'Traceback' not in proc.stderr
    assert not port_open(reg_addr[1])


def test_registry_port_from_environment(reg_addr, tmp_path, monkeypatch):
    """``PIKER_EMS_REGISTRY`` selects the daemon when no --port is given."""
    pikerd = start_pikerd(reg_addr[1], tmp_path / 'pikerd.log')
    try:
        monkeypatch.setenv('PIKER_EMS_REGISTRY', f'127.0.0.1:{reg_addr[1]}')
        proc = run_cli('services')
        assert proc.returncode == 0, proc.stderr
        [line] = proc.stdout.splitlines()
        assert line.split()[:2] == ['pikerd', f'127.0.0.1:{reg_addr[1]}']
        other = free_port()
        proc = run_cli('--port', str(other), 'services')  # the flag wins over the env
        assert proc.returncode != 0
    finally:
        pikerd.send_signal(signal.SIGTERM)
        pikerd.wait(timeout=5)
        stop_hard(pikerd)


def test_quote_ctrl_c_stops_quietly(reg_addr):
    """Ctrl-C on an endless ``piker quote`` (private tree): exit 130, no traceback, no leftovers."""
    proc = subprocess.Popen(
        [script('piker'), '--port', str(reg_addr[1]), 'quote', 'btcusd.sim'],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_sigint,
    )
    try:
        assert proc.stdout.readline().startswith('btcusd.sim')  # quotes are flowing
        tree = descendants(proc.pid)
        assert actor_pids('brokerd.sim', root=proc.pid)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 130
        assert 'Traceback' not in err, err
        wait_gone(tree, timeout=5)
    finally:
        if proc.poll() is None:
            stop_hard(proc)


def test_cancel_without_a_daemon_fails_in_one_line(reg_addr):
    proc = run_cli('--port', str(reg_addr[1]), 'cancel', '--all', 'btcusd.sim')
    assert proc.returncode != 0
    assert proc.stdout == ''
    assert_one_line_error(proc, f'no pikerd running at 127.0.0.1:{reg_addr[1]}: nothing to cancel',
                          f'pikerd --port {reg_addr[1]}')
