"""The binance backend (ccxt) against a local fake Binance spot exchange: quotes, history,
live limit orders with their statuses, fills and positions, rejections, reconnects, 429s,
restarts and the keyless modes."""
from __future__ import annotations

import pytest
import trio

from piker_ems.clearing import BrokerdPosition, Status, open_ems
from piker_ems.service import open_pikerd

from _binance_helpers import FakeBinance, start_fake, stop_fake
from _ems_helpers import collect_until, next_status
from conftest import write_config

pytestmark = pytest.mark.trio

FQSN = 'btcusdt.binance'
FINAL = {'broker_executed', 'broker_cancelled', 'broker_errored', 'dark_cancelled'}


@pytest.fixture
def fake(config_dir):
    fake = start_fake()
    write_config(config_dir, fake.config())
    yield fake
    stop_fake(fake)


async def test_limit_order_ack_partial_fill_fill_and_position(reg_addr, fake: FakeBinance):
    await fake.quote(50000, 50000.01, ask_qty=0.5)
    with trio.fail_after(90):
        async with open_pikerd(reg_addr), open_ems(FQSN, mode='live', account='binance', name='A') as (book, trades, positions):
            oid = book.send('buy', 49990.0, 0.2)
            first = await next_status(trades, oid, timeout=30)
            assert first.resp == 'broker_submitted'
            await fake.quote(49989.99, 49990.0, ask_qty=0.05)   # crosses: 0.05 of 0.2 fills
            seq = await collect_until(trades, {'broker_partially_filled'}, oid, timeout=30)
            await fake.quote(49989.99, 49990.0, ask_qty=0.5)    # the rest
            seq += await collect_until(trades, FINAL, oid, timeout=30)
            resps = [s.resp for s in seq]
            assert resps == ['broker_filled', 'broker_partially_filled', 'broker_filled', 'broker_executed'], resps
            fills = [s.brokerd_msg for s in seq if s.resp == 'broker_filled']
            assert [f['size'] for f in fills] == [0.05, 0.15]
            assert all(f['price'] == 49990.0 for f in fills)
            state = await fake.state()
            assert [f['fill_id'] for f in fills] == [str(t['id']) for t in state['trades']]
            # one venue order, our oid as its client order id
            assert [(o['clientOrderId'], o['status']) for o in state['orders']] == [(oid, 'FILLED')]
            # the position: 1 BTC held before + 0.2 bought
            with trio.fail_after(20):
                async for msg in trades:
                    if isinstance(msg, BrokerdPosition) and msg.size == pytest.approx(1.2):
                        break
