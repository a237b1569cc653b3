"""The binance backend (ccxt) against a local fake Binance spot exchange: quotes, history,
live limit orders with their statuses, fills and positions, rejections, reconnects, 429s,
restarts and the keyless modes."""
from __future__ import annotations

from contextlib import asynccontextmanager

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


@asynccontextmanager
async def live_ems(reg_addr, **kw):
    """pikerd and one EMS client ('A') trading the live binance account."""
    async with open_pikerd(reg_addr, **kw), open_ems(
            FQSN, mode='live', account='binance', name='A', **kw) as (book, trades, positions):
        yield book, trades, positions


async def resting_buy(book, trades) -> str:
    """A buy of 0.1 at 49900, below the book, that the venue has taken (its oid)."""
    oid = book.send('buy', 49900.0, 0.1)
    assert (await next_status(trades, oid, timeout=30)).resp == 'broker_submitted'
    return oid


async def test_limit_order_ack_partial_fill_fill_and_position(reg_addr, fake: FakeBinance):
    await fake.quote(50000, 50000.01, ask_qty=0.5)
    with trio.fail_after(90):
        async with live_ems(reg_addr) as (book, trades, positions):
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
            # the position: the BTC now held, at the average price paid
            with trio.fail_after(20):
                async for msg in trades:
                    if isinstance(msg, BrokerdPosition) and msg.size == pytest.approx(0.2):
                        assert msg.avg_price == pytest.approx(49990.0)
                        break


async def statuses_for(trades, oid: str, seconds: float) -> list[Status]:
    """Every status of ``oid`` for ``seconds`` (to show that nothing more comes)."""
    out: list[Status] = []
    with trio.move_on_after(seconds):
        while True:
            out.append(await next_status(trades, oid, timeout=seconds + 1))
    return out


async def moving_market_reaches(feed, fake: FakeBinance, bid: float) -> dict:
    """Move the fake's book towards ``bid`` (a tick at a time, as a live market keeps moving:
    updates before the websocket subscribed reach nobody) until the feed shows ``bid``."""
    async with trio.open_nursery() as n:
        async def mover() -> None:
            step = 0
            while True:
                await fake.quote(round(bid - 0.01 * (step % 2), 2), round(bid + 0.01 - 0.01 * (step % 2), 2))
                step += 1
                await trio.sleep(0.2)

        n.start_soon(mover)
        async for quotes in feed.stream:
            q = quotes[FQSN]
            if any(t['type'] == 'bid' and t['price'] == bid for t in q.get('ticks', [])):
                n.cancel_scope.cancel()
                return q
    raise AssertionError('feed ended')


async def test_quotes_and_history_come_from_the_venue(reg_addr, fake: FakeBinance):
    from piker_ems.data import open_feed
    from piker_ems.data.feed import fetch_history

    await fake.quote(43210.5, 43210.51, bid_qty=1.5, ask_qty=2.25)
    with trio.fail_after(90):
        async with open_pikerd(reg_addr):
            async with open_feed(FQSN) as feed:
                first = feed.first_quotes[FQSN]
                assert (first['bid'], first['ask'], first['bsize'], first['asize']) == (43210.5, 43210.51, 1.5, 2.25)
                q = await moving_market_reaches(feed, fake, 43211.0)
                ticks = {t['type']: t['price'] for t in q['ticks']}
                assert ticks['ask'] == 43211.01 and q['bid'] == 43211.0
            bars = (await fetch_history(FQSN, 60, 30)).bars.tolist()
            assert len(bars) == 30
            times = [b[0] for b in bars]
            assert times == sorted(times) and all(b - a == 60 for a, b in zip(times, times[1:]))
            assert all(b[2] >= max(b[1], b[4]) and b[3] <= min(b[1], b[4]) for b in bars)  # h/l bound o/c
            five = [b[0] for b in (await fetch_history(FQSN, 5, 12)).bars.tolist()]  # from 1 s klines
            assert len(five) == 12 and all(b - a == 5 for a, b in zip(five, five[1:]))
        assert 'GET /api/v3/klines' in (await fake.state())['requests']


@pytest.mark.parametrize('payload', [
    {'u': 10**9, 's': 'BTCUSDT', 'b': 'oops', 'B': '1', 'a': '43211.01', 'A': '1'},  # our parse fails
    {'u': 10**9, 'b': '43211.00', 'B': '1', 'a': '43211.01', 'A': '1'},  # ccxt's handler raises
    {'error': {'code': 2, 'msg': 'Invalid request'}, 'id': 1},  # ccxt fails every watcher of it
], ids=['bad-price', 'no-symbol', 'error-frame'])
async def test_a_malformed_market_message_is_skipped_and_quotes_go_on(reg_addr, fake: FakeBinance, payload):
    """One bad book-ticker frame (a price that is no number; a frame without its symbol, on
    which ccxt's own handler raises) must not end brokerd's quote stream: the frame is
    skipped and later quotes still reach the feed."""
    from piker_ems.data import open_feed

    await fake.quote(43210.5, 43210.51)
    with trio.fail_after(90):
        async with open_pikerd(reg_addr):
            async with open_feed(FQSN) as feed:
                await moving_market_reaches(feed, fake, 43211.0)
                await fake.ctl('broadcast', {'stream': 'btcusdt@bookTicker', 'payload': payload})
                q = await moving_market_reaches(feed, fake, 43215.0)
                assert q['bid'] == 43215.0


async def test_a_user_stream_frame_ccxt_cannot_handle_is_skipped_and_fills_still_come(
        reg_addr, fake: FakeBinance):
    """An execution report with numbers that are not numbers: our handler and ccxt's both
    raise on it; the frame is skipped and the user stream goes on reading (left to ccxt its
    connection would go silent, and the fill below never be reported)."""
    await fake.quote(50000, 50000.01, ask_qty=1.0)
    with trio.fail_after(120):
        async with live_ems(reg_addr) as (book, trades, _):
            oid = await resting_buy(book, trades)
            await fake.subscribed('user')
            await fake.ctl('broadcast', {'stream': 'user', 'payload': {'subscriptionId': 0, 'event': {
                'e': 'executionReport', 'E': 1, 's': 'BTCUSDT', 'i': 'x', 'x': 'TRADE', 'X': 'FILLED',
                'L': 'x', 'l': 'x', 't': 'x', 'T': 'x'}}})
            await fake.quote(49899.99, 49900.0, ask_qty=1.0)
            seq = await collect_until(trades, FINAL, oid, timeout=30)
            assert [s.resp for s in seq] == ['broker_filled', 'broker_executed']
            assert seq[0].brokerd_msg['fill_id'] == str((await fake.state())['trades'][0]['id'])


async def test_an_unreadable_balances_answer_does_not_end_the_dialogue(reg_addr, fake: FakeBinance):
    """The account call after a fill answers nonsense: brokerd.binance logs it and goes on;
    the next fill brings the position (both buys)."""
    await fake.quote(50000, 50000.01, ask_qty=1.0)
    with trio.fail_after(120):
        async with live_ems(reg_addr) as (book, trades, _):
            first = await resting_buy(book, trades)
            await fake.ctl('malform', {'request': 'GET /api/v3/account', 'body': {'balances': [{'asset': 'BTC'}]}})
            await fake.quote(49899.99, 49900.0, ask_qty=1.0)
            seq = await collect_until(trades, FINAL, first, timeout=30)
            assert [s.resp for s in seq] == ['broker_filled', 'broker_executed']
            second = book.send('buy', 50001.0, 0.05)   # marketable: fills at once
            final, held = None, None
            with trio.fail_after(30):
                async for msg in trades:
                    if isinstance(msg, BrokerdPosition):
                        held = held if held is not None else msg.size
                    elif isinstance(msg, Status) and msg.oid == second and msg.resp in FINAL:
                        final = msg.resp
                    if final and held is not None:
                        break
            assert (final, held) == ('broker_executed', pytest.approx(0.15))
            assert (await fake.state())['malformed_pending'] == 0   # the nonsense was served


async def test_an_unreadable_order_answer_while_reconciling_does_not_end_the_user_stream(
        reg_addr, fake: FakeBinance):
    """The user stream comes back and the venue's answer about a working order is nonsense:
    brokerd.binance logs it and reads on; the order's fill that follows is reported once."""
    await fake.quote(50000, 50000.01, ask_qty=1.0)
    with trio.fail_after(120):
        async with live_ems(reg_addr) as (book, trades, _):
            oid = await resting_buy(book, trades)
            await fake.ctl('malform', {'request': 'GET /api/v3/order', 'body': {'orderId': 'nonsense'}})
            await fake.ctl('drop', {'which': 'user'})
            await fake.subscribed('user')   # back: reconciling asks GET order and gets the nonsense
            await fake.quote(49899.99, 49900.0, ask_qty=1.0)
            seq = await collect_until(trades, FINAL, oid, timeout=30)
            assert [s.resp for s in seq] == ['broker_filled', 'broker_executed']
            assert seq[0].brokerd_msg['fill_id'] == str((await fake.state())['trades'][0]['id'])
            assert (await fake.state())['malformed_pending'] == 0   # the nonsense was served


async def test_a_fill_missed_while_the_user_stream_was_down_is_fetched_by_the_next_one(
        reg_addr, fake: FakeBinance):
    """A partial fill happens while the user stream is down and reconciling it fails (an
    unreadable answer); the next execution report of that order says more had executed before
    it than we saw: brokerd.binance fetches the order's trades and reports the missed fill
    first, so both fills reach emsd, once each (before, the missed one was lost for good)."""
    await fake.quote(50000, 50000.01, ask_qty=1.0)
    with trio.fail_after(120):
        async with live_ems(reg_addr) as (book, trades, _):
            oid = await resting_buy(book, trades)                   # 0.1 at 49900
            await fake.ctl('malform', {'request': 'GET /api/v3/order', 'body': {'orderId': 'nonsense'}})
            await fake.ctl('block_user', {'seconds': 3})
            await fake.ctl('drop', {'which': 'user'})
            await fake.quote(49899.99, 49900.0, ask_qty=0.04)       # 0.04 fills, unheard
            await fake.subscribed('user')                            # back; the reconcile fails
            await fake.quote(49899.99, 49900.0, ask_qty=1.0)        # the other 0.06
            seq = await collect_until(trades, FINAL, oid, timeout=30)
            assert [s.resp for s in seq] == ['broker_filled', 'broker_filled', 'broker_executed']
            state = await fake.state()
            assert [(s.brokerd_msg['fill_id'], s.brokerd_msg['size']) for s in seq[:2]] == [
                (str(t['id']), float(t['qty'])) for t in state['trades']]
            assert [float(t['qty']) for t in state['trades']] == [0.04, 0.06]
            assert state['malformed_pending'] == 0                  # the reconcile did fail


async def test_cancel_before_ack_modify_and_cancel_of_a_filled_order(reg_addr, fake: FakeBinance):
    await fake.quote(50000, 50000.01, ask_qty=0.5, bid_qty=0.5)
    with trio.fail_after(120):
        async with live_ems(reg_addr) as (book, trades, _):
            # cancel right away: one venue order, cancelled, one final status
            a = book.send('buy', 49000.0, 0.01)
            book.cancel(a)
            seq = await collect_until(trades, FINAL, a, timeout=30)
            assert seq[-1].resp == 'broker_cancelled', [s.resp for s in seq]
            assert [s.resp for s in seq].count('broker_cancelled') == 1

            # modify: Binance cancel-replaces; the EMS oid (and reqid) stay, one order works
            b = book.send('buy', 49000.0, 0.01)
            assert (await next_status(trades, b, timeout=30)).resp == 'broker_submitted'
            book.update(b, price=49100.0)
            mod = await next_status(trades, b, timeout=30)
            assert mod.resp == 'broker_submitted' and mod.broker_reqid == b
            state = await fake.state()
            legs = [(o['clientOrderId'], o['price'], o['status']) for o in state['orders'] if o['clientOrderId'] == b]
            assert legs == [(b, '49000.00000000', 'CANCELED'), (b, '49100.00000000', 'NEW')]
            book.cancel(b)
            assert (await collect_until(trades, FINAL, b, timeout=30))[-1].resp == 'broker_cancelled'

            # a marketable order fills on arrival; cancelling it afterwards changes nothing
            c = book.send('buy', 50001.0, 0.01)
            seq = await collect_until(trades, FINAL, c, timeout=30)
            assert seq[-1].resp == 'broker_executed'
            book.cancel(c)
            after = await statuses_for(trades, c, 3)
            assert [s.resp for s in after] in ([], ['error']), after
            if after:  # emsd knew it had filled, or the venue said so
                assert 'already closed' in after[0].reason or 'Unknown order sent.' in after[0].reason
            assert not any(s.resp in FINAL for s in after)


@pytest.mark.parametrize('price,size,reason', [
    (50000.0, 100.0, 'Account has insufficient balance for requested action.'),
    (49990.0, 0.00001, 'Filter failure: NOTIONAL'),
])
async def test_rejections_carry_the_venue_reason(reg_addr, fake: FakeBinance, price, size, reason):
    await fake.quote(50000, 50000.01)
    with trio.fail_after(90):
        async with live_ems(reg_addr) as (book, trades, _):
            bad = book.send('buy', price, size)
            seq = await collect_until(trades, FINAL, bad, timeout=30)
            assert seq[-1].resp == 'broker_errored' and reason in seq[-1].reason, seq
            # the dialogue lives on
            good = book.send('buy', 49000.0, 0.01)
            assert (await next_status(trades, good, timeout=30)).resp == 'broker_submitted'
    assert [o['clientOrderId'] for o in (await fake.state())['orders']] == [good]


async def test_streams_drop_and_a_fill_in_the_gap_is_reported_once(reg_addr, fake: FakeBinance):
    from piker_ems.data import open_feed

    await fake.quote(50000, 50000.01, ask_qty=1.0)
    with trio.fail_after(120):
        async with live_ems(reg_addr) as (book, trades, _):
            oid = await resting_buy(book, trades)
            # the user stream goes down (and stays down for 3 s); the order fills meanwhile
            await fake.ctl('block_user', {'seconds': 3})
            await fake.ctl('drop', {'which': 'market'})
            await fake.quote(49899.99, 49900.0, ask_qty=1.0)
            seq = await collect_until(trades, FINAL, oid, timeout=60)
            resps = [s.resp for s in seq]
            assert resps == ['broker_filled', 'broker_executed'], resps
            assert seq[0].brokerd_msg['fill_id'] == str((await fake.state())['trades'][0]['id'])
            assert await statuses_for(trades, oid, 2) == []  # no replay
            assert (await fake.state())['user_ws'] == 1      # resubscribed
            # the market stream came back too
            async with open_feed(FQSN) as feed:
                await moving_market_reaches(feed, fake, 49950.0)


async def test_http_429_backs_off_and_says_so(reg_addr, fake: FakeBinance):
    await fake.quote(50000, 50000.01)
    with trio.fail_after(90):
        async with live_ems(reg_addr) as (book, trades, _):
            await fake.ctl('ratelimit', {'count': 2})
            oid = book.send('buy', 49000.0, 0.01)
            seq = await collect_until(trades, {'broker_submitted', *FINAL}, oid, timeout=30)
            resps = [s.resp for s in seq]
            assert resps == ['broker_rate_limited', 'broker_rate_limited', 'broker_submitted'], resps
            assert 'HTTP 429' in seq[0].reason and 'retrying' in seq[0].reason
    state = await fake.state()
    assert [o['clientOrderId'] for o in state['orders']] == [oid]      # placed once
    assert state['requests'].count('POST /api/v3/order') == 3         # two refused, one taken


async def test_brokerd_restart_reconciles_resting_orders(reg_addr, fake: FakeBinance):
    import os
    import signal

    from _proc import actor_pids

    await fake.quote(50000, 50000.01, ask_qty=1.0)
    with trio.fail_after(150):
        async with live_ems(reg_addr) as (book, trades, _):
            oid = await resting_buy(book, trades)
            [pid] = actor_pids('brokerd.binance', os.getpid())
            os.kill(pid, signal.SIGKILL)
            lost = await next_status(trades, oid, timeout=15)
            assert lost.resp == 'broker_disconnected'
            back = await next_status(trades, oid, timeout=60)
            assert back.resp == 'broker_submitted', back
            # the new brokerd found it at the venue: not placed again
            state = await fake.state()
            assert [o['clientOrderId'] for o in state['orders']] == [oid]
            assert state['requests'].count('POST /api/v3/order') == 1
            # and it still reports the order's life
            await fake.quote(49899.99, 49900.0, ask_qty=1.0)
            seq = await collect_until(trades, FINAL, oid, timeout=30)
            assert [s.resp for s in seq] == ['broker_filled', 'broker_executed']


async def test_without_keys_paper_trades_on_binance_quotes_and_live_is_refused(reg_addr, config_dir, capfd):
    fake = start_fake()
    try:
        write_config(config_dir, fake.config(keys=False))
        await fake.quote(50000, 50000.01)
        with trio.fail_after(90):
            async with open_pikerd(reg_addr):
                async with open_ems(FQSN, mode='paper', name='P') as (book, trades, _):
                    oid = book.send('buy', 50001.0, 0.01)   # marketable on the paper engine
                    seq = await collect_until(trades, FINAL, oid, timeout=30)
                    assert seq[-1].resp == 'broker_executed'
                    assert seq[-2].brokerd_msg['price'] == 50000.01   # the venue's ask
                async with open_ems(FQSN, mode='live', account='binance', name='L') as (book, trades, _):
                    oid = book.send('buy', 49000.0, 0.01)
                    seq = await collect_until(trades, FINAL, oid, timeout=30)
                    assert seq[-1].resp == 'broker_errored'
                    assert 'no API key configured' in seq[-1].reason and '\n' not in seq[-1].reason
        state = await fake.state()
        assert state['orders'] == [] and not [r for r in state['requests'] if 'order' in r]
    finally:
        stop_fake(fake)


async def test_secrets_never_reach_logs(reg_addr, fake: FakeBinance, capfd):
    from _binance_helpers import KEY, SECRET

    await fake.quote(50000, 50000.01)
    with trio.fail_after(90):
        async with live_ems(reg_addr, loglevel='debug') as (book, trades, _):
            bad = book.send('buy', 50000.0, 100.0)   # a refusal: its error text must be clean too
            seq = await collect_until(trades, FINAL, bad, timeout=30)
            assert seq[-1].resp == 'broker_errored'
            assert KEY not in seq[-1].reason and SECRET not in seq[-1].reason
    out, err = capfd.readouterr()
    assert 'binance' in err  # the logs were captured at all
    assert KEY not in out + err and SECRET not in out + err


async def test_dialogue_contract_off_tick_unknown_cancel_and_resent_order(reg_addr, fake: FakeBinance):
    """Straight on brokerd.binance's trades_dialogue (emsd rounds prices to the tick, so an
    off-tick price only reaches the venue from another client of the contract)."""
    from piker_ems.brokers import binance
    from piker_ems.service import maybe_spawn_brokerd

    from _dialogue_helpers import cancel, dialogue, order, recv

    def live(msg: dict) -> dict:
        return {**msg, 'account': 'binance'}

    await fake.quote(50000, 50000.01)
    with trio.fail_after(90):
        async with open_pikerd(reg_addr), maybe_spawn_brokerd('binance') as portal, \
                dialogue(portal, binance.trades_dialogue) as (stream, snapshot):
            assert snapshot['orders'] == [] and snapshot['fills'] == []
            assert snapshot['positions'] == []   # a fresh account: USDT only

            off = live(order('buy', 49990.005, 0.01, symbol='btcusdt'))
            await stream.send(off)
            ack, err = await recv(stream, 2, timeout=30)
            assert (ack['name'], ack['reqid']) == ('ack', off['oid'])
            assert err['name'] == 'error' and err['reason'] == 'binance: Filter failure: PRICE_FILTER'

            nope = {**cancel('no-such-order', 'no-such-order'), 'symbol': 'btcusdt', 'account': 'binance'}
            await stream.send(nope)
            [err] = await recv(stream, 1, timeout=30)
            assert err['name'] == 'error' and err['reason'] == 'binance: cancel refused: Unknown order sent.'

            good = live(order('buy', 49000.0, 0.01, symbol='btcusdt'))
            await stream.send(good)
            ack, st = await recv(stream, 2, timeout=30)
            assert (ack['name'], st['name'], st['status']) == ('ack', 'status', 'submitted')
            await stream.send(good)  # emsd re-sends after a crash: the same order, acked again
            [again] = await recv(stream, 1, timeout=30)
            assert (again['name'], again['reqid']) == ('ack', good['oid'])
    state = await fake.state()
    assert [o['clientOrderId'] for o in state['orders']] == [good['oid']]
