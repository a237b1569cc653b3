"""`piker positions` as a user runs it: real `pikerd` process, positions opened with `piker order`."""
from __future__ import annotations

import pytest

from _ems_helpers import SIM_CALM
from _proc import cli, json_lines, pikerd_process, port_open, start_pikerd, stop_hard, wait_gone
from conftest import write_config
from piker_ems.testing import descendants


@pytest.fixture
def pikerd(reg_addr, tmp_path, config_dir):
    write_config(config_dir, SIM_CALM)
    with pikerd_process(reg_addr[1], tmp_path / 'pikerd.log'):
        yield reg_addr[1]


def last_price(port: int) -> float:
    return json_lines(cli(port, 'quote', 'btcusd.sim', '--count', '1', '--json').stdout)[0]['last']


def fill(port: int, action: str, size: float, *extra: str) -> dict:
    """A marketable live order on the paper account (or ``--account``): its fill message."""
    last = last_price(port)
    price = last * 1.05 if action == 'buy' else last * 0.95
    done = cli(port, 'order', action, 'btcusd.sim', '--price', f'{price:.2f}', '--size', f'{size:g}',
               '--mode', 'live', '--json', *extra)
    assert done.returncode == 0, done.stderr
    msgs = json_lines(done.stdout)
    assert msgs[-1]['resp'] == 'broker_executed', msgs
    return next(m['brokerd_msg'] for m in msgs if m['resp'] == 'broker_filled')


def test_paper_position_listed_with_pnl_and_account_filter(pikerd):
    bought = fill(pikerd, 'buy', 2)
    assert bought['size'] == 2

    shown = cli(pikerd, 'positions')
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ['SYMBOL', 'ACCOUNT', 'SIZE']
    rows = [line.split() for line in lines[1:]]
    assert len(rows) == 1, shown.stdout
    assert rows[0][:4] == ['btcusd.sim', 'paper', '2', f"{bought['price']:.10g}"]

    out = cli(pikerd, 'positions', '--json')
    assert out.returncode == 0, out.stderr
    [pos] = json_lines(out.stdout)
    assert pos['account'] == 'paper' and pos['symbol'] == 'btcusd.sim'
    assert pos['size'] == 2 and pos['avg_price'] == pytest.approx(bought['price'])
    assert pos['realized_pnl'] == 0 and pos['fees'] == 0
    assert pos['last'] > 0
    assert pos['unrealized_pnl'] == pytest.approx((pos['last'] - pos['avg_price']) * 2, abs=1e-6)

    # a live-account position (the sim exchange) is listed too, and --account filters
    fill(pikerd, 'sell', 1, '--account', 'acct1')
    both = json_lines(cli(pikerd, 'positions', '--json').stdout)
    assert sorted((p['account'], p['size']) for p in both) == [('acct1', -1), ('paper', 2)]
    only = json_lines(cli(pikerd, 'positions', '--json', '--account', 'paper').stdout)
    assert [(p['account'], p['size']) for p in only] == [('paper', 2)]

    # selling part of it realizes PnL on the sold size
    sold = fill(pikerd, 'sell', 1)
    [after] = json_lines(cli(pikerd, 'positions', '--json', '--account', 'paper').stdout)
    assert after['size'] == 1 and after['avg_price'] == pytest.approx(bought['price'])
    assert after['realized_pnl'] == pytest.approx(sold['price'] - bought['price'], abs=1e-6)
    readable = cli(pikerd, 'positions', '--account', 'paper').stdout.strip().splitlines()[1].split()
    assert float(readable[4]) == pytest.approx(after['realized_pnl'], abs=1e-6)


def test_no_positions_and_bad_input(pikerd):
    none = cli(pikerd, 'positions')
    assert none.returncode == 0, none.stderr
    assert none.stdout == '' and none.stderr.strip() == 'no positions in any account'
    none_json = cli(pikerd, 'positions', '--json', '--account', 'nobody')
    assert none_json.returncode == 0 and none_json.stdout == ''
    assert none_json.stderr.strip() == 'no positions in account nobody'

    bad = cli(pikerd, 'positions', '--account', ' ')
    assert bad.returncode == 2 and bad.stderr.strip().startswith('error: --account')
    assert len(bad.stderr.strip().splitlines()) == 1
    unknown = cli(pikerd, 'positions', '--acount', 'paper')
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1


def test_no_pikerd_is_one_line(reg_addr):
    proc = cli(reg_addr[1], 'positions', timeout=20)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f'error: no pikerd running at 127.0.0.1:{reg_addr[1]}')
    assert 'Traceback' not in err and proc.stdout == ''
    assert not port_open(reg_addr[1])


def test_positions_survive_kill_9_of_the_pikerd_tree(reg_addr, tmp_path, config_dir):
    """The user story of issue 9: a paper and a live position, pikerd's whole tree SIGKILLed,
    pikerd started again: `piker positions` shows both (it opens the venues, which restore them)."""
    write_config(config_dir, SIM_CALM)
    port = reg_addr[1]
    daemon = start_pikerd(port, tmp_path / 'pikerd.log')
    try:
        bought = fill(port, 'buy', 2)
        sold = fill(port, 'sell', 3, '--account', 'acct1')
        kids = descendants(daemon.pid)
        stop_hard(daemon)  # SIGKILL to pikerd and every descendant
        wait_gone(kids)
    finally:
        if daemon.poll() is None:
            stop_hard(daemon)
    with pikerd_process(port, tmp_path / 'pikerd2.log'):  # (stopped cleanly by SIGTERM at the end)
        shown = cli(port, 'positions', '--json')
        assert shown.returncode == 0, shown.stderr
        got = {p['account']: p for p in json_lines(shown.stdout)}
        assert got['paper']['size'] == 2 and got['paper']['avg_price'] == pytest.approx(bought['price'])
        assert got['acct1']['size'] == -3 and got['acct1']['avg_price'] == pytest.approx(sold['price'])
        assert all(p['symbol'] == 'btcusd.sim' and p['unrealized_pnl'] is not None for p in got.values())


def test_pnl_after_many_partial_fills_has_no_float_residue():
    """50 lots bought in parts at tick prices average to a non-terminating price (kept to 10
    decimals); the PnL columns must not show that rounding times the size (``+1.490000005``):
    unrealized is exactly last * size - cost, realized after closing in parts too."""
    from piker_ems.cli.positions import format_table, with_pnl
    from piker_ems.simvenue._positions import Position

    def row(p, last):
        return with_pnl({'symbol': 'btcusd', 'broker': 'sim', 'account': 'paper', 'size': p.size,
                         'avg_price': p.avg_price, 'realized_pnl': p.realized_pnl, 'fees': p.fees}, last)

    p, cost = Position('paper', 'btcusd'), 0.0
    for i, (size, price) in enumerate([(5, 171.93), (7, 171.97), (3, 172.01), (5, 171.96), (6, 171.94),
                                       (4, 172.02), (7, 171.95), (5, 171.99), (3, 171.98), (5, 171.93)]):
        p = p.after('buy', size, price)
        cost += size * price
    assert p.size == 50 and p.avg_price != round(p.avg_price, 8)   # a real non-terminating average
    for last in (172.0, 171.5, 172.3, 171.97):
        r = row(p, last)
        assert r['unrealized_pnl'] == round(last * 50 - cost, 8), (last, r)
        line = format_table([r])[1]
        assert f"{r['unrealized_pnl']:+.10g}" in line and len(f"{r['unrealized_pnl']:.10g}") <= 8, line
    # the residue as first reported: 50 lots at an average of 171.9702 (kept as 171.97020000004)
    odd = Position('paper', 'btcusd', size=50.0, avg_price=171.9702000001)
    assert row(odd, 172.0)['unrealized_pnl'] == 1.49
    # closing in parts realizes the exact cash-flow PnL (same size per part: exact at each step)
    q = Position('paper', 'btcusd').after('buy', 3, 100.01).after('buy', 4, 100.02).after('buy', 3, 100.05)
    for _ in range(5):
        q = q.after('sell', 2, 101.0)
    assert q.size == 0 and q.realized_pnl == round(10 * 101.0 - (3 * 100.01 + 4 * 100.02 + 3 * 100.05), 8)
