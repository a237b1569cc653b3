"""Headless trading: ``piker order``, ``piker orders`` and ``piker cancel``.

Every command connects to emsd as client ``--name`` (default ``piker``): orders belong to that
name, so ``piker cancel`` can cancel what ``piker order`` placed. ``--json`` prints each message
as one JSON object per line (the whole ``Status`` as received), for scripts.
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import asynccontextmanager

import click

from ._common import CliState, UserError, check_fqsn, participant_options, require_pikerd, run

EXIT_TIMEOUT = 3


def order_exit_code(resp: str, detach: bool = False) -> int | None:
    """What ``piker order`` does after its order's status ``resp``: exit with a code, or wait.

    The first final status ends the wait (0, or 1 for ``broker_errored``); ``error`` for the
    order we just placed means it was never accepted, so nothing more will come (1); with
    ``--detach`` any status of an accepted, working order ends it with 0.
    """
    from ..clearing._statuses import ERROR, is_error, is_final, is_working

    if is_final(resp):
        return 1 if is_error(resp) else 0
    if resp == ERROR:
        return 1
    if detach and is_working(resp):
        return 0
    return None


def check_order(action: str, fqsn: str, price: float, size: float, mode: str, account: str) -> None:
    """Validate an order locally, before any actor starts: one-line usage error if invalid."""
    from pydantic import ValidationError

    from ..clearing._messages import Order

    if action != 'alert' and not size:
        raise click.UsageError('--size is required (and > 0) for buy/sell')
    try:
        Order(action=action, oid='0' * 32, symbol=fqsn, price=price, size=size,
              exec_mode=mode, account=account)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            field = '.'.join(str(part) for part in e.get('loc', ())) or 'order'
            option = f'--{field}' if field in ('price', 'size', 'mode', 'account') else field
            problems.append(f'{option}: {e.get("msg", "invalid")}')
        raise click.UsageError('; '.join(problems)) from None


def format_msg(msg) -> str:
    """One readable line for a Status, a position or a trading state change."""
    from ..clearing import BrokerdPosition, TradingState
    from ..clearing._statuses import ALERT_TRIGGERED, BROKER_FILLED, DARK_TRIGGERED

    # when it happened (a snapshot of an open order shows its last status's time, not now)
    time_ns = getattr(msg, 'time_ns', None)
    ts = time.strftime('%H:%M:%S', time.localtime(time_ns / 1e9 if time_ns else None))
    if isinstance(msg, BrokerdPosition):
        return f'{ts} position       {msg.symbol}.{msg.broker} [{msg.account}] size {msg.size:g} @ {msg.avg_price:g}'
    if isinstance(msg, TradingState):
        scope = 'cluster' if msg.scope == '*' else f'account {msg.scope}'
        return f'{ts} trading {msg.state:<8} [{msg.account}] ({scope} changed)'
    req = msg.req
    what = f'{req.action} {req.size:g} {req.symbol} @ {req.price:g} ({req.exec_mode})' if req else ''
    extra = []
    if msg.trigger_price is not None and msg.resp in (DARK_TRIGGERED, ALERT_TRIGGERED):
        extra.append(f'triggered at {msg.trigger_price:g}')
    bmsg = msg.brokerd_msg or {}
    if msg.resp == BROKER_FILLED:
        extra.append(f"filled {bmsg.get('size', 0):g} @ {bmsg.get('price', 0):g}")
    if msg.reason:
        extra.append(f'reason: {msg.reason}')
    owner = f' by {msg.owner}' if msg.owner else ''
    tail = ('  ' + '; '.join(extra)) if extra else ''
    return f'{ts} {msg.resp:<16} {what} [{msg.oid[:8]}{owner}]{tail}'


def emit(msg, as_json: bool) -> None:
    """Print one message (JSON line or readable line) and flush for pipes."""
    sys.stdout.write((json.dumps(msg.model_dump(mode='json')) if as_json else format_msg(msg)) + '\n')
    sys.stdout.flush()


async def _place(state: CliState, action: str, fqsn: str, price: float, size: float, mode: str,
                 account: str, name: str, timeout: float | None, detach: bool, as_json: bool) -> int:
    import trio

    from ..clearing import Status, open_ems
    from ..service import maybe_open_pikerd

    async with maybe_open_pikerd(state.registry, loglevel=state.loglevel, name=f'{name}.order',
                                 tractor_loglevel=state.tractor_loglevel) as services:
        if services is not None:
            click.secho('note: no pikerd running; emsd lives in this process and stops with it '
                        '(resting dark orders stop watching the market with it until emsd runs again: '
                        'start pikerd to keep them working)', fg='yellow', err=True)
        async with open_ems(fqsn, mode='paper', account=account, name=name, loglevel=state.loglevel) as (book, trades, _):
            oid = book.send(action, price, size, exec_mode=mode)
            seen: set[str] = set()
            with trio.move_on_after(timeout if timeout else float('inf')):
                async for msg in trades:
                    if not isinstance(msg, Status) or msg.oid != oid:
                        continue
                    key = msg.model_dump_json()
                    if key in seen:  # each status is printed once
                        continue
                    seen.add(key)
                    emit(msg, as_json)
                    code = order_exit_code(msg.resp, detach)
                    if code is not None:
                        return code
            click.secho(f'timed out after {timeout:g}s waiting on order {oid[:8]} (it stays active in emsd)',
                        fg='yellow', err=True)
            return EXIT_TIMEOUT
    return 1


@click.command()
@click.argument('action', type=click.Choice(['buy', 'sell', 'alert']))
@click.argument('fqsn')
@click.option('--price', type=float, required=True, help='Limit / trigger / alert price.')
@click.option('--size', type=float, default=None, help='Order size (required for buy/sell).')
@click.option('--mode', type=click.Choice(['dark', 'live', 'paper']), default='dark', show_default=True,
              help='dark: held in emsd until crossed; live: straight to the venue; paper: dark on the paper account.')
@click.option('--account', default='paper', show_default=True, help="'paper' trades the paper engine; another account the broker's live endpoint.")
@click.option('--name', default='piker', show_default=True, help='Client name that owns the order.')
@click.option('--timeout', type=float, default=None, help='Give up waiting after this many seconds (exit 3).')
@click.option('--detach', is_flag=True, help='Exit 0 as soon as the order is accepted (it stays active).')
@click.option('--json', 'as_json', is_flag=True, help='One JSON object per status per line.')
@participant_options
@click.pass_obj
def order(state: CliState, action: str, fqsn: str, price: float, size: float | None, mode: str,
          account: str, name: str, timeout: float | None, detach: bool, as_json: bool) -> None:
    """Place an order and print its statuses until it is done (exit 0), refused (exit 1) or --timeout (exit 3)."""
    check_fqsn(fqsn)
    check_order(action, fqsn, price, size or 0.0, mode, account)
    sys.exit(run(_place, state, action, fqsn, price, size or 0.0, mode, account, name, timeout, detach, as_json))


async def _follow(state: CliState, fqsn: str, watch_all: bool, name: str, as_json: bool, count: int | None,
                  timeout: float | None = None) -> int:
    import trio

    from ..clearing import open_ems
    from ..service import maybe_open_pikerd

    async with maybe_open_pikerd(state.registry, loglevel=state.loglevel, name=f'{name}.orders',
                                 tractor_loglevel=state.tractor_loglevel):
        async with open_ems(fqsn, name=f'{name}.watcher', watch='all' if watch_all else 'symbol',
                            loglevel=state.loglevel) as (book, trades, _):
            scope = f"every order on {fqsn.rpartition('.')[2]}" if watch_all else f'orders on {fqsn}'
            click.echo(f'following {scope} (Ctrl-C to stop)', err=True)
            # the trades stream starts with the start-up snapshot: the last status of each open
            # order in scope; it is printed in full, then --count counts the new messages
            snapshot = len(book.open_orders)
            seen = 0
            with trio.move_on_after(timeout if timeout is not None else float('inf')):
                async for msg in trades:
                    emit(msg, as_json)
                    if snapshot:
                        snapshot -= 1
                        continue
                    seen += 1
                    if count is not None and seen >= count:
                        return 0
            if count is None:
                return 0   # followed for --timeout seconds: done
            click.secho(f'timed out after {timeout:g}s with {seen} of {count} new messages', fg='yellow', err=True)
            return EXIT_TIMEOUT


@click.command()
@click.argument('fqsn')
@click.option('--all', 'watch_all', is_flag=True, help="Every order on FQSN's broker, not just FQSN.")
@click.option('--name', default='piker', show_default=True)
@click.option('--count', '-n', type=click.IntRange(min=1), default=None,
              help='Stop after N new messages (the open orders printed first do not count).')
@click.option('--timeout', type=click.FloatRange(min=0), default=None,
              help='Stop following after this many seconds (exit 0; exit 3 if --count was not reached).')
@click.option('--json', 'as_json', is_flag=True, help='One JSON object per message per line.')
@participant_options
@click.pass_obj
def orders(state: CliState, fqsn: str, watch_all: bool, name: str, count: int | None, timeout: float | None,
           as_json: bool) -> None:
    """Print the open orders on FQSN (each one's last status), then follow every new status
    on FQSN live, whoever placed the orders (position changes and trading state changes
    included)."""
    check_fqsn(fqsn)
    sys.exit(run(_follow, state, fqsn, watch_all, name, as_json, count, timeout))


@asynccontextmanager
async def _cancel_session(symbol: str, name: str, by_oid: bool, loglevel: str):
    """An emsd session to cancel from: watching the whole broker to find an oid by its prefix,
    or (for a participant without the watch role) only its own orders: then give the full oid."""
    from ..clearing import open_ems, open_ems_watching

    session = (open_ems_watching(symbol, 'all', name=name, loglevel=loglevel) if by_oid
               else open_ems(symbol, name=name, loglevel=loglevel))
    async with session as opened:
        yield opened


async def _cancel(state: CliState, oid: str | None, fqsn: str | None, name: str, timeout: float, as_json: bool) -> int:
    import trio

    from ..clearing import Status
    from ..clearing._statuses import ERROR, is_error, is_final
    from ..service import maybe_open_pikerd

    await require_pikerd(state, 'nothing to cancel')

    async with maybe_open_pikerd(state.registry, loglevel=state.loglevel, name=f'{name}.cancel',
                                 tractor_loglevel=state.tractor_loglevel):
        symbol = fqsn or 'any.sim'
        async with _cancel_session(symbol, name, bool(oid), state.loglevel) as (book, trades, _):
            if oid:
                matches = [o for o in book.orders if o.startswith(oid)]
                if len(matches) > 1:
                    raise UserError(f'oid prefix {oid} is ambiguous: {", ".join(m[:12] for m in matches)}')
                targets = matches or [oid]
            else:
                targets = [o for o, req in book.orders.items() if req.owner == book.owner]
                if not targets:
                    click.echo(f'no open orders of {name} on {fqsn}', err=True)
                    return 0
            pending = set(targets)
            for t in targets:
                book.cancel(t)
            failed = False
            with trio.move_on_after(timeout):
                async for msg in trades:
                    # the order ended (cancelled, or something else first), or the cancel was refused
                    if isinstance(msg, Status) and msg.oid in pending and (is_final(msg.resp) or msg.resp == ERROR):
                        emit(msg, as_json)
                        failed |= is_error(msg.resp)
                        pending.discard(msg.oid)
                        if not pending:
                            return 1 if failed else 0
            click.secho(f'{len(pending)} cancel(s) unconfirmed after {timeout:g}s', fg='yellow', err=True)
            return EXIT_TIMEOUT


@click.command()
@click.argument('oid', required=False)
@click.option('--all', 'fqsn', default=None, metavar='FQSN', help='Cancel all your open orders on FQSN.')
@click.option('--name', default='piker', show_default=True, help='Client name that owns the orders.')
@click.option('--timeout', type=float, default=10.0, show_default=True)
@click.option('--json', 'as_json', is_flag=True)
@participant_options
@click.pass_obj
def cancel(state: CliState, oid: str | None, fqsn: str | None, name: str, timeout: float, as_json: bool) -> None:
    """Cancel order OID (a unique prefix is enough), or --all FQSN."""
    if bool(oid) == bool(fqsn):
        raise click.UsageError('give an OID or --all FQSN (not both)')
    if fqsn:
        check_fqsn(fqsn)
    sys.exit(run(_cancel, state, oid, fqsn, name, timeout, as_json))
