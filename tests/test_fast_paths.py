"""What the order path's fast forms must still refuse, and what batching must preserve.

The client's ``send`` copies a validated Order's fields instead of serializing it, fqsn checks
are cached, emsd's snapshot travels packed and a client's backlog travels in lists: none of
that may let a bad request through, change a message, lose, duplicate or reorder one.
"""
import math

import pydantic
import pytest
import trio

from piker_ems.clearing import _client
from piker_ems.service._ipc import send_with_heartbeats
from piker_ems.clearing._messages import (
    BrokerdCancel,
    BrokerdFill,
    BrokerdOrder,
    BrokerdOrderAck,
    BrokerdPosition,
    BrokerdStatus,
    Cancel,
    MsgError,
    Order,
    Status,
    order_wire,
    pack_snapshot,
    parse_client_msg,
    to_wire,
    unpack_snapshot,
)

from _router_fakes import Rig


def _book() -> tuple[_client.OrderBook, trio.MemoryReceiveChannel]:
    tx, rx = trio.open_memory_channel(math.inf)
    return _client.OrderBook(fqsn='btcusd.sim', account='paper', exec_mode='dark', name='me', _tx=tx), rx


BAD_SENDS = [
    dict(price=math.nan), dict(price=math.inf), dict(price=-math.inf), dict(price=-1.0),
    dict(price=0.0), dict(price=1e13),
    dict(size=math.nan), dict(size=math.inf), dict(size=-1.0), dict(size=0.0), dict(size=1e13),
    dict(action='short'), dict(action=''), dict(action=None),
    dict(price=None), dict(price=[1.0]), dict(price='a lot'), dict(size={'n': 1}),
    dict(symbol=123), dict(symbol='btcusd'), dict(symbol='x' * 200 + '.sim'),
    dict(symbol='bad name.sim'), dict(exec_mode='yolo'), dict(oid=123), dict(account=5),
]


@pytest.mark.parametrize('bad', BAD_SENDS, ids=[repr(b)[:40] for b in BAD_SENDS])
def test_send_refuses_bad_input_and_queues_nothing(bad):
    book, rx = _book()
    args = {'action': 'buy', 'price': 100.0, 'size': 1.0, **bad}
    with pytest.raises(pydantic.ValidationError):
        book.send(args.pop('action'), args.pop('price'), args.pop('size'), **args)
    with pytest.raises(trio.WouldBlock):
        rx.receive_nowait()
    assert book.orders == {}


def test_cached_fqsn_check_still_refuses_invalid_symbols():
    book, rx = _book()
    book.send('buy', 100.0, 1.0, symbol='btcusd.sim')  # cached as valid
    for bad in ('btcusd', 'btc usd.sim', '.sim', 'btcusd.', 'x' * 65 + '.sim'):
        with pytest.raises(pydantic.ValidationError, match='symbol'):
            book.send('buy', 100.0, 1.0, symbol=bad)
        with pytest.raises(MsgError, match='symbol'):
            parse_client_msg({'action': 'buy', 'oid': 'a', 'symbol': bad, 'price': 1.0, 'size': 1.0})
    assert len(book.orders) == 1


def test_send_puts_exactly_the_serialized_order_on_the_wire():
    book, rx = _book()
    oid = book.send('sell', 101.5, 2.0, symbol='ethusd.sim', exec_mode='live', account='acct1')
    wire = rx.receive_nowait()
    order = book.orders[oid]
    assert wire == to_wire(order) == order.model_dump(mode='json')
    assert wire['brokers'] == ['sim'] and wire['exec_mode'] == 'live' and wire['account'] == 'acct1'
    assert parse_client_msg(wire) == order
    wire['brokers'].append('mutated')  # the wire dict is a copy: the book's order is untouched
    assert order.brokers == ['sim']
    assert len(oid) == 32 and len({book.send('buy', 1.0, 1.0) for _ in range(1000)}) == 1000


@pytest.mark.parametrize('order', [
    Order(action='alert', oid='a1', symbol='btcusd.sim', price=1.0),
    Order(action='buy', oid='a2', symbol='es.cme.ib', price=2.25, size=3.0, exec_mode='live',
          account='live', owner='team/bob', brokers=['ib', 'x']),
])
def test_order_wire_equals_to_wire(order):
    assert order_wire(order) == to_wire(order) == order.model_dump(mode='json')


@pytest.mark.parametrize('model', [
    Cancel(oid='c', symbol='btcusd.sim'),
    BrokerdOrder(action='buy', oid='o', symbol='btcusd', price=1.0, size=1.0, reqid=7),
    BrokerdCancel(oid='o', reqid='r'),
    BrokerdOrderAck(oid='o', reqid=3),
    BrokerdStatus(reqid=3, status='open', broker_details={'a': [1, 2]}),
    BrokerdFill(reqid=3, action='sell', size=1.0, price=2.0),
    BrokerdPosition(broker='sim', symbol='btcusd', size=1.0, avg_price=2.0),
    Status(oid='s', resp='dark_submitted', req=Order(action='buy', oid='s', symbol='btcusd.sim',
                                                      price=1.0, size=1.0), owner='me'),
])
def test_to_wire_is_model_dump_json(model):
    assert to_wire(model) == model.model_dump(mode='json')


BAD_WIRE = [
    {'price': math.nan}, {'price': math.inf}, {'price': -5.0}, {'price': 1e300},
    {'size': -1.0}, {'size': math.nan}, {'size': 1e300}, {'action': 'short'},
    {'price': 'cheap'}, {'symbol': ['btcusd.sim']}, {'symbol': 'y' * 100 + '.sim'},
    {'oid': 42}, {'unknown_field': 1},
]


@pytest.mark.parametrize('bad', BAD_WIRE, ids=[repr(b)[:40] for b in BAD_WIRE])
def test_emsd_refuses_bad_requests_with_an_error_status(bad):
    """emsd re-validates what arrives (a client may bypass send()): an ``error`` to the
    sender, nothing to any venue, and the next good order still goes through."""
    rig = Rig()
    me = rig.client('me')
    good = order_wire(Order(action='buy', oid='good', symbol='btcusd.sim', price=50.0, size=1.0,
                            exec_mode='live', account='live'))
    rig.send(me, {**good, 'oid': 'bad1', **bad})
    assert [s.resp for s in me.statuses()] == ['error']
    assert rig.venues.sent(('sim', 'live')) == []
    rig.send(me, good)
    assert [c.oid for c in rig.venues.sent(('sim', 'live'))] == ['good']


def test_packed_snapshot_round_trips_and_garbage_is_refused():
    statuses = [to_wire(Status(oid=f'o{i}', resp='dark_submitted', owner='me', req=Order(
        action='buy', oid=f'o{i}', symbol='btcusd.sim', price=1.0 + i, size=1.0))) for i in range(50)]
    assert unpack_snapshot(pack_snapshot(statuses)) == statuses
    assert unpack_snapshot(statuses) == statuses  # an older emsd's plain list
    assert unpack_snapshot(pack_snapshot([])) == []
    for garbage in (b'\xc1\xc1', pack_snapshot({'a': 1}), 42, None, 'orders'):
        with pytest.raises(MsgError, match='invalid snapshot'):
            unpack_snapshot(garbage)


def test_a_large_snapshot_travels_compressed_and_a_bad_one_is_refused(monkeypatch):
    import zlib

    import msgspec

    from piker_ems.clearing import _messages

    statuses = [to_wire(Status(oid=f'o{i:04d}', resp='dark_submitted', owner='me', req=Order(
        action='buy', oid=f'o{i:04d}', symbol='btcusd.sim', price=1.0 + i, size=1.0)))
        for i in range(1000)]
    blob = pack_snapshot(statuses)
    raw = msgspec.msgpack.encode(statuses)
    assert len(blob) * 5 < len(raw)                 # what tractor formats, four times over
    assert unpack_snapshot(blob) == statuses
    assert unpack_snapshot(raw) == statuses         # an emsd that did not compress
    for bad in (blob[:-40], zlib.compress(b'\xc1' * 100), zlib.compress(msgspec.msgpack.encode({'a': 1}))):
        with pytest.raises(MsgError, match='invalid snapshot'):
            unpack_snapshot(bad)
    monkeypatch.setattr(_messages, '_SNAPSHOT_MAX_BYTES', 1 << 20)
    bomb = zlib.compress(msgspec.msgpack.encode(['x' * 1000] * 5000), 9)  # 5 MB inflated
    with pytest.raises(MsgError, match='invalid snapshot'):   # not inflated past the bound
        unpack_snapshot(bomb)


class _RecordingStream:
    def __init__(self) -> None:
        self.sent: list = []
        self.gate = trio.Event()
        self.first = trio.Event()  # set by the first send

    async def send(self, msg) -> None:
        self.sent.append(msg)
        self.first.set()
        await self.gate.wait()  # a slow wire: a backlog builds behind the first send


def _flatten(sent: list) -> list:
    return [m for item in sent for m in (item if isinstance(item, list) else [item])]


def test_batched_sends_keep_order_and_deliver_each_once():
    async def main():
        stream = _RecordingStream()
        tx, rx = trio.open_memory_channel(1000)
        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                n.start_soon(send_with_heartbeats, rx, stream, 60.0, 16)
                tx.send_nowait({'n': 0})
                await trio.testing.wait_all_tasks_blocked()
                assert stream.sent == [{'n': 0}]  # alone in the queue: sent as itself, at once
                for i in range(1, 101):
                    tx.send_nowait({'n': i})
                stream.gate.set()
                tx.close()
        assert _flatten(stream.sent) == [{'n': i} for i in range(101)]
        batches = [len(x) for x in stream.sent if isinstance(x, list)]
        assert batches and max(batches) <= 16 and sum(batches) == 100
    trio.run(main)


class _SlowWire:
    """A stream whose every send takes 1 ms (of trio's clock): a backlog builds meanwhile.
    ``done`` is set when a send of the ``want``-th message has finished."""

    def __init__(self, want: int) -> None:
        self.sent: list = []
        self.want = want
        self.done = trio.Event()

    async def send(self, msg) -> None:
        self.sent.append(msg)
        await trio.sleep(0.001)
        if len(_flatten(self.sent)) >= self.want:
            self.done.set()


def test_gathering_sender_sends_a_burst_in_fewer_lists_and_a_lone_message_at_once():
    """A producer adding a message every 0.1 ms to a 1 ms wire (emsd fanning a burst out to a
    watcher): with or without gathering every message arrives once and in order; gathering
    sends the burst in at most half as many IPC messages, and still sends a message that finds
    the queue empty at once, alone."""
    async def burst(gather: bool) -> list:
        stream = _SlowWire(want=200)
        tx, rx = trio.open_memory_channel(1000)
        async with trio.open_nursery() as n:
            n.start_soon(send_with_heartbeats, rx, stream, 60.0, 64, gather)
            await trio.testing.wait_all_tasks_blocked()  # the sender waits on an empty queue
            for i in range(200):
                tx.send_nowait({'n': i})
                await trio.sleep(0.0001)
            await stream.done.wait()  # the wire drained the burst and is idle again
            await trio.testing.wait_all_tasks_blocked()
            t0 = trio.current_time()
            tx.send_nowait({'n': 'lone'})
            await trio.testing.wait_all_tasks_blocked()
            assert stream.sent[-1] == {'n': 'lone'} and trio.current_time() == t0  # not held
            tx.close()
        assert _flatten(stream.sent) == [{'n': i} for i in range(200)] + [{'n': 'lone'}]
        assert stream.sent[0] == {'n': 0}  # it found the queue empty: sent as itself
        assert max(len(x) for x in stream.sent if isinstance(x, list)) <= 64
        return stream.sent

    async def main():
        plain, gathered = await burst(False), await burst(True)
        assert len(plain) >= 15  # about one list per 1 ms send: ~10 messages each
        assert 2 * len(gathered) <= len(plain), (len(gathered), len(plain))
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_unbatched_sender_sends_one_message_each():
    """The default (venue dialogues, whose receivers take single messages only): no lists."""
    async def main():
        stream = _RecordingStream()
        tx, rx = trio.open_memory_channel(1000)
        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                n.start_soon(send_with_heartbeats, rx, stream, 60.0)
                tx.send_nowait({'n': 0})
                await trio.testing.wait_all_tasks_blocked()
                for i in range(1, 50):
                    tx.send_nowait({'n': i})
                stream.gate.set()
                tx.close()
        assert stream.sent == [{'n': i} for i in range(50)]
    trio.run(main)


def test_batched_sender_heartbeats_when_idle():
    async def main():
        stream = _RecordingStream()
        stream.gate.set()
        tx, rx = trio.open_memory_channel(10)
        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                n.start_soon(send_with_heartbeats, rx, stream, 0.01, 16)
                await stream.first.wait()
                tx.close()
        assert stream.sent[0]['name'] == 'heartbeat'
    trio.run(main)


def test_an_idle_sender_whose_peer_is_gone_fails_with_the_send_error():
    """An idle link's only sign of a dead peer is its heartbeat's failing send: it must end
    the sender with that error (the caller's "peer gone" path), not hang or wrap it."""
    class _DeadPeer:
        async def send(self, msg) -> None:
            raise trio.BrokenResourceError('peer gone')

    async def main():
        tx, rx = trio.open_memory_channel(10)
        with trio.fail_after(10):
            with pytest.raises(trio.BrokenResourceError):
                await send_with_heartbeats(rx, _DeadPeer(), 0.01, 16, True)
    trio.run(main)


class _EncodingStream:
    """Encodes each message as tractor's wire does (msgpack via msgspec, before any write) and
    records those it could encode."""

    def __init__(self) -> None:
        import msgspec

        self.encode = msgspec.msgpack.Encoder().encode
        self.sent: list = []

    async def send(self, msg) -> None:
        self.encode(msg)
        self.sent.append(msg)


@pytest.mark.parametrize('max_batch', [1, 16])
def test_a_message_the_wire_cannot_encode_is_skipped_and_the_sender_carries_on(max_batch):
    """One unencodable message (a backend's stray object, an out-of-range int) must not end
    the dialogue: it is skipped (counted, logged) and every other message still leaves, in
    order, also those batched in the same list with it."""
    async def main():
        stream = _EncodingStream()
        tx, rx = trio.open_memory_channel(10)
        for m in ({'n': 0}, {'n': 1}, {'n': object()}, {'n': 2**70}, {'n': 3}):
            tx.send_nowait(m)
        tx.close()  # a backlog: with max_batch 16 the five travel as one list, or try to
        with trio.fail_after(10):
            skipped = await send_with_heartbeats(rx, stream, 60.0, max_batch, True)
        assert (skipped, _flatten(stream.sent)) == (2, [{'n': 0}, {'n': 1}, {'n': 3}])
    trio.run(main)


def test_a_sender_whose_peer_reads_nothing_fails_after_the_heartbeat_timeout():
    """A peer that stopped reading (hung, not closed) blocks the heartbeat's send: after
    HEARTBEAT_TIMEOUT_S the sender ends with BrokenResourceError (the caller's "peer gone")."""
    from piker_ems.service._ipc import HEARTBEAT_TIMEOUT_S

    class _HungPeer:
        async def send(self, msg) -> None:
            await trio.sleep_forever()

    async def main():
        tx, rx = trio.open_memory_channel(10)
        t0 = trio.current_time()
        with trio.fail_after(60), pytest.raises(trio.BrokenResourceError, match='read nothing'):
            await send_with_heartbeats(rx, _HungPeer(), 1.0, 16, True)
        assert trio.current_time() - t0 == pytest.approx(1.0 + HEARTBEAT_TIMEOUT_S)
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class _ScriptedStream:
    def __init__(self, items: list) -> None:
        self.items = list(items)

    async def receive(self):
        if not self.items:
            raise trio.EndOfChannel
        return self.items.pop(0)


def test_client_reader_unpacks_batches_in_order():
    def status(i: int) -> dict:
        return to_wire(Status(oid=f'o{i}', resp='dark_submitted', owner='other', req=Order(
            action='buy', oid=f'o{i}', symbol='btcusd.sim', price=1.0, size=1.0)))

    script = [status(0), [status(1), status(2), {'bogus': True}, status(3)],
              {'name': 'heartbeat', 'time': 0.0}, [status(4)]]

    async def main():
        book, _ = _book()
        tx, rx = trio.open_memory_channel(math.inf)
        trades = _client.TradesStream(rx, tx)
        with trio.fail_after(10):
            await _client._read(_ScriptedStream(script), tx, book, trades, 5.0)
        got = []
        async for msg in rx:
            got.append(msg)
        return book, trades, got

    book, trades, got = trio.run(main)
    assert [m.oid for m in got] == [f'o{i}' for i in range(5)]  # the invalid one skipped
    assert set(book.orders) == {f'o{i}' for i in range(5)}
    assert trades.lost  # the stream ended: the reader reports the link lost


def test_client_reader_heartbeats_keep_the_link_and_silence_loses_it():
    """The client's silence deadline moves with every message (heartbeats included): 20 s of
    heartbeats 2 s apart keep a 3 s window open; then 3 s of silence loses emsd, said so."""
    from trio.testing import MockClock

    class _Paced:
        def __init__(self, beats: int) -> None:
            self.beats = beats

        async def receive(self):
            if not self.beats:
                await trio.sleep_forever()      # emsd hangs: nothing, not even a heartbeat
            self.beats -= 1
            await trio.sleep(2.0)
            return {'name': 'heartbeat', 'time': 0.0}

    async def main():
        book, _ = _book()
        tx, rx = trio.open_memory_channel(math.inf)
        trades = _client.TradesStream(rx, tx)
        with trio.fail_after(60):
            await _client._read(_Paced(10), tx, book, trades, 3.0)
        return trades.lost, trio.current_time()

    lost, ended = trio.run(main, clock=MockClock(autojump_threshold=0))
    assert lost == 'emsd sent nothing (not even a heartbeat) for 3s'
    assert 23.0 <= ended < 23.5                   # 10 beats 2 s apart, then one 3 s window


def _brute_open_orders(router, fqsn=None, owner=None, broker=None) -> list[str]:
    """What ``open_orders`` must return, by walking every order (its pre-index definition)."""
    out = []
    for st in router.orders.values():
        if (fqsn is not None and st.fqsn != fqsn) or (broker is not None and st.venue[0] != broker):
            continue
        if owner is not None and st.owner != owner:
            continue
        if not st.machine.final or (owner is not None and st.unseen):
            out.append(st.oid)
    return out


def test_snapshot_index_matches_a_walk_over_every_order():
    """``open_orders`` walks only orders still showable (an index): it must return exactly
    what a walk over all orders would, including finished-while-away orders, once."""
    rig = Rig()
    a, b = rig.client('a'), rig.client('b', fqsn='ethusd.sim', on_disconnect='cancel')
    oids = {'a': [], 'b': []}
    for i in range(40):
        for conn, sym in ((a, 'btcusd.sim'), (b, 'ethusd.sim')):
            o = Order(action='buy', oid=f'{conn.name}{i}', symbol=sym, price=50.0, size=1.0, exec_mode='dark')
            rig.send(conn, o)
            oids[conn.name].append(o.oid)
    for oid in oids['a'][::2] + oids['b'][::3]:
        rig.send(a if oid.startswith('a') else b, Cancel(oid=oid, symbol='btcusd.sim' if oid.startswith('a') else 'ethusd.sim'))
    rig.router.drop_client(b)  # policy cancel: b's open orders end while b is away (unseen)
    for args in ({}, {'fqsn': 'btcusd.sim'}, {'broker': 'sim'}, {'owner': 'a'}, {'fqsn': 'ethusd.sim', 'broker': 'sim'}):
        want = _brute_open_orders(rig.router, **args)
        assert [s['oid'] for s in rig.router.open_orders(**args)] == want
    unseen = _brute_open_orders(rig.router, owner='b')
    assert len(unseen) == 40 - len(oids['b'][::3])  # ended while away: shown to b once
    assert [s['oid'] for s in rig.router.open_orders(owner='b')] == unseen
    assert rig.router.open_orders(owner='b') == [] == _brute_open_orders(rig.router, owner='b')
    assert len(rig.router.open_orders()) == 20 == len(_brute_open_orders(rig.router))
    # and the index holds nothing else: a reconnect never walks the finished orders
    assert sorted(rig.router.showable) == sorted(_brute_open_orders(rig.router))


def test_hand_checked_send_path_accepts_only_what_pydantic_accepts_with_the_same_wire():
    """``fast_order_wire`` (send's path) never accepts an order ``Order`` refuses, and what it
    accepts is exactly ``order_wire(Order(...))``; everything else goes to pydantic."""
    import itertools
    from piker_ems.clearing._messages import fast_order_wire
    nums = [1.0, 0.0, -0.0, -1.0, 1e12, 1e12 + 1, math.nan, math.inf, 1, 0, 10**13, True, '2', None]
    fast = 0
    for action, symbol, price, size, mode, oid in itertools.product(
            ['buy', 'alert', 'short', None], ['btcusd.sim', 'ETH.Sim', 'btcusd', 'a b.sim', 7],
            nums, nums, ['live', 'yolo'], ['o1', '', 3]):
        wire = fast_order_wire(action, oid, symbol, price, size, mode, 'paper')
        try:
            ref = order_wire(Order(action=action, oid=oid, symbol=symbol, price=price, size=size,
                                   exec_mode=mode, account='paper'))
        except pydantic.ValidationError:
            ref = None
        if wire is not None:
            fast += 1
            assert wire == ref and [type(v) for v in wire.values()] == [type(v) for v in ref.values()]
    assert fast > 50  # the fast path is taken for plain buys and alerts


def test_book_orders_holds_each_sent_order_and_the_latest_modify():
    book, rx = _book()
    oid = book.send('buy', 100.0, 1.0)
    book.send('buy', 101, 2, oid=oid)  # a modify, ints as pydantic takes them
    other = book.send('alert', 99.0)
    assert list(book.orders) == [oid, other]
    assert book.orders[oid] == parse_client_msg(rx.receive_nowait() and rx.receive_nowait())
    assert book.orders[oid].price == 101.0 and book.orders[other].size == 0.0
