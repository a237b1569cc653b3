"""``piker services``: what runs in the pikerd tree, and where."""
from __future__ import annotations

import json

import click

from ._common import CliState, UserError, run


async def _list(state: CliState) -> tuple[dict[str, tuple[str, int]], dict[str, str] | None]:
    import tractor

    from ..service import list_registry, registry_is_up

    addr = state.registry
    if not await registry_is_up(addr):
        raise UserError(f'no pikerd running at {addr[0]}:{addr[1]} (start one with: pikerd --port {addr[1]})')
    async with tractor.open_root_actor(name='piker.services', arbiter_addr=addr, loglevel='critical'):
        table = await list_registry(addr)
        return table, await _trading_states(table)


async def _trading_states(table: dict) -> dict[str, str] | None:
    """emsd's trading states (cluster and halted/reducing accounts), if emsd runs."""
    if not any(k.rpartition('.')[0] == 'emsd' for k in table):
        return None
    from ..service._auth import call
    from ..service._registry import find_service

    try:
        async with find_service('emsd') as portal:
            if portal is None:
                return None
            return await call(portal, 'piker_ems.clearing._ems', 'ems_trading_states')
    except Exception:  # noqa: BLE001 - the listing must not fail because emsd is busy or old
        return None


@click.command()
@click.option('--json', 'as_json', is_flag=True, help='Print the registry as JSON.')
@click.pass_obj
def services(state: CliState, as_json: bool) -> None:
    """List the actors registered with pikerd and their addresses."""
    table, trading = run(_list, state)
    table = {k: v for k, v in table.items() if not k.startswith('piker.services.')}
    if as_json:
        out = {k: f'{h}:{p}' for k, (h, p) in sorted(table.items())}
        click.echo(json.dumps({**out, 'trading': trading} if trading else out, indent=2))
        return
    for key, (host, port) in sorted(table.items()):
        name, _, uuid = key.rpartition('.')
        click.echo(f'{name:<20} {host}:{port:<6} {uuid}')
    if trading:
        click.echo('trading: ' + ', '.join(
            f"{'cluster' if scope == '*' else scope} {st}" for scope, st in trading.items()))
