"""Driving a ``trades_dialogue`` (paper engine or sim exchange) with raw Brokerd* dicts."""
from __future__ import annotations

import uuid
from contextlib import asynccontextmanager

import trio

from piker_ems.clearing._messages import VenueSnapshot, parse_brokerd_msg
from piker_ems.service._auth import endpoint_name, make_auth
from piker_ems.service._ipc import is_heartbeat


SIM_FROZEN = """
[sim]
seed = 1
rate = 20
volatility = 0.0
max_spread = 1
tick_size = 0.01
start_price = 100.0
test_hooks = true
"""
"""A sim market that never moves on its own: bid 100.00 / ask 100.01, so fill prices are exact."""


@asynccontextmanager
async def dialogue(portal, endpoint, **kwargs):
    """Open ``endpoint`` on ``portal`` and yield ``(stream, started snapshot)`` (a
    ``VenueSnapshot`` dict: positions, orders, fills, since_ns)."""
    auth = make_auth(endpoint_name(endpoint))
    async with portal.open_context(endpoint, auth=auth, **kwargs) as (ctx, snapshot):
        VenueSnapshot.model_validate(snapshot)
        async with ctx.open_stream() as stream:
            yield stream, snapshot


async def recv(stream, n: int, timeout: float = 10.0) -> list[dict]:
    """The next ``n`` events (heartbeats skipped), each validated as emsd would."""
    out = []
    with trio.fail_after(timeout):
        while len(out) < n:
            msg = await stream.receive()
            if is_heartbeat(msg):
                continue
            parse_brokerd_msg(msg)
            out.append(msg)
    return out


def order(action: str, price: float, size: float = 1.0, reqid=None, symbol: str = 'btcusd', oid=None) -> dict:
    """A raw BrokerdOrder dict (``reqid=None``: new; a known reqid: modify)."""
    return {
        'name': 'order', 'action': action, 'oid': oid or str(uuid.uuid4()), 'account': 'paper',
        'reqid': reqid, 'symbol': symbol, 'price': price, 'size': size,
    }


def cancel(oid: str, reqid) -> dict:
    """A raw BrokerdCancel dict."""
    return {'name': 'cancel', 'oid': oid, 'reqid': reqid, 'account': 'paper'}


def kinds(msgs: list[dict]) -> list[str]:
    """Message kinds in order, statuses with their status (``status:filled``)."""
    return [m['name'] if m['name'] != 'status' else f"status:{m['status']}" for m in msgs]


def drain(d) -> list[dict]:
    """Everything an in-process ``simvenue`` Dialogue has queued for emsd, each checked to be
    a valid venue message."""
    out = []
    while True:
        try:
            out.append(d.outbox.receive_nowait())
        except trio.WouldBlock:
            for m in out:
                parse_brokerd_msg(m)
            return out
