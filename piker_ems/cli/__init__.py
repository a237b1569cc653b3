"""Command line: ``pikerd`` (the daemon) and ``piker`` (client commands).

Sub-commands live in their own modules and are attached to the ``piker`` group here.
"""
from __future__ import annotations

import click

from ..log import LEVELS
from ._common import CliState, Command, Group, run  # noqa: F401  (sets warning filters before tractor loads)
from .chart import chart
from .orders import cancel, order, orders
from .participants import participants
from .positions import positions
from .quotes import quote
from .risk import halt, reduce, resume
from .serve import serve
from .services import services

LOGLEVEL = click.Choice(LEVELS, case_sensitive=False)


@click.command(cls=Command)
@click.option('--host', default=None, help='Registry host to bind (default 127.0.0.1 or $PIKER_EMS_REGISTRY).')
@click.option('--port', '-p', type=int, default=None, help='Registry port (default 6116 or $PIKER_EMS_REGISTRY).')
@click.option('--loglevel', '-l', type=LOGLEVEL, default='info', show_default=True)
@click.option('--tl', 'tractor_loglevel', default=None, help="tractor's own log level (default: quiet).")
@click.option('--pdb', is_flag=True, help='tractor debug mode: a crashed daemon drops into pdb and BLOCKS until resumed.')
def pikerd(host: str | None, port: int | None, loglevel: str, tractor_loglevel: str | None, pdb: bool) -> None:
    """Run the root daemon: the registry and owner of brokerd/emsd services."""
    from ..config import registry_addr

    addr = registry_addr(host, port)
    from ..service._root import is_loopback

    if not is_loopback(addr[0]):
        click.secho(f'WARNING: pikerd and its services listen on {addr[0]}, reachable from other hosts; the '
                    f'transport has no TLS: use a trusted network, WireGuard or an SSH tunnel '
                    f'(README "Several machines")', fg='yellow', err=True)
    if pdb:
        click.secho('WARNING: debug mode: a crashed service blocks until resumed from this console', fg='yellow', err=True)

    async def main() -> None:
        import trio

        from ..service import open_pikerd

        async with open_pikerd(addr, loglevel=loglevel, debug_mode=pdb, tractor_loglevel=tractor_loglevel):
            click.echo(f'pikerd running at {addr[0]}:{addr[1]} (Ctrl-C or SIGTERM to stop)', err=True)
            await trio.sleep_forever()

    run(main)


@click.group(cls=Group)
@click.option('--host', default=None, help='Registry host of the pikerd to use.')
@click.option('--port', '-p', type=int, default=None, help='Registry port of the pikerd to use.')
@click.option('--loglevel', '-l', type=LOGLEVEL, default='warning', show_default=True)
@click.option('--tl', 'tractor_loglevel', default=None, help="tractor's own log level (default: quiet).")
@click.pass_context
def cli(ctx: click.Context, host: str | None, port: int | None, loglevel: str, tractor_loglevel: str | None) -> None:
    """piker_ems client commands (quotes, orders, positions, chart)."""
    ctx.obj = CliState(host=host, port=port, loglevel=loglevel, tractor_loglevel=tractor_loglevel)


cli.add_command(quote)
cli.add_command(services)
cli.add_command(order)
cli.add_command(orders)
cli.add_command(cancel)
cli.add_command(positions)
cli.add_command(chart)
cli.add_command(participants)
cli.add_command(halt)
cli.add_command(reduce)
cli.add_command(resume)
cli.add_command(serve)
