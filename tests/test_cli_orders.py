"""The headless order commands as a user runs them: `piker order/orders/cancel` against a real
`pikerd` process."""
from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import trio

from _ems_helpers import SIM_CALM
from _proc import cli, cli_running, json_lines, pikerd_process, port_open, run_cli, script, start_pikerd, stop_hard, wait_gone
from conftest import write_config
from piker_ems.service._auth import call
from piker_ems.testing import descendants


@pytest.fixture
def pikerd(reg_addr, tmp_path, config_dir):
    write_config(config_dir, SIM_CALM)
    with pikerd_process(reg_addr[1], tmp_path / 'pikerd.log'):
        yield reg_addr[1]


def sim_set_price(port: int, symbol: str, price: float) -> None:
    """Move brokerd.sim's market from a short-lived client of the test's pikerd."""
    from piker_ems.service import find_service, maybe_open_pikerd

    async def main():
        async with maybe_open_pikerd(('127.0.0.1', port), name='test.mover'):
            async with find_service('brokerd.sim') as portal:
                await call(portal, 'piker_ems.brokers.sim', 'set_price', symbol=symbol, price=price)

    trio.run(main)


def test_dark_buy_prints_submitted_triggered_filled_executed(pikerd):
    last = json_lines(cli(pikerd, 'quote', 'btcusd.sim', '--count', '1', '--json').stdout)[0]['last']
    with cli_running(pikerd, 'order', 'buy', 'btcusd.sim', '--price', f'{last + 0.5:.2f}', '--size', '1',
                     '--mode', 'dark', '--json', '--timeout', '30') as proc:
        first = json.loads(proc.stdout.readline())
        assert first['resp'] == 'dark_submitted' and first['owner'] == 'piker'
        sim_set_price(pikerd, 'btcusd', round(last + 1, 2))
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    resps = [first['resp']] + [m['resp'] for m in json_lines(out)]
    assert resps == ['dark_submitted', 'dark_triggered', 'broker_submitted', 'broker_filled', 'broker_executed']
    assert all(m['oid'] == first['oid'] for m in json_lines(out))


def far_ask(port: int) -> str:
    """A live sell that rests (the calm sim never reaches it) inside emsd's default 50% price band."""
    last = json_lines(cli(port, 'quote', 'btcusd.sim', '--count', '1', '--json').stdout)[0]['last']
    return f'{last * 1.4:.2f}'


def test_detach_then_cancel_all_and_unknown_oid(pikerd):
    placed = cli(pikerd, 'order', 'sell', 'btcusd.sim', '--price', far_ask(pikerd), '--size', '2',
                 '--mode', 'live', '--detach', '--json')
    assert placed.returncode == 0, placed.stderr
    st = json_lines(placed.stdout)[-1]
    assert st['resp'] == 'broker_submitted' and st['req']['size'] == 2
    alert = cli(pikerd, 'order', 'alert', 'btcusd.sim', '--price', '1', '--detach')
    assert alert.returncode == 0 and 'alert_submitted' in alert.stdout

    done = cli(pikerd, 'cancel', '--all', 'btcusd.sim', '--json')
    assert done.returncode == 0, done.stderr
    assert sorted(m['resp'] for m in json_lines(done.stdout)) == ['broker_cancelled', 'dark_cancelled']

    again = cli(pikerd, 'cancel', '--all', 'btcusd.sim')
    assert again.returncode == 0 and 'no open orders' in again.stderr

    unknown = cli(pikerd, 'cancel', 'deadbeef')
    assert unknown.returncode == 1
    assert 'unknown order deadbeef' in unknown.stdout


def test_order_usage_errors_and_timeout(pikerd):
    no_size = cli(pikerd, 'order', 'buy', 'btcusd.sim', '--price', '1')
    assert no_size.returncode == 2 and '--size' in no_size.stderr
    bad = cli(pikerd, 'order', 'buy', 'x.doggy', '--price', '1', '--size', '1')
    assert bad.returncode == 2 and "no broker backend named 'doggy'" in bad.stderr
    assert 'Traceback' not in bad.stderr
    waited = cli(pikerd, 'order', 'alert', 'btcusd.sim', '--price', '1', '--timeout', '1')
    assert waited.returncode == 3 and 'timed out' in waited.stderr


def test_orders_follows_other_clients_flows(pikerd):
    with cli_running(pikerd, 'orders', 'btcusd.sim', '--json', '--count', '2') as watcher:
        assert watcher.stderr.readline().startswith('following orders on btcusd.sim')
        placed = cli(pikerd, 'order', 'alert', 'btcusd.sim', '--price', '1', '--detach', '--name', 'bob')
        assert placed.returncode == 0
        cancelled = cli(pikerd, 'cancel', '--all', 'btcusd.sim', '--name', 'bob')
        assert cancelled.returncode == 0
        out, _ = watcher.communicate(timeout=15)
    msgs = [m for m in json_lines(out) if m.get('name') == 'status']
    assert [m['resp'] for m in msgs] == ['alert_submitted', 'dark_cancelled']
    assert all(m['owner'] == 'bob' for m in msgs)


# -- issue 8: one vocabulary, one-line usage errors, a lost EMS is one line ------------------

@pytest.mark.parametrize('resp, detach, code', [
    ('broker_executed', False, 0),
    ('alert_triggered', False, 0),
    ('dark_cancelled', False, 0),
    ('broker_cancelled', False, 0),
    ('broker_expired', False, 0),     # final: `piker order` used to wait forever on these
    ('broker_closed', False, 0),
    ('broker_inactive', False, 0),
    ('broker_errored', False, 1),
    ('error', False, 1),              # our new order was refused: nothing more will come
    ('dark_submitted', False, None),
    ('broker_submitted', False, None),
    ('broker_filled', False, None),
    ('broker_partially_filled', False, None),
    ('broker_pending_review', False, None),  # unknown venue status: working, not final
    ('dark_submitted', True, 0),
    ('alert_submitted', True, 0),
    ('broker_submitted', True, 0),
    ('broker_expired', True, 0),
    ('error', True, 1),
])
def test_order_stops_at_the_first_final_status(resp, detach, code):
    from piker_ems.cli.orders import order_exit_code

    assert order_exit_code(resp, detach) == code


@pytest.mark.parametrize('args, fragment', [
    (['buy', 'x.sim', '--price', '170', '--size', '-1'], '--size'),
    (['buy', 'btcusd.sim', '--price', '1', '--size', '0'], '--size'),
    (['buy', 'btcusd.sim', '--price', '1', '--size', 'nan'], '--size'),
    (['buy', 'btcusd.sim', '--price', '1', '--size', '1e30'], '--size'),
    (['buy', 'btcusd.sim', '--price', '0', '--size', '1'], '--price'),
    (['buy', 'btcusd.sim', '--price', '-170', '--size', '1'], '--price'),
    (['buy', 'btcusd.sim', '--price', 'nan', '--size', '1'], '--price'),
    (['buy', 'btcusd.sim', '--price', 'inf', '--size', '1'], '--price'),
    (['sell', 'btcusd.sim', '--price', '1e300', '--size', '1'], '--price'),
    (['alert', 'btcusd.sim', '--price', '-1'], '--price'),
    (['buy', 'btcusd.sim', '--price', 'abc', '--size', '1'], '--price'),
    (['buy', 'btcusd.sim', '--size', '1'], '--price'),
    (['buy', 'btcusd.sim', '--price', '1', '--size', '1', '--mode', 'fast'], '--mode'),
    (['hold', 'btcusd.sim', '--price', '1'], 'hold'),
    (['buy', 'bad sym.sim', '--price', '1', '--size', '1'], 'not a valid name'),
    (['buy', 'btcusd', '--price', '1', '--size', '1'], 'no broker suffix'),
    (['buy', 'x.doggy', '--price', '1', '--size', '1'], "no broker backend named 'doggy'"),
])
def test_order_usage_errors_are_one_line(reg_addr, args, fragment):
    """Checked before anything starts: no daemon needed, nothing left listening."""
    proc = cli(reg_addr[1], 'order', *args, timeout=20)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert 'Traceback' not in proc.stderr, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, proc.stderr
    assert err.startswith('error: ') and fragment in err, err
    assert proc.stdout == ''
    assert not port_open(reg_addr[1])


def test_cli_usage_errors_of_other_commands_are_one_line(reg_addr):
    for args in (['bogus'], ['orders'], ['cancel'], ['quote', 'a b.sim'], ['--port', 'x', 'services']):
        proc = run_cli(*args, timeout=20)
        assert proc.returncode == 2, (args, proc.stderr)
        err = proc.stderr.strip()
        assert len(err.splitlines()) == 1 and err.startswith('error: '), (args, proc.stderr)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize('command', [
    ['orders', 'btcusd.sim'],
    ['order', 'alert', 'btcusd.sim', '--price', '1'],
])
def test_stopping_pikerd_ends_a_running_client_with_one_line(reg_addr, tmp_path, config_dir, sig, command):
    """pikerd stopped under a running `piker orders` / `piker order`: the client says it lost the
    EMS in one line and exits 1 within a few seconds (no traceback, no hang)."""
    write_config(config_dir, SIM_CALM)
    daemon = start_pikerd(reg_addr[1], tmp_path / 'pikerd.log')
    client = None
    try:
        client = subprocess.Popen(
            [script('piker'), '--port', str(reg_addr[1]), *command],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        if command[0] == 'orders':
            assert client.stderr.readline().startswith('following orders on btcusd.sim')
        else:
            assert 'alert_submitted' in client.stdout.readline()
        kids = descendants(daemon.pid)
        daemon.send_signal(sig)
        stopped = time.monotonic()
        out, err = client.communicate(timeout=10)
        took = time.monotonic() - stopped
        assert daemon.wait(timeout=10) == (0 if sig == signal.SIGTERM else 130)
        wait_gone(kids)
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        if daemon.poll() is None:
            stop_hard(daemon)
    assert client.returncode == 1, err
    assert 'Traceback' not in err, err
    lines = [line for line in err.strip().splitlines() if not line.startswith('following orders')]
    assert len(lines) == 1 and lines[0].startswith('error: lost the EMS: '), err
    assert took < 5, f'client took {took:.2f}s to notice'


def test_orders_prints_open_orders_first_then_follows(pikerd):
    """issue 9 item 5: the open orders of the scope first (one line each: its last status),
    then the new statuses; no positions before them; --count counts only new messages."""
    assert cli(pikerd, 'order', 'alert', 'btcusd.sim', '--price', '1', '--detach', '--name', 'ann').returncode == 0
    assert cli(pikerd, 'order', 'sell', 'btcusd.sim', '--price', far_ask(pikerd), '--size', '1', '--mode', 'live',
               '--detach', '--name', 'ann').returncode == 0
    assert cli(pikerd, 'order', 'alert', 'other.sim', '--price', '1', '--detach', '--name', 'ann').returncode == 0

    with cli_running(pikerd, 'orders', 'btcusd.sim', '--json', '--count', '1') as watcher:
        first = [json.loads(watcher.stdout.readline()) for _ in range(2)]
        assert sorted(m['resp'] for m in first) == ['alert_submitted', 'broker_submitted']
        assert all(m['name'] == 'status' and m['req']['symbol'] == 'btcusd.sim' for m in first)
        done = cli(pikerd, 'cancel', '--all', 'btcusd.sim', '--name', 'ann')
        assert done.returncode == 0, done.stderr
        out, err = watcher.communicate(timeout=15)
    assert watcher.returncode == 0, err
    [new] = json_lines(out)
    assert new['resp'] in ('dark_cancelled', 'broker_cancelled')

    everything = subprocess.Popen(
        [script('piker'), '--port', str(pikerd), 'orders', 'btcusd.sim', '--all'],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = everything.stdout.readline()
    finally:
        everything.send_signal(signal.SIGINT)
        everything.communicate(timeout=15)
    assert 'alert_submitted' in line and 'other.sim' in line and 'by ann' in line
