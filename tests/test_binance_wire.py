"""The fake Binance exchange's payloads against ccxt's own parsers (its unified API), and the
exchange's signature checks: the fake must be one a real ccxt client accepts."""
from __future__ import annotations

import asyncio

import pytest

from _binance_helpers import KEY, SECRET, start_fake, stop_fake


@pytest.fixture
def fake():
    fake = start_fake()
    yield fake
    stop_fake(fake)


def _client(fake, key: str = KEY, secret: str = SECRET):
    from piker_ems.brokers.binance._client import _make_exchange
    from piker_ems.brokers.binance._config import BinanceSettings

    settings = BinanceSettings(rest_url=fake.url, ws_url=f'ws://{fake.host}/ws',
                               ws_api_url=f'ws://{fake.host}/ws-api/v3', api_key=key, secret=secret)
    return _make_exchange(settings)


def test_ccxt_parses_every_rest_payload(fake):
    fake.ctl_sync('quote', {'bid': 50000, 'ask': 50000.01, 'ask_qty': 0.3})

    async def main():
        ex = await _client(fake)
        try:
            markets = await ex.load_markets()
            m = markets['BTC/USDT']
            assert (m['id'], m['precision']['price'], m['precision']['amount']) == ('BTCUSDT', 0.01, 1e-05)
            assert m['limits']['cost']['min'] == 5.0
            ob = await ex.fetch_bids_asks(['BTC/USDT'])
            assert (ob['BTC/USDT']['bid'], ob['BTC/USDT']['ask']) == (50000.0, 50000.01)
            bars = await ex.fetch_ohlcv('BTC/USDT', '1m', limit=5)
            assert len(bars) == 5 and all(len(b) == 6 for b in bars)
            resting = await ex.create_order('BTC/USDT', 'limit', 'buy', 0.01, 49000, {'clientOrderId': 'abc-1'})
            assert (resting['clientOrderId'], resting['status'], resting['price'], resting['amount']) == ('abc-1', 'open', 49000.0, 0.01)
            taker = await ex.create_order('BTC/USDT', 'limit', 'buy', 0.5, 50001, {'clientOrderId': 'abc-2'})
            assert (taker['filled'], taker['remaining'], taker['status']) == (0.3, 0.2, 'open')  # 0.3 shown
            [o] = [o for o in await ex.fetch_open_orders('BTC/USDT') if o['clientOrderId'] == 'abc-1']
            assert o['id'] == resting['id']
            got = await ex.fetch_order(resting['id'], 'BTC/USDT')
            assert got['status'] == 'open'
            trades = await ex.fetch_my_trades('BTC/USDT')
            assert [(t['price'], t['amount'], t['side'], t['takerOrMaker']) for t in trades] == [(50000.01, 0.3, 'buy', 'taker')]
            assert trades[0]['fee']['currency'] == 'USDT' and trades[0]['fee']['cost'] > 0
            edited = await ex.edit_order(resting['id'], 'BTC/USDT', 'limit', 'buy', 0.01, 49100, {'newClientOrderId': 'abc-1'})
            assert (edited['price'], edited['clientOrderId']) == (49100.0, 'abc-1')
            cancelled = await ex.cancel_order(edited['id'], 'BTC/USDT')
            assert cancelled['status'] == 'canceled'
            bal = await ex.fetch_balance()
            assert bal['BTC']['total'] == pytest.approx(0.3)
            assert bal['USDT']['used'] == pytest.approx(0.2 * 50001)   # the taker's rest still rests
        finally:
            await ex.close()

    asyncio.run(main())


@pytest.mark.parametrize('creds,error,reason', [
    ({'secret': 'not-the-secret'}, 'AuthenticationError', 'Signature for this request is not valid'),
    ({'key': 'not-the-key'}, 'ExchangeError', 'Invalid API-key'),
])
def test_signatures_are_checked(fake, creds, error, reason):
    import ccxt

    async def main():
        ex = await _client(fake, **creds)
        try:
            with pytest.raises(getattr(ccxt, error), match=reason):
                await ex.fetch_balance()
        finally:
            await ex.close()

    asyncio.run(main())


def test_ccxt_pro_parses_the_streams(fake):
    async def main():
        ex = await _client(fake)
        try:
            await ex.load_markets()
            await ex.ensure_user_data_stream_ws_subscribe_signature('spot')   # signed subscription
            book = asyncio.ensure_future(ex.watch_bids_asks(['BTC/USDT']))
            tape = asyncio.ensure_future(ex.watch_trades('BTC/USDT'))
            orders = asyncio.ensure_future(ex.watch_orders())
            await asyncio.to_thread(fake.wait_subscribed, 'btcusdt@bookTicker', 'btcusdt@trade')
            await asyncio.to_thread(fake.ctl_sync, 'quote', {'bid': 50000, 'ask': 50000.01, 'ask_qty': 1})
            await ex.create_order('BTC/USDT', 'limit', 'buy', 0.01, 50001, {'clientOrderId': 'w-1'})
            tickers = await asyncio.wait_for(book, 10)
            assert tickers['BTC/USDT']['bid'] == 50000.0
            printed = await asyncio.wait_for(tape, 10)
            assert printed[0]['symbol'] == 'BTC/USDT'
            seen = await asyncio.wait_for(orders, 10)
            assert seen[0]['clientOrderId'] == 'w-1'
        finally:
            await ex.close()

    asyncio.run(main())


def test_settings_precedence_and_secrets_kept_out_of_repr(config_dir, monkeypatch):
    from piker_ems.brokers.binance._config import LIVE_URLS, TESTNET_URLS, load_settings
    from conftest import write_config

    monkeypatch.delenv('PIKER_EMS_BINANCE_API_KEY', raising=False)
    monkeypatch.delenv('PIKER_EMS_BINANCE_SECRET', raising=False)
    assert load_settings().rest_url == LIVE_URLS['rest_url'] and not load_settings().has_keys
    write_config(config_dir, '[binance]\ntestnet = true\napi_key = "file-key"\nsecret = "file-secret"\n'
                             'ws_url = "ws://127.0.0.1:1/ws"\n')
    s = load_settings()
    assert (s.rest_url, s.ws_api_url) == (TESTNET_URLS['rest_url'], TESTNET_URLS['ws_api_url'])
    assert s.ws_url == 'ws://127.0.0.1:1/ws'          # an explicit URL wins over testnet
    assert (s.api_key, s.secret) == ('file-key', 'file-secret')
    monkeypatch.setenv('PIKER_EMS_BINANCE_API_KEY', 'env-key')
    monkeypatch.setenv('PIKER_EMS_BINANCE_SECRET', 'env-secret')
    s = load_settings()
    assert (s.api_key, s.secret) == ('env-key', 'env-secret')   # the environment wins
    assert 'env-key' not in repr(s) and 'env-secret' not in repr(s) and 'env-secret' not in str(s)
