"""``piker participants``: who may use this cluster, and with which roles.

Participants live in the config dir next to the cluster secret (see
:mod:`piker_ems.service._auth`); these commands edit them there, on the machine that runs
pikerd. Changes apply to the next connection (no restart).
"""
from __future__ import annotations

import click

from ._common import Group, UserError


@click.group(cls=Group)
def participants() -> None:
    """Add, list and remove participants (identities with roles and a token)."""


@participants.command('add')
@click.argument('name')
@click.option('--roles', required=True, help='Comma-separated: watch, trade, control-others, admin.')
def add(name: str, roles: str) -> None:
    """Add participant NAME (or give it a new token) and print its token once."""
    from ..service._auth import add_participant, parse_roles

    try:
        token = add_participant(name, parse_roles(roles))
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    click.echo(f'participant {name} added with roles {roles}; its token (shown only now, '
               f'only a hash is kept):', err=True)
    click.echo(token)


@participants.command('list')
def list_() -> None:
    """List participants and their roles (the local participant is everyone holding the
    cluster secret on this machine)."""
    from ..service._auth import list_participants

    for name, roles in list_participants().items():
        click.echo(f'{name:<20} {",".join(roles)}')


@participants.command('remove')
@click.argument('name')
def remove(name: str) -> None:
    """Remove participant NAME: its token stops working at its next connection."""
    from ..service._auth import LOCAL, remove_participant

    if name == LOCAL:
        raise click.UsageError('the local participant cannot be removed (it is whoever holds the cluster secret)')
    if not remove_participant(name):
        click.secho(f'error: no participant {name!r}', fg='red', err=True)
        raise SystemExit(1)
    click.echo(f'participant {name} removed', err=True)


__all__ = ['participants', 'UserError']
