"""``piker halt`` / ``piker reduce`` / ``piker resume``: the trading state of the cluster or of
one account (the kill switch).

``halt`` cancels every working order in scope (dark and live; alerts too with ``--alerts``)
and refuses new ones until ``resume``; cancels still work. ``reduce`` accepts only orders that
shrink a position. The state is journaled by emsd (it survives a restart) and needs the
``admin`` role.
"""
from __future__ import annotations

import json

import click

from ._common import CliState, participant_options, require_pikerd, run
from .positions import check_account

CLIENT_NAME = 'piker.risk'


async def _set(state: CliState, trading: str, account: str | None, alerts: bool) -> dict:
    from ..service import maybe_open_emsd, maybe_open_pikerd
    from ..service._auth import call

    addr = await require_pikerd(state)
    async with maybe_open_pikerd(addr, loglevel=state.loglevel, name=CLIENT_NAME,
                                 tractor_loglevel=state.tractor_loglevel):
        async with maybe_open_emsd(loglevel=state.loglevel) as portal:
            return await call(portal, 'piker_ems.clearing._ems', 'ems_set_trading_state',
                              state=trading, account=account, alerts=alerts)


def _report(out: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(out))
        return
    scope = 'cluster' if out['scope'] == '*' else f"account {out['scope']}"
    n = out['cancelled']
    extra = f", {n} order{'' if n == 1 else 's'} cancelled" if out['state'] == 'halted' else ''
    click.echo(f"{scope}: {out['state']}{extra}")


def _command(trading: str, doc: str, with_alerts: bool = False):
    @click.command(name={'halted': 'halt', 'reducing': 'reduce', 'active': 'resume'}[trading], help=doc)
    @click.option('--account', default=None, help='Only this account (default: the whole cluster).')
    @click.option('--json', 'as_json', is_flag=True, help='Print the result as JSON.')
    @participant_options
    @click.pass_obj
    def cmd(state: CliState, account: str | None, as_json: bool, alerts: bool = False) -> None:
        check_account(account)
        _report(run(_set, state, trading, account, alerts), as_json)

    if with_alerts:
        cmd = click.option('--alerts', is_flag=True, help='Cancel alerts too (default: they stay).')(cmd)
    return cmd


halt = _command('halted', 'Halt trading (cluster, or --account): cancel every working order and '
                'refuse new ones; cancels still work.', with_alerts=True)
reduce = _command('reducing', 'Accept only orders that shrink a position (cluster, or --account).')
resume = _command('active', 'Resume normal trading (cluster, or --account).')
