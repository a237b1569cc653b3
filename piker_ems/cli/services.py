"""``piker services``: what runs in the pikerd tree, and where."""
from __future__ import annotations

import json

import click

from ._common import CliState, UserError, run


async def _list(state: CliState) -> dict[str, tuple[str, int]]:
    import tractor

    from ..service import list_registry, registry_is_up

    addr = state.registry
    if not await registry_is_up(addr):
        raise UserError(f'no pikerd running at {addr[0]}:{addr[1]} (start one with: pikerd --port {addr[1]})')
    async with tractor.open_root_actor(name='piker.services', arbiter_addr=addr, loglevel='critical'):
        return await list_registry(addr)


@click.command()
@click.option('--json', 'as_json', is_flag=True, help='Print the registry as JSON.')
@click.pass_obj
def services(state: CliState, as_json: bool) -> None:
    """List the actors registered with pikerd and their addresses."""
    table = run(_list, state)
    table = {k: v for k, v in table.items() if not k.startswith('piker.services.')}
    if as_json:
        click.echo(json.dumps({k: f'{h}:{p}' for k, (h, p) in sorted(table.items())}, indent=2))
        return
    for key, (host, port) in sorted(table.items()):
        name, _, uuid = key.rpartition('.')
        click.echo(f'{name:<20} {host}:{port:<6} {uuid}')
