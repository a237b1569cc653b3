"""A venue link takes commands at once and queues them while its dialogue opens: no client waits
on a venue spawn; if the dialogue never opens, every queued command is failed back."""
import pytest
import trio

from piker_ems.clearing import _venues
from piker_ems.clearing._messages import BrokerdOrder
from piker_ems.clearing._venues import VenueDirectory

pytestmark = pytest.mark.trio


class Sink:
    def __init__(self):
        self.failed, self.lost, self.msgs = [], [], []

    def on_send_failed(self, link, cmd, reason):
        self.failed.append((cmd.oid, reason))

    def on_venue_lost(self, link, reason):
        self.lost.append(reason)

    def on_venue_msg(self, link, raw):
        self.msgs.append(raw)


class FakeStream:
    def __init__(self, expect: int = 0):
        self.sent = []
        self.expect = expect
        self.all_sent = trio.Event()  # set once ``expect`` messages went out

    async def send(self, msg):
        self.messages = getattr(self, 'messages', 0) + 1
        self.sent.extend(msg if isinstance(msg, list) else [msg])  # a backlog goes as one list
        if len(self.sent) >= self.expect:
            self.all_sent.set()


def order(oid):
    return BrokerdOrder(action='buy', oid=oid, symbol='btcusd', price=1.0, size=1.0)


async def test_commands_queue_while_opening_and_go_out_in_order(monkeypatch):
    gate = trio.Event()
    stream = FakeStream(expect=100)

    async def open_and_relay(self, link, open_cs):
        await gate.wait()  # a slow spawn
        link.state = 'open'
        link.opened.set()
        async with trio.open_nursery() as n:
            n.start_soon(self._write, link, stream)
            await trio.sleep_forever()

    monkeypatch.setattr(VenueDirectory, '_open_and_relay', open_and_relay)
    sink = Sink()
    async with trio.open_nursery() as n:
        venues = VenueDirectory(n.start_soon, actor_n=None)
        venues.bind(sink)
        link = venues.link(('sim', 'paper'))
        with trio.fail_after(0.1):  # taking commands never waits for the venue
            for i in range(100):
                link.send_nowait(order(f'o{i}'))
        assert stream.sent == [] and link.queued == 100
        assert venues.link(('sim', 'paper')) is link  # one dialogue per venue
        gate.set()
        with trio.fail_after(5):
            await stream.all_sent.wait()
        assert link.queued == 0
        assert [m['oid'] for m in stream.sent] == [f'o{i}' for i in range(100)]
        assert stream.messages == 2  # the paper engine takes the backlog in lists of 64
        n.cancel_scope.cancel()
    assert sink.failed == [] and sink.lost == []


async def test_a_venue_that_never_opens_fails_its_queue(monkeypatch):
    monkeypatch.setattr(_venues, 'OPEN_TIMEOUT_S', 0.2)

    async def never_opens(self, link, open_cs):
        await trio.sleep_forever()

    monkeypatch.setattr(VenueDirectory, '_open_and_relay', never_opens)
    sink = Sink()
    async with trio.open_nursery() as n:
        venues = VenueDirectory(n.start_soon, actor_n=None)
        venues.bind(sink)
        link = venues.link(('sim', 'live'))
        link.send_nowait(order('a'))
        link.send_nowait(order('b'))
        with trio.fail_after(5):
            await link.opened.wait()
    assert [oid for oid, _ in sink.failed] == ['a', 'b']
    assert 'did not open' in sink.failed[0][1] and sink.lost
    assert venues.links == {}  # the next need opens a fresh one
    with pytest.raises(_venues.VenueUnavailable):
        link.send_nowait(order('c'))


async def test_a_venue_that_fails_to_open_fails_its_queue(monkeypatch):
    async def fails(self, link, open_cs):
        raise RuntimeError('no such broker process')

    monkeypatch.setattr(VenueDirectory, '_open_and_relay', fails)
    sink = Sink()
    async with trio.open_nursery() as n:
        venues = VenueDirectory(n.start_soon, actor_n=None)
        venues.bind(sink)
        venues.link(('sim', 'live')).send_nowait(order('a'))
    assert sink.failed and 'no such broker process' in sink.failed[0][1]


async def test_a_venue_that_stays_down_is_logged_once_not_per_retry(monkeypatch, caplog):
    """emsd retries a lost venue every second: its outage is one WARNING (with the reason), a
    reminder once REMIND_S passed, and one INFO when it is back; never an ERROR per attempt."""
    from piker_ems.clearing._outage import REMIND_S

    now = [1000.0]
    attempts = []
    opened = trio.Event()

    async def down_then_up(self, link, open_cs):
        attempts.append(link.name)
        if len(attempts) == 20:
            now[0] += REMIND_S  # a minute into the outage: one reminder
        if len(attempts) < 40:
            raise _venues.VenueUnavailable('paperboi.sim is down since 04:01:02 (silent for 3s)')
        link.state = 'open'
        if not self.outages.up(link.name):
            raise AssertionError('the venue was not known as down')
        link.opened.set()
        opened.set()
        await trio.sleep_forever()

    class Retrying(Sink):  # like the Router with a live order there: reopen at once
        def on_venue_lost(self, link, reason):
            super().on_venue_lost(link, reason)
            venues.reopen(link.key, 0)

    monkeypatch.setattr(VenueDirectory, '_open_and_relay', down_then_up)
    caplog.set_level('DEBUG', logger='piker_ems')
    async with trio.open_nursery() as n:
        venues = VenueDirectory(n.start_soon, actor_n=None, clock=lambda: now[0])
        venues.bind(Retrying())
        venues.link(('sim', 'paper'))
        with trio.fail_after(10):
            await opened.wait()
        n.cancel_scope.cancel()
    assert len(attempts) == 40
    records = [r for r in caplog.records if r.name == 'piker_ems.clearing._venues']
    assert not [r for r in records if r.levelname in ('ERROR', 'CRITICAL')]
    warnings = [r.getMessage() for r in records if r.levelname == 'WARNING']
    reason = 'paperboi.sim is down since 04:01:02 (silent for 3s)'  # (no class name: owners see it)
    assert len(warnings) == 2, warnings
    assert warnings[0] == f'trades dialogue sim.paper is down: {reason}'
    assert warnings[1].startswith('trades dialogue sim.paper is still down (since ')
    assert warnings[1].endswith(f', 20 attempts; last: {reason})')
    back = [r.getMessage() for r in records if r.levelname == 'INFO']
    assert back == ['trades dialogue sim.paper is back after 60s down (39 failed attempts)']


async def test_a_venue_batch_is_relayed_item_by_item_in_one_group():
    """A venue may send a backlog as one list (docs/backends.md): each event reaches the sink
    alone, in order, inside the sink's group (one journal commit); single messages and
    heartbeats around it are handled as before."""
    from contextlib import contextmanager

    class GroupSink(Sink):
        def __init__(self):
            super().__init__()
            self.depth, self.in_group = 0, []

        @contextmanager
        def group(self):
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1

        def on_venue_msg(self, link, raw):
            super().on_venue_msg(link, raw)
            self.in_group.append(self.depth)

    heartbeat = {'name': 'heartbeat', 'time': 0.0}
    items = [{'name': 'ack', 'n': 0}, heartbeat,
             [{'name': 'status', 'n': 1}, {'name': 'fill', 'n': 2}, {'name': 'status', 'n': 3}],
             {'name': 'position', 'n': 4}]

    class ReadStream:
        async def receive(self):
            if not items:
                raise trio.EndOfChannel
            return items.pop(0)

    sink = GroupSink()
    venues = VenueDirectory(lambda *a: None, actor_n=None)
    venues.bind(sink)
    link = _venues.VenueLink(('sim', 'paper'))
    with trio.fail_after(5):
        await venues._relay_events(link, ReadStream())
    assert [m['n'] for m in sink.msgs] == [0, 1, 2, 3, 4]
    assert sink.in_group == [0, 1, 1, 1, 0] and link.received == 5
