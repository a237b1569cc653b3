"""A burst of statuses through real actors: batched on the wire, each delivered once, in order."""
from __future__ import annotations

import pytest
import trio

from piker_ems.clearing import Status, open_ems
from piker_ems.service import open_pikerd

from _ems_helpers import SIM_CALM, last_price
from conftest import write_config

pytestmark = pytest.mark.trio

FQSN = 'btcusd.sim'
N = 300


async def _statuses(trades, count: int) -> list[Status]:
    out: list[Status] = []
    with trio.fail_after(90):  # bounds a hang; not a performance assertion
        while len(out) < count:
            msg = await trades.receive()
            if isinstance(msg, Status):
                out.append(msg)
    return out


async def test_burst_reaches_owner_and_watcher_once_each_in_order(reg_addr, config_dir):
    """300 dark orders then 300 cancels in one synchronous burst (emsd's queues to both
    clients back up, so statuses travel in batches): the owner and a watcher each get exactly
    ``dark_submitted`` then ``dark_cancelled`` for every oid, nothing twice, in send order."""
    write_config(config_dir, SIM_CALM)
    async with open_pikerd(reg_addr):
        far = round(await last_price() * 0.5, 2)
        async with (
            open_ems(FQSN, mode='dark', name='A') as (book, a_trades, _),
            open_ems(FQSN, mode='dark', name='W', watch='symbol') as (_, w_trades, _),
        ):
            oids = [book.send('buy', far, 1.0) for _ in range(N)]
            for oid in oids:
                book.cancel(oid)
            for trades in (a_trades, w_trades):
                got = await _statuses(trades, 2 * N)
                assert [(s.oid, s.resp) for s in got if s.resp == 'dark_submitted'] == \
                    [(oid, 'dark_submitted') for oid in oids]
                assert [(s.oid, s.resp) for s in got if s.resp == 'dark_cancelled'] == \
                    [(oid, 'dark_cancelled') for oid in oids]
                per_oid: dict[str, list[str]] = {}
                for s in got:
                    per_oid.setdefault(s.oid, []).append(s.resp)
                assert all(v == ['dark_submitted', 'dark_cancelled'] for v in per_oid.values())
                with trio.move_on_after(0.5):  # nothing more (no duplicate) arrives
                    extra = await trades.receive()
                    assert not isinstance(extra, Status), extra
