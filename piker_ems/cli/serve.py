"""``piker serve NAME``: run one service (``brokerd.<broker>``, ``paperboi.<broker>`` or
``emsd``) in this process, on this host, for the pikerd cluster at ``--registry``.

See README "Several machines". Usage errors (a bad name, a non-loopback address without
``--allow-remote``, an address that cannot be bound, no secret) are one line and a non-zero
exit before any actor starts.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..log import LEVELS
from ._common import CliState, UserError, run


def _check_name(name: str) -> None:
    from ..brokers import NoBrokerBackend
    from ..service._serve import served_spec
    from ..service._specs import PikerdError

    try:
        served_spec(name)
    except (PikerdError, NoBrokerBackend) as err:
        raise click.UsageError(str(err)) from None


def _check_host(host: str, allow_remote: bool) -> None:
    from ..service._root import is_loopback

    if host in ('0.0.0.0', '::', ''):
        raise click.UsageError(f'--host {host or "(empty)"}: bind one address that the other hosts reach '
                               f'(a wildcard would be registered as is, and nobody could connect to it)')
    if not is_loopback(host):
        if not allow_remote:
            raise click.UsageError(f'--host {host} is not a loopback address: add --allow-remote to accept '
                                   f'connections from other hosts (read README "Several machines" first: '
                                   f'the transport is not encrypted)')
        click.secho(f'WARNING: listening on {host}, reachable from other hosts; the transport has no TLS: '
                    f'use it only on a trusted network, WireGuard or an SSH tunnel', fg='yellow', err=True)


def _use_secret_file(path: str | None) -> None:
    """``--secret-file`` becomes ``$PIKER_EMS_SECRET_FILE`` (the service child inherits it);
    whichever file is used must exist: a served service never makes a secret of its own."""
    from ..service._auth import ENV_SECRET_FILE, secret_path

    if path:
        os.environ[ENV_SECRET_FILE] = str(Path(path).expanduser().resolve())
    secret = secret_path()
    if not secret.is_file():
        raise UserError(f'no cluster secret at {secret}: copy cluster.secret from the pikerd host '
                        f'(mode 0600, see README "Several machines") and give --secret-file')
    try:
        secret.read_bytes()
    except OSError as err:
        raise UserError(f'cannot read the cluster secret {secret}: {err.strerror}') from None


@click.command()
@click.argument('name', metavar='NAME')
@click.option('--host', default='127.0.0.1', show_default=True,
              help='Address to listen on (a loopback address unless --allow-remote).')
@click.option('--port', type=click.IntRange(0, 65535), default=0, help='Port to listen on (default: a free one).')
@click.option('--allow-remote', is_flag=True, help='Allow a non-loopback --host (reachable from other hosts).')
@click.option('--registry', default=None, metavar='HOST:PORT',
              help="pikerd's registry (default: piker's --host/--port, $PIKER_EMS_REGISTRY, 127.0.0.1:6116).")
@click.option('--secret-file', default=None, metavar='PATH',
              help="The cluster secret copied from the pikerd host (or $PIKER_EMS_SECRET_FILE; "
                   "default: this config dir's cluster.secret).")
@click.option('--loglevel', '-l', 'serve_loglevel', type=click.Choice(LEVELS, case_sensitive=False), default=None,
              help="Log level (default: piker's --loglevel).")
@click.pass_obj
def serve(state: CliState, name: str, host: str, port: int, allow_remote: bool, registry: str | None,
          secret_file: str | None, serve_loglevel: str | None) -> None:
    """Run service NAME (brokerd.<broker>, paperboi.<broker> or emsd) in this process and
    register it with pikerd, which then uses it instead of starting its own."""
    from ..config import parse_addr

    _check_name(name)
    _check_host(host, allow_remote)
    try:
        reg = parse_addr(registry) if registry else state.registry
    except ValueError as err:
        raise click.UsageError(f'--registry: {err}') from None
    loglevel = serve_loglevel or state.loglevel

    async def main() -> int:
        from ..service._serve import check_bind, serve as run_service

        _use_secret_file(secret_file)
        try:
            check_bind(host, port)
        except OSError as err:
            raise UserError(f'cannot listen at {host}:{port}: {err.strerror or err}') from None

        def ready(addr: tuple[str, int]) -> None:
            click.echo(f'{name} served at {addr[0]}:{addr[1]}, registered with pikerd at {reg[0]}:{reg[1]} '
                       f'(Ctrl-C or SIGTERM to stop)', err=True)

        code = await run_service(name, (host, port), reg, loglevel=loglevel,
                                 tractor_loglevel=state.tractor_loglevel, on_ready=ready)
        if code:
            click.secho(f'error: {name} died', fg='red', err=True)
        return code

    sys.exit(run(main))
