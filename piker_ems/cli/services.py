"""``piker services``: what runs in the cluster, where, and who started it."""
from __future__ import annotations

import json
import time

import click

from ._common import CliState, participant_options, require_pikerd, run


async def _list(state: CliState) -> tuple[dict[str, tuple[str, int]], dict, dict[str, str] | None]:
    from ..service import find_service, list_registry
    from ..service._root import open_client_root
    from ..service._auth import call

    addr = await require_pikerd(state)
    async with open_client_root('piker.services', addr, loglevel='critical'):
        table = await list_registry(addr)
        async with find_service('pikerd') as pikerd:
            known = {} if pikerd is None else await call(pikerd, 'piker_ems.service._daemon', 'describe_services')
        return table, known, await _trading_states(table)


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


def kinds(table: dict[str, tuple[str, int]], known: dict) -> list[tuple[str, str, str, str]]:
    """``(name, address, kind, uuid)`` rows: ``pikerd``, ``service`` (spawned by pikerd),
    ``served`` (``piker serve``, accepted by pikerd), ``served,down`` (one that died: it is
    not replaced by default), ``supervisor`` (a ``piker serve`` process), ``actor`` (others:
    clients, emsd's own paper engine)."""
    own = {tuple(v['uid']) for v in known.get('own', {}).values() if v.get('uid')}
    served = {tuple(v['uid']): v for v in known.get('served', {}).values()}
    rows = []
    for key, (host, port) in table.items():
        name, _, uuid = key.rpartition('.')
        uid = (name, uuid)
        if name == 'pikerd':
            kind = 'pikerd'
        elif uid in own:
            kind = 'service'
        elif uid in served:
            kind = 'served'
        elif name.startswith('serve.'):
            kind = 'supervisor'
        else:
            kind = 'actor'
        rows.append((name, f'{host}:{port}', kind, uuid))
    for uid, info in served.items():
        if not info.get('up'):
            since = time.strftime('%H:%M:%S', time.localtime(info.get('since') or 0))
            rows.append((uid[0], '{}:{}'.format(*info['addr']), f'served,down(since {since})', uid[1]))
    return sorted(rows)


@click.command()
@click.option('--json', 'as_json', is_flag=True,
              help='Print {"<name>.<uuid>": {"addr": "host:port", "kind": ..., emsd: "trading": {...}}} as JSON.')
@participant_options
@click.pass_obj
def services(state: CliState, as_json: bool) -> None:
    """List the actors registered with pikerd, their addresses and kinds (service: started by
    pikerd; served: started with `piker serve`, maybe on another host; supervisor: a `piker
    serve` process)."""
    table, known, trading = run(_list, state)
    table = {k: v for k, v in table.items() if not k.startswith('piker.services.')}
    rows = kinds(table, known)
    if as_json:
        out = {f'{n}.{u}': {'addr': a, 'kind': k} for n, a, k, u in rows}
        for n, _, _, u in rows:
            if n == 'emsd' and trading:   # the trading states are emsd's
                out[f'{n}.{u}']['trading'] = trading
        click.echo(json.dumps(out, indent=2))
        return
    for name, addr, kind, uuid in rows:
        click.echo(f'{name:<20} {addr:<21} {kind:<12} {uuid}')
    if trading:
        click.echo('trading: ' + ', '.join(
            f"{'cluster' if scope == '*' else scope} {st}" for scope, st in trading.items()))
