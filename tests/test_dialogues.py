"""Scripted dialogues: one file per documented race, run against an in-process Router.

Each ``tests/dialogues/*.dlg`` file is a script in the small line format below (the idea of
QuickFIX's scripted test files: messages in, expected messages out, in order). The runner
drives a :class:`_router_fakes.Rig` (fake venues, scans and clock; no actors, no sleeps).

Format (one command per line; ``#`` starts a comment; values with spaces go in double quotes)::

    # xfail: <why>                  a header comment: the file is expected to fail (strict)

    connect <label> [name=<n>] [fqsn=btcusd.sim] [account=paper] [watch=symbol|all]
            [control_others=yes] [on_disconnect=keep|cancel|cancel-dark]
                                    a client connection (name defaults to the label)
    disconnect <label>              the connection goes away (its disconnect policy applies)

    client <label> > order oid=o1 action=buy price=101 size=1 mode=live [account=live]
                                    [symbol=btcusd.sim]
                                    a new order, or a modify if the oid is known
                                    (mode live defaults to account=live, else paper)
    client <label> > cancel oid=o1 [symbol=btcusd.sim]

    venue <broker.kind> > ack oid=o1 reqid=7
    venue <broker.kind> > status reqid=7 status=filled [filled=1] [remaining=0] [reason=".."]
    venue <broker.kind> > fill reqid=7 size=1 price=101 [action=buy] [fill_id=f1]
    venue <broker.kind> > error [reqid=7] [oid=o1] reason=".."
    venue <broker.kind> > position size=2 [avg_price=100] [account=live] [symbol=btcusd]
                                    (sent to the clients connected for that account)
    venue <broker.kind> refuse "<reason>"   the link refuses every send from now on
    venue <broker.kind> accept              ... and takes them again
    venue <broker.kind> sendfail oid=o1 reason=".."
                                    the link reports that the last command it took for o1 was
                                    never delivered (Router.on_send_failed)
    tick <fqsn> <trade|bid|ask|last> <price>
    lose <broker.kind> [reason]     the venue is lost (Router.on_venue_lost)
    snapshot <broker.kind> order reqid=7 [oid=o1] action=buy price=101 size=1 [filled=0]
                            [status=open] [account=live] [symbol=btcusd]
    snapshot <broker.kind> fill reqid=7 [oid=o1] fill_id=f1 size=1 price=101 [action=buy]
    snapshot <broker.kind> position symbol=btcusd size=1 avg_price=101 [account=live]
                                    what the venue will report when it (re)opens
    reconnect <broker.kind> [since=none]
                                    the venue's dialogue (re)opens with the snapshot built by
                                    the lines above (Router.on_venue_open: reconciliation);
                                    since=none is a venue that does not report ended orders
    clock +<seconds>                the fake clock moves
    risk [account=<a>] <limit>=<value> ...
                                    risk limits (``[risk]`` keys; for one account with account=)
    trading <scope> <active|reducing|halted> [alerts=yes]
                                    set a trading state (scope: an account, or * for all)

    expect <label> < <resp> [oid=..] [reqid=..] [price=..] [size=..] [filled=..]
                            [trigger=..] [reason~=<substring>]
                                    the *next* message the client received is a status with
                                    that resp and those fields (price/size: of its ``req``;
                                    filled: its ``brokerd_msg['filled']``)
    expect <label> < trading_state state=halted [scope=*] [account=live]
                                    the next message is emsd's push of the trading state
                                    that now applies to the client's account
    expect venue <broker.kind> < order|cancel oid=o1 [reqid=7|none] [price=..] [size=..]
                                    the next command the venue took (a modify is an ``order``
                                    with a reqid)
    expect nothing <label>          the client received nothing more (so far)
    expect nothing venue <broker.kind>
    expect stats illegal_events=1 [unknown_events=..] [rejected_broker_msgs=..]
                                    Router counters (exact values)

Every expectation consumes messages strictly in order, and at the end of the file every
client and every venue must have nothing left unconsumed: an unexpected extra status or venue
command fails the dialogue.
"""
from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

import pytest
from _router_fakes import FakeConn, Rig

from piker_ems.clearing._messages import (
    BrokerdCancel,
    BrokerdError,
    BrokerdFill,
    BrokerdOrder,
    BrokerdOrderAck,
    BrokerdOrderInfo,
    BrokerdPosition,
    BrokerdStatus,
    Cancel,
    Order,
    Status,
    VenueSnapshot,
)

DIALOGUES = Path(__file__).parent / 'dialogues'


class DialogueError(AssertionError):
    pass


def _reqid(v: str) -> int | str | None:
    if v.lower() == 'none':
        return None
    try:
        return int(v)
    except ValueError:
        return v


def _key(s: str) -> tuple[str, str]:
    broker, kind = s.split('.', 1)
    return (broker, kind)


def _kv(tokens: list[str]) -> dict[str, str]:
    out = {}
    for tok in tokens:
        if '~=' in tok:
            k, v = tok.split('~=', 1)
            out[k + '~'] = v
        elif '=' in tok:
            k, v = tok.split('=', 1)
            out[k] = v
        else:
            raise DialogueError(f'expected key=value, got {tok!r}')
    return out


def _num_eq(got: Any, want: str) -> bool:
    try:
        return got is not None and math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return False


class Dialogue:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.rig = Rig()
        self.conns: dict[str, FakeConn] = {}
        self.read: dict[str, int] = {}  # label -> messages consumed
        self.venue_read: dict[tuple[str, str], int] = {}
        self.snapshots: dict[tuple[str, str], dict] = {}
        self.lineno = 0

    def fail(self, why: str) -> None:
        raise DialogueError(f'{self.path.name}:{self.lineno}: {why}')

    # -- running -----------------------------------------------------------------------------

    def run(self) -> None:
        for self.lineno, line in enumerate(self.path.read_text().splitlines(), 1):
            line = line.split(' #', 1)[0].strip() if not line.lstrip().startswith('#') else ''
            if not line:
                continue
            tokens = shlex.split(line)
            getattr(self, f'do_{tokens[0]}', self._unknown)(tokens[1:])
        self.lineno = 'end'
        for label in self.conns:
            self._nothing_left(label)
        for key in {link.key for link in self.rig.venues.history}:
            self._nothing_left_venue(key)

    def _unknown(self, tokens: list[str]) -> None:
        self.fail(f'unknown command in {tokens!r}')

    def do_connect(self, t: list[str]) -> None:
        label, kv = t[0], _kv(t[1:])
        self.conns[label] = self.rig.client(
            kv.get('name', label), fqsn=kv.get('fqsn', 'btcusd.sim'), account=kv.get('account', 'paper'),
            watch=kv.get('watch'), control_others=kv.get('control_others', 'no') == 'yes',
            on_disconnect=kv.get('on_disconnect', 'keep'),
        )
        self.read[label] = 0

    def do_disconnect(self, t: list[str]) -> None:
        self.rig.router.drop_client(self.conns[t[0]])

    def do_client(self, t: list[str]) -> None:
        label, arrow, what, kv = t[0], t[1], t[2], _kv(t[3:])
        assert arrow == '>', f'{self.lineno}: client <label> > ...'
        conn = self.conns[label]
        symbol = kv.get('symbol', conn.fqsn)
        if what == 'order':
            mode = kv.get('mode', 'dark')
            msg = Order(
                action=kv.get('action', 'buy'), oid=kv['oid'], symbol=symbol, price=float(kv['price']),
                size=float(kv.get('size', 0 if kv.get('action') == 'alert' else 1)), exec_mode=mode,
                account=kv.get('account', 'live' if mode == 'live' else 'paper'),
                reduce_only=kv.get('reduce_only', 'no') == 'yes',
            )
        elif what == 'cancel':
            msg = Cancel(oid=kv['oid'], symbol=symbol)
        else:
            self.fail(f'unknown client message {what!r}')
        self.rig.send(conn, msg)

    def do_venue(self, t: list[str]) -> None:
        key = _key(t[0])
        if t[1] == 'refuse':
            self.rig.venue(key).refuse = t[2] if len(t) > 2 else 'refused'
            return
        if t[1] == 'accept':
            self.rig.venue(key).refuse = None
            return
        if t[1] == 'sendfail':
            kv = _kv(t[2:])
            cmds = [c for c in self.rig.venues.sent(key) if c.oid == kv['oid']]
            if not cmds:
                self.fail(f'no command for {kv["oid"]} was sent to {t[0]}')
            self.rig.router.on_send_failed(self.rig.venue(key), cmds[-1], kv.get('reason', 'send failed'))
            return
        assert t[1] == '>', f'{self.lineno}: venue <key> > ...'
        what, kv = t[2], _kv(t[3:])
        if what == 'ack':
            msg = BrokerdOrderAck(oid=kv['oid'], reqid=_reqid(kv['reqid']), account=key[1])
        elif what == 'status':
            msg = BrokerdStatus(
                reqid=_reqid(kv['reqid']), status=kv['status'], filled=float(kv.get('filled', 0)),
                remaining=float(kv.get('remaining', 0)), reason=kv.get('reason', ''), account=key[1],
            )
        elif what == 'fill':
            details = {'fill_id': kv['fill_id']} if 'fill_id' in kv else {}
            msg = BrokerdFill(
                reqid=_reqid(kv['reqid']), action=kv.get('action', 'buy'), size=float(kv['size']),
                price=float(kv['price']), broker_details=details,
            )
        elif what == 'error':
            msg = BrokerdError(
                oid=kv.get('oid'), reqid=_reqid(kv['reqid']) if 'reqid' in kv else None,
                reason=kv.get('reason', 'error'),
            )
        elif what == 'position':
            msg = BrokerdPosition(
                broker=key[0], account=kv.get('account', key[1]), symbol=kv.get('symbol', 'btcusd'),
                size=float(kv['size']), avg_price=float(kv.get('avg_price', 100)),
            )
        else:
            self.fail(f'unknown venue message {what!r}')
        self.rig.venue_msg(msg, key)

    def do_tick(self, t: list[str]) -> None:
        self.rig.scans.get(t[0]).tick(t[1], float(t[2]))

    def do_lose(self, t: list[str]) -> None:
        self.rig.venues.lose(_key(t[0]), t[1] if len(t) > 1 else 'lost in a dialogue')

    def do_snapshot(self, t: list[str]) -> None:
        key, what, kv = _key(t[0]), t[1], _kv(t[2:])
        snap = self.snapshots.setdefault(key, {'positions': [], 'orders': [], 'fills': []})
        if what == 'order':
            snap['orders'].append(BrokerdOrderInfo(
                reqid=_reqid(kv['reqid']), oid=kv.get('oid'), account=kv.get('account', key[1]),
                symbol=kv.get('symbol', 'btcusd'), action=kv.get('action', 'buy'),
                price=float(kv['price']), size=float(kv['size']), filled=float(kv.get('filled', 0)),
                status=kv.get('status', 'open')))
        elif what == 'fill':
            snap['fills'].append(BrokerdFill(
                reqid=_reqid(kv['reqid']), oid=kv.get('oid'), fill_id=kv.get('fill_id'),
                action=kv.get('action', 'buy'), size=float(kv['size']), price=float(kv['price']),
                time_ns=self.rig.clock()))
        elif what == 'position':
            snap['positions'].append(BrokerdPosition(
                broker=key[0], account=kv.get('account', key[1]), symbol=kv.get('symbol', 'btcusd'),
                size=float(kv['size']), avg_price=float(kv['avg_price'])))
        else:
            self.fail(f'unknown snapshot item {what!r}')

    def do_reconnect(self, t: list[str]) -> None:
        key, kv = _key(t[0]), _kv(t[1:])
        snap = self.snapshots.pop(key, {'positions': [], 'orders': [], 'fills': []})
        since = None if kv.get('since') == 'none' else self.rig.clock() - 3600 * 10**9
        self.rig.venues.reconnect(key, VenueSnapshot(**snap, since_ns=since))

    def do_clock(self, t: list[str]) -> None:
        self.rig.clock.advance(float(t[0].lstrip('+')))

    def do_risk(self, t: list[str]) -> None:
        from piker_ems.clearing._risk import RiskEngine, parse_limits

        kv = {k: float(v) for k, v in _kv(t).items() if k != 'account'}
        account = _kv(t).get('account')
        table = {'accounts': {account: kv}} if account else kv
        self.rig.router.risk = RiskEngine(parse_limits(table), clock=self.rig.clock)

    def do_trading(self, t: list[str]) -> None:
        kv = _kv(t[2:])
        self.rig.router.set_trading_state(t[0], t[1], cancel_alerts=kv.get('alerts') == 'yes')

    # -- expectations ------------------------------------------------------------------------

    def do_expect(self, t: list[str]) -> None:
        if t[0] == 'nothing':
            if t[1] == 'venue':
                self._nothing_left_venue(_key(t[2]))
            else:
                self._nothing_left(t[1])
            return
        if t[0] == 'stats':
            stats = self.rig.router.stats()
            for k, v in _kv(t[1:]).items():
                if stats.get(k) != int(v):
                    self.fail(f'stats {k}: expected {v}, got {stats.get(k)}')
            return
        if t[0] == 'venue':
            return self._expect_venue(_key(t[1]), t)
        label, arrow, resp, kv = t[0], t[1], t[2], _kv(t[3:])
        assert arrow == '<', f'{self.lineno}: expect <label> < <resp> ...'
        got = self.conns[label].got
        i = self.read[label]
        if i >= len(got):
            self.fail(f'{label}: expected {resp} {kv}, got nothing')
        msg = got[i]
        self.read[label] = i + 1
        if resp == 'trading_state':  # emsd's push of a trading state change (not a status)
            if not isinstance(msg, dict) or msg.get('name') != resp or any(
                    str(msg.get(k)) != want for k, want in kv.items()):
                self.fail(f'{label}: expected {resp} {kv}, got {_show(msg)}')
            return
        if not isinstance(msg, Status) or msg.resp != resp:
            self.fail(f'{label}: expected {resp} {kv}, got {_show(msg)}')
        for k, want in kv.items():
            if k == 'oid':
                ok = msg.oid == want
            elif k == 'reqid':
                ok = msg.broker_reqid == _reqid(want)
            elif k in ('price', 'size'):
                ok = msg.req is not None and _num_eq(getattr(msg.req, k), want)
            elif k == 'filled':
                ok = _num_eq(msg.brokerd_msg.get('filled'), want)
            elif k == 'trigger':
                ok = _num_eq(msg.trigger_price, want)
            elif k == 'reason~':
                ok = want.lower() in (msg.reason or '').lower()
            elif k == 'owner':
                ok = msg.owner == want
            else:
                self.fail(f'unknown status field {k!r}')
            if not ok:
                self.fail(f'{label}: expected {resp} {kv}, got {_show(msg)}')

    def _expect_venue(self, key: tuple[str, str], t: list[str]) -> None:
        assert t[2] == '<', f'{self.lineno}: expect venue <key> < order|cancel ...'
        what, kv = t[3], _kv(t[4:])
        sent = self.rig.venues.sent(key)
        i = self.venue_read.get(key, 0)
        if i >= len(sent):
            self.fail(f'venue {key}: expected {what} {kv}, got nothing')
        cmd = sent[i]
        self.venue_read[key] = i + 1
        kind = BrokerdOrder if what == 'order' else BrokerdCancel
        if not isinstance(cmd, kind):
            self.fail(f'venue {key}: expected {what} {kv}, got {cmd!r}')
        for k, want in kv.items():
            if k == 'reqid':
                ok = cmd.reqid == _reqid(want)
            elif k in ('price', 'size'):
                ok = _num_eq(getattr(cmd, k), want)
            elif k in ('oid', 'action', 'account', 'symbol'):
                ok = getattr(cmd, k) == want
            else:
                self.fail(f'unknown command field {k!r}')
            if not ok:
                self.fail(f'venue {key}: expected {what} {kv}, got {cmd!r}')

    def _nothing_left(self, label: str) -> None:
        got = self.conns[label].got
        extra = got[self.read[label]:]
        if extra:
            self.fail(f'{label}: unexpected {", ".join(_show(m) for m in extra)}')

    def _nothing_left_venue(self, key: tuple[str, str]) -> None:
        extra = self.rig.venues.sent(key)[self.venue_read.get(key, 0):]
        if extra:
            self.fail(f'venue {key}: unexpected {extra!r}')


def _show(msg: Any) -> str:
    if isinstance(msg, Status):
        return (f'{msg.resp}(oid={msg.oid} reqid={msg.broker_reqid} '
                f'price={msg.req.price if msg.req else None} reason={msg.reason!r})')
    return repr(msg)


def _cases() -> list[Any]:
    out = []
    for path in sorted(DIALOGUES.glob('*.dlg')):
        marks = []
        for line in path.read_text().splitlines():
            if line.startswith('# xfail:'):
                marks.append(pytest.mark.xfail(reason=line[len('# xfail:'):].strip(), strict=True))
        out.append(pytest.param(path, id=path.stem, marks=marks))
    return out


@pytest.mark.parametrize('path', _cases())
def test_dialogue(path: Path) -> None:
    Dialogue(path).run()


def test_there_are_dialogues() -> None:
    assert len(list(DIALOGUES.glob('*.dlg'))) >= 18
