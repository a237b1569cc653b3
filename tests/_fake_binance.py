# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
A local fake Binance **spot** exchange for offline tests and demos (aiohttp).

It speaks the wire protocol ccxt sends and parses, with the payload shapes of Binance's spot API
documentation (developers.binance.com, "Spot API"): REST ``/api/v3/...`` (exchangeInfo, time,
klines, ticker/bookTicker, order create/cancel/query/cancelReplace, openOrders, myTrades,
account) with HMAC-SHA256 signatures checked (``X-MBX-APIKEY`` + ``signature`` over the query
and body), the market websocket ``/ws[/<n>]`` (``SUBSCRIBE`` to ``<sym>@bookTicker`` and
``<sym>@trade``) and the websocket API ``/ws-api/v3`` (``userDataStream.subscribe.signature``,
then ``{"subscriptionId", "event"}`` frames carrying ``executionReport`` and
``outboundAccountPosition``).

It matches orders against its own moving quotes: a random walk of the mid, one tick of spread,
a displayed size on each side. A resting limit order executes, at its own price, when the other
side of the book crosses it, for at most the displayed size per quote (so big orders fill in
parts). An incoming marketable order executes at once against the book.

Test controls (not Binance: plain JSON under ``/_fake/``): ``quote`` (set bid/ask/sizes, one
update), ``drop`` (close market or user websockets), ``block_user`` (refuse user-stream
connections for a while), ``ratelimit`` (answer the next N REST calls with 429), ``subscribed``
(answer once the given streams are subscribed), ``broadcast`` (one raw frame, malformed or not,
to a market stream's or the user-data subscribers), ``malform`` (the next answer to a REST
request is the given body), ``state``.

Run standalone: ``python tests/_fake_binance.py --port 9999 --api-key k --secret s`` (prints
``listening on http://127.0.0.1:<port>``).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

TICK = Decimal('0.01')
STEP = Decimal('0.00001')
MIN_NOTIONAL = Decimal('5')


def _s(x: Decimal | float | int) -> str:
    """Binance prints decimals with 8 places."""
    return f'{Decimal(str(x)):.8f}'


def _now_ms() -> int:
    return int(time.time() * 1000)


class BinanceError(Exception):
    def __init__(self, http: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.http, self.code, self.msg = http, code, msg


@dataclass
class FakeOrder:
    order_id: int
    client_id: str
    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    time: int
    executed: Decimal = Decimal(0)
    quote_qty: Decimal = Decimal(0)
    status: str = 'NEW'
    update_time: int = 0

    def wire(self) -> dict[str, Any]:
        """The order as ``GET /api/v3/order`` shows it."""
        return {
            'symbol': self.symbol, 'orderId': self.order_id, 'orderListId': -1,
            'clientOrderId': self.client_id, 'price': _s(self.price), 'origQty': _s(self.qty),
            'executedQty': _s(self.executed), 'cummulativeQuoteQty': _s(self.quote_qty),
            'status': self.status, 'timeInForce': 'GTC', 'type': 'LIMIT', 'side': self.side,
            'stopPrice': _s(0), 'icebergQty': _s(0), 'time': self.time,
            'updateTime': self.update_time or self.time, 'isWorking': True,
            'workingTime': self.time, 'origQuoteOrderQty': _s(0),
            'selfTradePreventionMode': 'EXPIRE_MAKER',
        }

    def result(self, transact: int) -> dict[str, Any]:
        """The ``newOrderRespType=RESULT`` answer of ``POST /api/v3/order``."""
        w = self.wire()
        for k in ('stopPrice', 'icebergQty', 'time', 'updateTime', 'isWorking', 'origQuoteOrderQty'):
            w.pop(k)
        w['transactTime'] = transact
        w['origQuoteOrderQty'] = _s(0)
        return w


@dataclass
class Market:
    symbol: str = 'BTCUSDT'
    base: str = 'BTC'
    quote: str = 'USDT'
    bid: Decimal = Decimal('50000.00')
    ask: Decimal = Decimal('50000.01')
    bid_qty: Decimal = Decimal('0.50000')
    ask_qty: Decimal = Decimal('0.50000')
    update_id: int = 1000
    last: Decimal = Decimal('50000.00')


@dataclass
class Exchange:
    api_key: str
    secret: str
    rate: float = 5.0          # quote updates per second (0: only /_fake/quote moves it)
    seed: int = 7
    market: Market = field(default_factory=Market)
    balances: dict[str, list[Decimal]] = field(default_factory=dict)   # asset -> [free, locked]
    orders: dict[int, FakeOrder] = field(default_factory=dict)
    trades: list[dict] = field(default_factory=list)
    next_order_id: int = 100_000
    next_trade_id: int = 7_000_000
    market_ws: dict = field(default_factory=dict)      # ws -> the streams it subscribed
    user_ws: set = field(default_factory=set)
    user_blocked_until: float = 0.0
    ratelimited: int = 0
    malformed: dict[str, list] = field(default_factory=dict)   # 'GET /api/v3/x' -> next bodies
    requests: list[str] = field(default_factory=list)
    public_trades: list = field(default_factory=list)  # the tape (GET /api/v3/trades)

    def __post_init__(self) -> None:
        if not self.balances:
            self.balances = {'BTC': [Decimal('0.00000000'), Decimal(0)],
                             'USDT': [Decimal('100000.00000000'), Decimal(0)]}
        self.rng = random.Random(self.seed)
        self.subs_changed = asyncio.Event()   # set (and replaced) on every (UN)SUBSCRIBE

    def subscriptions_changed(self) -> None:
        self.subs_changed.set()
        self.subs_changed = asyncio.Event()

    def subscribed(self) -> set[str]:
        """Every market stream some open websocket is subscribed to (and ``user`` while a
        user-data stream is)."""
        return set().union(*self.market_ws.values(), ['user'] if self.user_ws else [])

    # -- the market ----------------------------------------------------------------

    def step(self) -> None:
        m = self.market
        move = TICK * self.rng.choice([-3, -2, -1, 0, 1, 2, 3])
        m.bid = max(TICK, m.bid + move)
        m.ask = m.bid + TICK
        m.bid_qty = STEP * self.rng.randint(1000, 60000)
        m.ask_qty = STEP * self.rng.randint(1000, 60000)
        self.publish_quote()
        if self.rng.random() < 0.5:
            side_buy = self.rng.random() < 0.5
            self.publish_trade(m.ask if side_buy else m.bid, STEP * self.rng.randint(10, 5000), not side_buy)

    def publish_quote(self) -> None:
        m = self.market
        m.update_id += 1
        self.broadcast(f'{m.symbol.lower()}@bookTicker', {
            'u': m.update_id, 's': m.symbol, 'b': _s(m.bid), 'B': _s(m.bid_qty),
            'a': _s(m.ask), 'A': _s(m.ask_qty),
        })
        self.match()

    def publish_trade(self, price: Decimal, qty: Decimal, buyer_maker: bool) -> None:
        m = self.market
        m.last = price
        self.next_trade_id += 1
        now = _now_ms()
        self.public_trades.append({
            'id': self.next_trade_id, 'price': _s(price), 'qty': _s(qty), 'quoteQty': _s(price * qty),
            'time': now, 'isBuyerMaker': buyer_maker, 'isBestMatch': True})
        del self.public_trades[:-1000]
        self.broadcast(f'{m.symbol.lower()}@trade', {
            'e': 'trade', 'E': now, 's': m.symbol, 't': self.next_trade_id, 'p': _s(price),
            'q': _s(qty), 'T': now, 'm': buyer_maker, 'M': True,
        })

    def broadcast(self, stream: str, payload: dict) -> None:
        text = json.dumps(payload)
        for ws, streams in list(self.market_ws.items()):
            if stream in streams and not ws.closed:
                asyncio.ensure_future(self._send(ws, text))

    @staticmethod
    async def _send(ws: web.WebSocketResponse, text: str) -> None:
        try:
            await ws.send_str(text)
        except Exception:
            pass

    def match(self) -> None:
        m = self.market
        for o in sorted(self.orders.values(), key=lambda o: o.order_id):
            if o.status not in ('NEW', 'PARTIALLY_FILLED'):
                continue
            if o.side == 'BUY' and m.ask <= o.price and m.ask_qty > 0:
                qty = min(o.qty - o.executed, m.ask_qty)
                m.ask_qty -= qty
                self.execute(o, o.price, qty, maker=True)
            elif o.side == 'SELL' and m.bid >= o.price and m.bid_qty > 0:
                qty = min(o.qty - o.executed, m.bid_qty)
                m.bid_qty -= qty
                self.execute(o, o.price, qty, maker=True)

    def execute(self, o: FakeOrder, price: Decimal, qty: Decimal, maker: bool) -> None:
        now = _now_ms()
        self.next_trade_id += 1
        tid = self.next_trade_id
        o.executed += qty
        o.quote_qty += price * qty
        o.status = 'FILLED' if o.executed >= o.qty else 'PARTIALLY_FILLED'
        o.update_time = now
        base, quote = self.balances[self.market.base], self.balances[self.market.quote]
        fee = (price * qty * Decimal('0.001')).quantize(Decimal('0.00000001'))  # 10 bps in USDT
        if o.side == 'BUY':
            quote[1] -= o.price * qty
            base[0] += qty
            quote[0] -= fee
        else:
            base[1] -= qty
            quote[0] += price * qty - fee
        self.trades.append({
            'symbol': o.symbol, 'id': tid, 'orderId': o.order_id, 'orderListId': -1,
            'price': _s(price), 'qty': _s(qty), 'quoteQty': _s(price * qty),
            'commission': _s(fee), 'commissionAsset': self.market.quote, 'time': now,
            'isBuyer': o.side == 'BUY', 'isMaker': maker, 'isBestMatch': True,
        })
        self.report(o, 'TRADE', last_qty=qty, last_price=price, trade_id=tid, fee=fee, maker=maker)
        self.account_update()
        self.publish_trade(price, qty, buyer_maker=(o.side == 'BUY') == maker)

    # -- user events --------------------------------------------------------------

    def report(self, o: FakeOrder, exec_type: str, *, last_qty: Decimal = Decimal(0),
               last_price: Decimal = Decimal(0), trade_id: int = -1, fee: Decimal = Decimal(0),
               maker: bool = False, client_id: str | None = None, orig_client_id: str = '',
               reason: str = 'NONE') -> None:
        now = _now_ms()
        self.user_event({
            'e': 'executionReport', 'E': now, 's': o.symbol, 'c': client_id or o.client_id,
            'S': o.side, 'o': 'LIMIT', 'f': 'GTC', 'q': _s(o.qty), 'p': _s(o.price),
            'P': _s(0), 'F': _s(0), 'g': -1, 'C': orig_client_id, 'x': exec_type,
            'X': o.status, 'r': reason, 'i': o.order_id, 'l': _s(last_qty), 'z': _s(o.executed),
            'L': _s(last_price), 'n': _s(fee), 'N': self.market.quote if trade_id != -1 else None,
            'T': now, 't': trade_id, 'v': 0, 'I': self.next_trade_id * 10, 'w': o.status == 'NEW',
            'm': maker, 'M': False, 'O': o.time, 'Z': _s(o.quote_qty),
            'Y': _s(last_price * last_qty), 'Q': _s(0), 'W': o.time, 'V': 'EXPIRE_MAKER',
        })

    def account_update(self) -> None:
        now = _now_ms()
        self.user_event({
            'e': 'outboundAccountPosition', 'E': now, 'u': now,
            'B': [{'a': a, 'f': _s(fl[0]), 'l': _s(fl[1])} for a, fl in sorted(self.balances.items())],
        })

    def user_event(self, event: dict) -> None:
        text = json.dumps({'subscriptionId': 0, 'event': event})
        for ws in list(self.user_ws):
            if not ws.closed:
                asyncio.ensure_future(self._send(ws, text))

    # -- orders -----------------------------------------------------------------------

    def find(self, p: dict, missing: tuple[int, str] = (-2013, 'Order does not exist.')) -> FakeOrder:
        if p.get('symbol', '').upper() != self.market.symbol:
            raise BinanceError(400, -1121, 'Invalid symbol.')
        if 'orderId' in p:
            o = self.orders.get(int(p['orderId']))
        elif 'origClientOrderId' in p:
            matches = [o for o in self.orders.values() if o.client_id == p['origClientOrderId']]
            # the open one wins, else the most recent
            matches.sort(key=lambda o: (o.status in ('NEW', 'PARTIALLY_FILLED'), o.order_id))
            o = matches[-1] if matches else None
        else:
            raise BinanceError(400, -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        if o is None:
            raise BinanceError(400, *missing)
        return o

    def new_order(self, p: dict) -> FakeOrder:
        if p.get('symbol', '').upper() != self.market.symbol:
            raise BinanceError(400, -1121, 'Invalid symbol.')
        if p.get('type') != 'LIMIT':
            raise BinanceError(400, -1116, 'Invalid orderType.')
        if p.get('side') not in ('BUY', 'SELL'):
            raise BinanceError(400, -1117, 'Invalid side.')
        for k in ('timeInForce', 'quantity', 'price'):
            if k not in p:
                raise BinanceError(400, -1102, f"Mandatory parameter '{k}' was not sent, was empty/null, or malformed.")
        price, qty = Decimal(p['price']), Decimal(p['quantity'])
        if price <= 0 or price % TICK != 0:
            raise BinanceError(400, -1013, 'Filter failure: PRICE_FILTER')
        if qty <= 0 or qty % STEP != 0:
            raise BinanceError(400, -1013, 'Filter failure: LOT_SIZE')
        if price * qty < MIN_NOTIONAL:
            raise BinanceError(400, -1013, 'Filter failure: NOTIONAL')
        cid = p.get('newClientOrderId') or f'fake{self.next_order_id}'
        if any(o.client_id == cid and o.status in ('NEW', 'PARTIALLY_FILLED') for o in self.orders.values()):
            raise BinanceError(400, -2010, 'Duplicate order sent.')
        base, quote = self.balances[self.market.base], self.balances[self.market.quote]
        if p['side'] == 'BUY':
            if quote[0] < price * qty:
                raise BinanceError(400, -2010, 'Account has insufficient balance for requested action.')
            quote[0] -= price * qty
            quote[1] += price * qty
        else:
            if base[0] < qty:
                raise BinanceError(400, -2010, 'Account has insufficient balance for requested action.')
            base[0] -= qty
            base[1] += qty
        self.next_order_id += 1
        o = FakeOrder(self.next_order_id, cid, self.market.symbol, p['side'], price, qty, _now_ms())
        self.orders[o.order_id] = o
        self.report(o, 'NEW')
        self.account_update()
        # an incoming marketable order takes liquidity at once
        m = self.market
        if o.side == 'BUY' and m.ask <= price and m.ask_qty > 0:
            q = min(qty, m.ask_qty)
            m.ask_qty -= q
            self.execute(o, m.ask, q, maker=False)
        elif o.side == 'SELL' and m.bid >= price and m.bid_qty > 0:
            q = min(qty, m.bid_qty)
            m.bid_qty -= q
            self.execute(o, m.bid, q, maker=False)
        return o

    def cancel(self, p: dict) -> tuple[FakeOrder, str]:
        o = self.find(p, missing=(-2011, 'Unknown order sent.'))
        if o.status not in ('NEW', 'PARTIALLY_FILLED'):
            raise BinanceError(400, -2011, 'Unknown order sent.')
        o.status = 'CANCELED'
        o.update_time = _now_ms()
        rest = o.qty - o.executed
        if o.side == 'BUY':
            q = self.balances[self.market.quote]
            q[1] -= o.price * rest
            q[0] += o.price * rest
        else:
            b = self.balances[self.market.base]
            b[1] -= rest
            b[0] += rest
        cancel_id = p.get('newClientOrderId') or f'cancel{o.order_id}'
        self.report(o, 'CANCELED', client_id=cancel_id, orig_client_id=o.client_id)
        self.account_update()
        return o, cancel_id

    def cancel_wire(self, o: FakeOrder, cancel_id: str) -> dict:
        w = o.result(_now_ms())
        w.pop('workingTime', None)
        w['origClientOrderId'] = o.client_id
        w['clientOrderId'] = cancel_id
        return w


# -- HTTP ---------------------------------------------------------------------------------

def _exchange_info(ex: Exchange) -> dict:
    m = ex.market
    return {
        'timezone': 'UTC', 'serverTime': _now_ms(),
        'rateLimits': [
            {'rateLimitType': 'REQUEST_WEIGHT', 'interval': 'MINUTE', 'intervalNum': 1, 'limit': 6000},
            {'rateLimitType': 'ORDERS', 'interval': 'SECOND', 'intervalNum': 10, 'limit': 100},
            {'rateLimitType': 'ORDERS', 'interval': 'DAY', 'intervalNum': 1, 'limit': 200000},
            {'rateLimitType': 'RAW_REQUESTS', 'interval': 'MINUTE', 'intervalNum': 5, 'limit': 61000},
        ],
        'exchangeFilters': [],
        'symbols': [{
            'symbol': m.symbol, 'status': 'TRADING', 'baseAsset': m.base, 'baseAssetPrecision': 8,
            'quoteAsset': m.quote, 'quotePrecision': 8, 'quoteAssetPrecision': 8,
            'baseCommissionPrecision': 8, 'quoteCommissionPrecision': 8,
            'orderTypes': ['LIMIT', 'LIMIT_MAKER', 'MARKET', 'STOP_LOSS_LIMIT', 'TAKE_PROFIT_LIMIT'],
            'icebergAllowed': True, 'ocoAllowed': True, 'otoAllowed': True,
            'quoteOrderQtyMarketAllowed': True, 'allowTrailingStop': True,
            'cancelReplaceAllowed': True, 'amendAllowed': True, 'pegInstructionsAllowed': True,
            'isSpotTradingAllowed': True, 'isMarginTradingAllowed': True,
            'filters': [
                {'filterType': 'PRICE_FILTER', 'minPrice': _s(TICK), 'maxPrice': '1000000.00000000', 'tickSize': _s(TICK)},
                {'filterType': 'LOT_SIZE', 'minQty': _s(STEP), 'maxQty': '9000.00000000', 'stepSize': _s(STEP)},
                {'filterType': 'ICEBERG_PARTS', 'limit': 10},
                {'filterType': 'MARKET_LOT_SIZE', 'minQty': '0.00000000', 'maxQty': '95.00000000', 'stepSize': '0.00000000'},
                {'filterType': 'TRAILING_DELTA', 'minTrailingAboveDelta': 10, 'maxTrailingAboveDelta': 2000,
                 'minTrailingBelowDelta': 10, 'maxTrailingBelowDelta': 2000},
                {'filterType': 'PERCENT_PRICE_BY_SIDE', 'bidMultiplierUp': '5', 'bidMultiplierDown': '0.2',
                 'askMultiplierUp': '5', 'askMultiplierDown': '0.2', 'avgPriceMins': 5},
                {'filterType': 'NOTIONAL', 'minNotional': _s(MIN_NOTIONAL), 'applyMinToMarket': True,
                 'maxNotional': '9000000.00000000', 'applyMaxToMarket': False, 'avgPriceMins': 5},
                {'filterType': 'MAX_NUM_ORDERS', 'maxNumOrders': 200},
                {'filterType': 'MAX_NUM_ALGO_ORDERS', 'maxNumAlgoOrders': 5},
            ],
            'permissions': [], 'permissionSets': [['SPOT', 'MARGIN']],
            'defaultSelfTradePreventionMode': 'EXPIRE_MAKER',
            'allowedSelfTradePreventionModes': ['EXPIRE_TAKER', 'EXPIRE_MAKER', 'EXPIRE_BOTH', 'DECREMENT'],
        }],
    }


_INTERVALS = {'1s': 1, '1m': 60, '3m': 180, '5m': 300, '15m': 900, '30m': 1800, '1h': 3600,
              '2h': 7200, '4h': 14400, '6h': 21600, '8h': 28800, '12h': 43200, '1d': 86400}


def _klines(ex: Exchange, p: dict) -> list[list]:
    if p.get('symbol', '').upper() != ex.market.symbol:
        raise BinanceError(400, -1121, 'Invalid symbol.')
    period = _INTERVALS.get(p.get('interval', ''))
    if period is None:
        raise BinanceError(400, -1120, 'Invalid interval.')
    limit = min(int(p.get('limit', 500)), 1000)
    ms = period * 1000
    end = int(p['endTime']) if 'endTime' in p else _now_ms()
    start = int(p['startTime']) if 'startTime' in p else None
    last_open = end // ms * ms
    if start is not None:
        first = -(-start // ms) * ms
        opens = [t for t in range(first, min(last_open, first + ms * (limit - 1)) + 1, ms)]
    else:
        opens = [last_open - ms * i for i in range(limit)][::-1]
    out = []
    mid = float(ex.market.bid)
    vol = 0.00003 * period ** 0.5          # relative move per bar, like the live walk's
    walk = random.Random(last_open // ms)
    close = mid
    closes = {}
    for t in sorted(opens, reverse=True):  # walk back from today's price
        closes[t] = close
        close *= 1 + walk.uniform(-vol, vol)
    for t in opens:
        r = random.Random(t // ms)   # deterministic per bar
        c = closes[t]
        o = c * (1 + r.uniform(-vol, vol))
        h, l = max(o, c) * (1 + r.uniform(0, vol / 2)), min(o, c) * (1 - r.uniform(0, vol / 2))
        v = r.uniform(1, 50)
        out.append([t, f'{o:.2f}', f'{h:.2f}', f'{l:.2f}', f'{c:.2f}', f'{v:.5f}', t + ms - 1,
                    f'{v * c:.8f}', r.randint(100, 2000), f'{v / 2:.5f}', f'{v * c / 2:.8f}', '0'])
    return out


def _error(err: BinanceError, headers: dict | None = None) -> web.Response:
    return web.json_response({'code': err.code, 'msg': err.msg}, status=err.http, headers=headers)


def make_app(ex: Exchange) -> web.Application:
    routes = web.RouteTableDef()

    async def params_of(request: web.Request, signed: bool) -> dict:
        ex.requests.append(f'{request.method} {request.path}')
        if ex.ratelimited > 0:
            ex.ratelimited -= 1
            raise _Limited()
        query = request.query_string
        body = (await request.text()) if request.can_read_body else ''
        params = dict(parse_qsl(query, keep_blank_values=True))
        params.update(dict(parse_qsl(body, keep_blank_values=True)))
        if signed:
            if request.headers.get('X-MBX-APIKEY') != ex.api_key:
                raise BinanceError(401, -2015, 'Invalid API-key, IP, or permissions for action.')
            total = query + body
            sig = params.pop('signature', None)
            unsigned = total.replace(f'&signature={sig}', '').replace(f'signature={sig}', '')
            want = hmac.new(ex.secret.encode(), unsigned.encode(), hashlib.sha256).hexdigest()
            if not sig or not hmac.compare_digest(sig, want):
                raise BinanceError(400, -1022, 'Signature for this request is not valid.')
            ts, window = int(params.get('timestamp', 0)), int(params.get('recvWindow', 5000))
            if abs(_now_ms() - ts) > window:
                raise BinanceError(400, -1021, "Timestamp for this request is outside of the recvWindow.")
        return params

    def endpoint(method: str, path: str, signed: bool = False):
        def deco(fn):
            async def handler(request: web.Request) -> web.StreamResponse:
                try:
                    p = await params_of(request, signed)
                    canned = ex.malformed.get(f'{method} {path}')
                    if canned:
                        return web.json_response(canned.pop(0))
                    return web.json_response(fn(p))
                except _Limited:
                    return web.json_response(
                        {'code': -1003, 'msg': 'Too many requests; current limit of IP(127.0.0.1) is 6000 '
                         'requests per minute. Please use the websocket for live updates to avoid polling the API.'},
                        status=429, headers={'Retry-After': '1'})
                except BinanceError as err:
                    return _error(err)
            routes.route(method, path)(handler)
            return fn
        return deco

    @endpoint('GET', '/api/v3/ping')
    def ping(p):
        return {}

    @endpoint('GET', '/api/v3/time')
    def server_time(p):
        return {'serverTime': _now_ms()}

    @endpoint('GET', '/api/v3/exchangeInfo')
    def exchange_info(p):
        return _exchange_info(ex)

    @endpoint('GET', '/api/v3/klines')
    def klines(p):
        return _klines(ex, p)

    @endpoint('GET', '/api/v3/ticker/bookTicker')
    def book_ticker(p):
        m = ex.market
        return {'symbol': m.symbol, 'bidPrice': _s(m.bid), 'bidQty': _s(m.bid_qty),
                'askPrice': _s(m.ask), 'askQty': _s(m.ask_qty)}

    def placed(o: FakeOrder, p: dict) -> dict:
        out = o.result(_now_ms())
        if p.get('newOrderRespType') == 'FULL':  # RESULT plus the order's immediate fills
            out['fills'] = [{'price': t['price'], 'qty': t['qty'], 'commission': t['commission'],
                             'commissionAsset': t['commissionAsset'], 'tradeId': t['id']}
                            for t in ex.trades if t['orderId'] == o.order_id]
        return out

    @endpoint('GET', '/api/v3/trades')
    def recent_trades(p):
        if p.get('symbol', '').upper() != ex.market.symbol:
            raise BinanceError(400, -1121, 'Invalid symbol.')
        return ex.public_trades[-min(int(p.get('limit', 500)), 1000):]

    @endpoint('POST', '/api/v3/order', signed=True)
    def post_order(p):
        return placed(ex.new_order(p), p)

    @endpoint('DELETE', '/api/v3/order', signed=True)
    def delete_order(p):
        return ex.cancel_wire(*ex.cancel(p))

    @endpoint('GET', '/api/v3/order', signed=True)
    def get_order(p):
        return ex.find(p).wire()

    @endpoint('POST', '/api/v3/order/cancelReplace', signed=True)
    def cancel_replace(p):
        cancel_p = {'symbol': p.get('symbol', '')}
        if 'cancelOrderId' in p:
            cancel_p['orderId'] = p['cancelOrderId']
        if 'cancelOrigClientOrderId' in p:
            cancel_p['origClientOrderId'] = p['cancelOrigClientOrderId']
        if 'cancelNewClientOrderId' in p:
            cancel_p['newClientOrderId'] = p['cancelNewClientOrderId']
        try:
            old, cancel_id = ex.cancel(cancel_p)
        except BinanceError as err:
            raise BinanceError(400, -2022, json.dumps({
                'code': -2022, 'msg': 'Order cancel-replace failed.',
                'data': {'cancelResult': 'FAILURE', 'newOrderResult': 'NOT_ATTEMPTED',
                         'cancelResponse': {'code': err.code, 'msg': err.msg}, 'newOrderResponse': None}}))
        new_p = {k: v for k, v in p.items() if not k.startswith('cancel')}
        try:
            new = ex.new_order(new_p)
        except BinanceError as err:
            raise BinanceError(409, -2021, json.dumps({
                'code': -2021, 'msg': 'Order cancel-replace partially failed.',
                'data': {'cancelResult': 'SUCCESS', 'newOrderResult': 'FAILURE',
                         'cancelResponse': ex.cancel_wire(old, cancel_id),
                         'newOrderResponse': {'code': err.code, 'msg': err.msg}}}))
        return {'cancelResult': 'SUCCESS', 'newOrderResult': 'SUCCESS',
                'cancelResponse': ex.cancel_wire(old, cancel_id), 'newOrderResponse': placed(new, new_p)}

    @endpoint('GET', '/api/v3/openOrders', signed=True)
    def open_orders(p):
        return [o.wire() for o in sorted(ex.orders.values(), key=lambda o: o.order_id)
                if o.status in ('NEW', 'PARTIALLY_FILLED')
                and (not p.get('symbol') or o.symbol == p['symbol'].upper())]

    @endpoint('GET', '/api/v3/myTrades', signed=True)
    def my_trades(p):
        if p.get('symbol', '').upper() != ex.market.symbol:
            raise BinanceError(400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        out = ex.trades
        if 'orderId' in p:
            out = [t for t in out if t['orderId'] == int(p['orderId'])]
        if 'fromId' in p:
            out = [t for t in out if t['id'] >= int(p['fromId'])]
        if 'startTime' in p:
            out = [t for t in out if t['time'] >= int(p['startTime'])]
        if 'endTime' in p:
            out = [t for t in out if t['time'] <= int(p['endTime'])]
        limit = min(int(p.get('limit', 500)), 1000)
        return out[:limit] if 'fromId' in p or 'startTime' in p else out[-limit:]

    @endpoint('GET', '/api/v3/account', signed=True)
    def account(p):
        now = _now_ms()
        return {
            'makerCommission': 10, 'takerCommission': 10, 'buyerCommission': 0, 'sellerCommission': 0,
            'commissionRates': {'maker': '0.00100000', 'taker': '0.00100000', 'buyer': '0.00000000', 'seller': '0.00000000'},
            'canTrade': True, 'canWithdraw': True, 'canDeposit': True, 'brokered': False,
            'requireSelfTradePrevention': False, 'preventSor': False, 'updateTime': now,
            'accountType': 'SPOT',
            'balances': [{'asset': a, 'free': _s(fl[0]), 'locked': _s(fl[1])} for a, fl in sorted(ex.balances.items())],
            'permissions': ['SPOT'], 'uid': 354937868,
        }

    # -- websockets ----------------------------------------------------------------------

    async def market_ws(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        streams = ex.market_ws[ws] = set()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                req = json.loads(msg.data)
                if req.get('method') == 'SUBSCRIBE':
                    streams.update(req.get('params', []))
                elif req.get('method') == 'UNSUBSCRIBE':
                    streams.difference_update(req.get('params', []))
                await ws.send_str(json.dumps({'result': None, 'id': req.get('id')}))
                ex.subscriptions_changed()
        finally:
            ex.market_ws.pop(ws, None)
            ex.subscriptions_changed()
        return ws

    routes.get('/ws')(market_ws)
    routes.get('/ws/{stream}')(market_ws)

    @routes.get('/ws-api/v3')
    async def ws_api(request: web.Request) -> web.StreamResponse:
        if time.monotonic() < ex.user_blocked_until:
            return web.Response(status=503, text='Service Unavailable')
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                req = json.loads(msg.data)
                rid, method, p = req.get('id'), req.get('method'), dict(req.get('params') or {})
                if method == 'userDataStream.subscribe.signature':
                    sig = p.pop('signature', '')
                    payload = '&'.join(f'{k}={p[k]}' for k in sorted(p))
                    want = hmac.new(ex.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
                    if p.get('apiKey') != ex.api_key:
                        await ws.send_str(json.dumps({'id': rid, 'status': 401, 'error': {
                            'code': -2015, 'msg': 'Invalid API-key, IP, or permissions for action.'}}))
                    elif not hmac.compare_digest(sig, want):
                        await ws.send_str(json.dumps({'id': rid, 'status': 400, 'error': {
                            'code': -1022, 'msg': 'Signature for this request is not valid.'}}))
                    else:
                        await ws.send_str(json.dumps({'id': rid, 'status': 200, 'result': {'subscriptionId': 0}}))
                        ex.user_ws.add(ws)
                        ex.subscriptions_changed()
                elif method == 'ping':
                    await ws.send_str(json.dumps({'id': rid, 'status': 200, 'result': {}}))
                else:
                    await ws.send_str(json.dumps({'id': rid, 'status': 400, 'error': {
                        'code': -1100, 'msg': f'unsupported method {method}'}}))
        finally:
            ex.user_ws.discard(ws)
            ex.subscriptions_changed()
        return ws

    # -- test controls ----------------------------------------------------------------------

    @routes.post('/_fake/quote')
    async def set_quote(request: web.Request) -> web.Response:
        q = await request.json()
        m = ex.market
        if 'bid' in q:
            m.bid = Decimal(str(q['bid']))
            m.ask = Decimal(str(q.get('ask', m.bid + TICK)))
        m.bid_qty = Decimal(str(q.get('bid_qty', m.bid_qty)))
        m.ask_qty = Decimal(str(q.get('ask_qty', m.ask_qty)))
        ex.publish_quote()
        return web.json_response({'bid': _s(m.bid), 'ask': _s(m.ask)})

    @routes.post('/_fake/broadcast')
    async def broadcast(request: web.Request) -> web.Response:
        body = await request.json()   # one raw frame, as is (for malformed-input tests)
        if body.get('stream') == 'user':   # to the user-data websockets, unwrapped
            text = json.dumps(body['payload'])
            for ws in list(ex.user_ws):
                await ws.send_str(text)
        else:
            ex.broadcast(body['stream'], body['payload'])
        return web.json_response({'sent': body['stream']})

    @routes.post('/_fake/subscribed')
    async def wait_subscribed(request: web.Request) -> web.Response:
        """Answer once every stream in ``streams`` (``user``: the user-data stream) is
        subscribed (408 after ``timeout`` s)."""
        body = await request.json()
        want = set(body['streams'])
        try:
            async with asyncio.timeout(float(body.get('timeout', 30))):
                while not want <= ex.subscribed():
                    await ex.subs_changed.wait()
        except TimeoutError:
            return web.json_response({'subscribed': sorted(ex.subscribed())}, status=408)
        return web.json_response({'subscribed': sorted(ex.subscribed())})

    @routes.post('/_fake/drop')
    async def drop(request: web.Request) -> web.Response:
        which = (await request.json()).get('which', 'both')
        n = 0
        if which in ('market', 'both'):
            for ws in list(ex.market_ws):
                ex.market_ws.pop(ws)   # its subscriptions end now, not when the close completes
                await ws.close()
                n += 1
        if which in ('user', 'both'):
            for ws in list(ex.user_ws):
                ex.user_ws.discard(ws)   # (as above: unsubscribed now)
                ex.subscriptions_changed()
                await ws.close()
                n += 1
        return web.json_response({'closed': n})

    @routes.post('/_fake/block_user')
    async def block_user(request: web.Request) -> web.Response:
        secs = float((await request.json()).get('seconds', 0))
        ex.user_blocked_until = time.monotonic() + secs
        for ws in list(ex.user_ws):
            await ws.close()
        return web.json_response({'blocked_for': secs})

    @routes.post('/_fake/ratelimit')
    async def ratelimit(request: web.Request) -> web.Response:
        ex.ratelimited = int((await request.json()).get('count', 1))
        return web.json_response({'ratelimited': ex.ratelimited})

    @routes.post('/_fake/malform')
    async def malform(request: web.Request) -> web.Response:
        body = await request.json()   # the next answer to ``request`` is ``body``, as is
        ex.malformed.setdefault(body['request'], []).append(body['body'])
        return web.json_response({'queued': len(ex.malformed[body['request']])})

    @routes.get('/_fake/state')
    async def state(request: web.Request) -> web.Response:
        return web.json_response({
            'orders': [o.wire() for o in ex.orders.values()],
            'trades': ex.trades,
            'balances': {a: [_s(f), _s(l)] for a, (f, l) in ex.balances.items()},
            'requests': ex.requests,
            'user_ws': len(ex.user_ws), 'market_ws': len(ex.market_ws),
            'malformed_pending': sum(len(v) for v in ex.malformed.values()),
            'bid': _s(ex.market.bid), 'ask': _s(ex.market.ask),
        })

    app = web.Application()
    app.add_routes(routes)

    async def pump(app: web.Application):
        async def run() -> None:
            while True:
                await asyncio.sleep(1.0 / ex.rate if ex.rate > 0 else 3600)
                if ex.rate > 0:
                    ex.step()
        task = asyncio.ensure_future(run())
        yield
        task.cancel()

    app.cleanup_ctx.append(pump)
    return app


class _Limited(Exception):
    pass


async def serve(port: int, api_key: str, secret: str, rate: float, seed: int) -> None:
    ex = Exchange(api_key=api_key, secret=secret, rate=rate, seed=seed)
    runner = web.AppRunner(make_app(ex))
    await runner.setup()
    site = web.TCPSite(runner, '127.0.0.1', port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]
    print(f'listening on http://127.0.0.1:{bound}', flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description='A local fake Binance spot exchange (tests and demos).')
    ap.add_argument('--port', type=int, default=0)
    ap.add_argument('--api-key', default='fake-key')
    ap.add_argument('--secret', default='fake-secret')
    ap.add_argument('--rate', type=float, default=5.0, help='quote updates per second (0: frozen)')
    ap.add_argument('--seed', type=int, default=7)
    a = ap.parse_args()
    try:
        asyncio.run(serve(a.port, a.api_key, a.secret, a.rate, a.seed))
    except KeyboardInterrupt:
        pass


if __name__ == '__main__':
    main()
