"""``piker positions``: every account's positions, with realized and unrealized PnL.

Positions live in the venues emsd trades through (the paper engine and each broker's live
``trades_dialogue``). The command asks emsd (``ems_positions``), which first opens every
backend's venues, so a freshly (re)started pikerd shows the positions its venues restored from
their journals; each open position is priced at the last price (emsd's scan, else a short
quote feed).
"""
from __future__ import annotations

import json
import math
import sys

import click

from ..simvenue._numbers import clean_pnl
from ._common import CliState, participant_options, require_pikerd, run

PRICE_TIMEOUT_S = 10.0
CLIENT_NAME = 'piker.positions'


def with_pnl(raw: dict, last: float | None) -> dict:
    """One output row from an ``ems_positions`` entry and the symbol's last price."""
    size = float(raw.get('size') or 0.0)
    avg = float(raw.get('avg_price') or 0.0)
    if size == 0:
        unrealized: float | None = 0.0
    elif last is None or not math.isfinite(last):
        unrealized = None
    else:
        unrealized = clean_pnl((last - avg) * size, size)  # no residue of the average's rounding
    realized = float(raw.get('realized_pnl') or 0.0)
    fees = float(raw.get('fees') or 0.0)
    return {
        'account': raw.get('account'),
        'symbol': f"{raw['symbol']}.{raw['broker']}",
        'broker': raw.get('broker'),
        'venue': raw.get('venue'),
        'size': size,
        'avg_price': avg,
        'realized_pnl': realized,
        'unrealized_pnl': unrealized,
        'fees': fees,
        # after fees: realized + unrealized - fees paid on the position's fills
        # (the sum of rounded parts: one decimal fewer than each part)
        'net_pnl': None if unrealized is None else clean_pnl(realized + unrealized - fees, 10 * max(abs(size), 1.0)),
        'last': last,
        'currency': raw.get('currency') or '',
    }


async def _last_prices(fqsns: list[str], loglevel: str) -> dict[str, float]:
    """Last prices of ``fqsns`` from one short-lived feed (those it could not price are left out)."""
    import trio

    from ..data import open_feed

    out: dict[str, float] = {}
    if not fqsns:
        return out
    with trio.move_on_after(PRICE_TIMEOUT_S):
        try:
            async with open_feed(fqsns, loglevel=loglevel) as feed:
                for fqsn in fqsns:
                    last = (feed.first_quotes.get(fqsn) or {}).get('last')
                    if isinstance(last, (int, float)) and math.isfinite(last) and last > 0:
                        out[fqsn] = float(last)
        except Exception as err:  # noqa: BLE001 - no price is shown as such, not a failure
            click.secho(f'note: no last price for {", ".join(fqsns)}: {err}', fg='yellow', err=True)
    return out


async def _positions(state: CliState, account: str | None) -> list[dict]:
    from ..service import maybe_open_emsd, maybe_open_pikerd
    from ..service._auth import call

    addr = await require_pikerd(state, 'no positions to show')
    async with maybe_open_pikerd(addr, loglevel=state.loglevel, name=CLIENT_NAME,
                                 tractor_loglevel=state.tractor_loglevel):
        async with maybe_open_emsd(loglevel=state.loglevel) as portal:
            raw = await call(portal, 'piker_ems.clearing._ems', 'ems_positions', account=account)
        missing = sorted({f"{p['symbol']}.{p['broker']}" for p in raw if p.get('last') is None and p.get('size')})
        prices = await _last_prices(missing, state.loglevel)
    rows = [with_pnl(p, p.get('last') if p.get('last') is not None else prices.get(f"{p['symbol']}.{p['broker']}"))
            for p in raw]
    return sorted(rows, key=lambda r: (r['account'] or '', r['symbol'], r['venue'] or ''))


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return 'n/a'
    if value == 0:
        value = 0.0  # no '-0'
    return f'{value:+.10g}' if signed and value else f'{value:.10g}'


def format_table(rows: list[dict]) -> list[str]:
    """Aligned lines: a header, then one line per position."""
    header = ('SYMBOL', 'ACCOUNT', 'SIZE', 'AVG PRICE', 'REALIZED', 'UNREALIZED', 'FEES', 'NET', 'LAST')
    table = [header] + [(
        r['symbol'], r['account'] or '', _num(r['size']), _num(r['avg_price']),
        _num(r['realized_pnl'], signed=True), _num(r['unrealized_pnl'], signed=True),
        _num(r['fees']), _num(r['net_pnl'], signed=True), _num(r['last']),
    ) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    out = []
    for line in table:
        cells = [line[i].ljust(widths[i]) if i < 2 else line[i].rjust(widths[i]) for i in range(len(header))]
        out.append('  '.join(cells).rstrip())
    return out


def check_account(account: str | None) -> None:
    if account is not None and (not account.strip() or any(c.isspace() or not c.isprintable() for c in account)):
        raise click.UsageError(f'--account: not a valid account name: {account!r}')


@click.command()
@click.option('--account', default=None, help="Only this account ('paper' is the paper engine); default: every account.")
@click.option('--json', 'as_json', is_flag=True, help='One JSON object per position per line.')
@participant_options
@click.pass_obj
def positions(state: CliState, account: str | None, as_json: bool) -> None:
    """List the positions of every account (paper and live) with realized and unrealized PnL.

    Unrealized PnL is (last - avg price) * size at the symbol's last price ('n/a' / null when
    no price is available); realized PnL is gross, FEES are those paid on the position's fills
    and NET is realized + unrealized - fees.
    """
    check_account(account)
    rows = run(_positions, state, account)
    if not rows:
        scope = f'account {account}' if account is not None else 'any account'
        click.echo(f'no positions in {scope}', err=True)
        return
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + '\n')
        sys.stdout.flush()
        return
    for line in format_table(rows):
        click.echo(line)
