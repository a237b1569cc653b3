"""Shared CLI plumbing: silencing tractor's deprecation noise, running trio, readable errors.

Every user-facing failure (unknown broker, bad symbol, no daemon, lost feed) ends as one line on
stderr and a non-zero exit code, never a traceback.
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import click

# before tractor is imported anywhere; children inherit the env var
os.environ.setdefault('PYTHONWARNINGS', 'ignore::FutureWarning')
warnings.filterwarnings('ignore', category=FutureWarning)

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


@dataclass
class CliState:
    """Options of the ``piker`` group shared by every sub-command."""

    host: str | None
    port: int | None
    loglevel: str
    tractor_loglevel: str | None

    @property
    def registry(self) -> tuple[str, int]:
        from ..config import registry_addr

        return registry_addr(self.host, self.port)


class OneLineErrors:
    """Mixin for click commands and groups: usage errors are one ``error: ...`` line.

    click's own rendering prints the usage and a hint over several lines; a user (or a script)
    gets one line on stderr and click's exit code (2 for usage errors) instead.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as err:  # bare `piker`: the help, as usual
            click.echo(err.ctx.get_help() if err.ctx else err.format_message(), err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            click.secho(f'error: {_one_line(err.format_message())}', fg='red', err=True)
            sys.exit(err.exit_code)
        except click.Abort:
            click.secho('error: aborted', fg='red', err=True)
            sys.exit(EXIT_FAILED)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


class Command(OneLineErrors, click.Command):
    """A click command whose usage errors are one line."""


class Group(OneLineErrors, click.Group):
    """A click group whose usage errors (its own and its sub-commands') are one line."""


def _one_line(text: str) -> str:
    return ' '.join(part.strip() for part in str(text).splitlines() if part.strip())


def _lost_ems() -> type[BaseException]:
    from ..clearing import EmsLost

    return EmsLost


def _known_errors() -> tuple[type[BaseException], ...]:
    from ..brokers import NoBrokerBackend, SymbolNotFound
    from ..data.feed import FeedLost
    from ..service import PikerdError
    from ..symbols import FqsnError

    from ..ui._exec import NoDisplay, ScreenshotError

    from ..service._auth import AuthError, Refused

    return (NoBrokerBackend, SymbolNotFound, FqsnError, PikerdError, FeedLost, UserError, NoDisplay,
            ScreenshotError, Refused, AuthError)


class UserError(Exception):
    """A failure to report to the user as one line (with an optional exit code)."""

    def __init__(self, msg: str, code: int = EXIT_FAILED) -> None:
        super().__init__(msg)
        self.code = code


def _find(exc: BaseException, types: tuple[type[BaseException], ...], _depth: int = 0) -> BaseException | None:
    """The first exception of ``types`` in ``exc``, its groups and its cause/context chain."""
    if _depth > 20:
        return None
    if isinstance(exc, types):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = _find(sub, types, _depth + 1)
            if found is not None:
                return found
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        return _find(cause, types, _depth + 1)
    return None


def _remote_reason(exc: BaseException) -> str | None:
    import tractor

    found = _find(exc, (tractor.RemoteActorError,))
    if found is None:
        return None
    msgdata = getattr(found, 'msgdata', {}) or {}
    tb = (msgdata.get('tb_str') or '').strip().splitlines()
    last = tb[-1] if tb else str(found)
    return f'{msgdata.get("type_str", "remote error")} in a service: {last}'


async def require_pikerd(state: CliState, why: str = '') -> tuple[str, int]:
    """The registry's address, or a one-line :class:`UserError` if no pikerd runs there
    (``why``: what the command cannot do then, e.g. ``no positions to show``)."""
    from ..service import registry_is_up

    addr = state.registry
    if not await registry_is_up(addr):
        raise UserError(f'no pikerd running at {addr[0]}:{addr[1]}{": " + why if why else ""} '
                        f'(start one with: pikerd --port {addr[1]})')
    return addr


def run(fn: Callable[..., Awaitable[Any]], *args: Any, runner: Callable[..., Any] | None = None) -> Any:
    """Run ``fn(*args)`` under trio and turn failures into one readable line + exit code.

    ``runner`` replaces ``trio.run`` (e.g. the Qt guest-mode runner of the chart).
    """
    import trio

    try:
        _use_cli_credential()
        return (runner or trio.run)(fn, *args)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except BaseException as exc:  # noqa: BLE001 - this is the CLI's last line of defence
        if isinstance(exc, SystemExit):
            raise
        if _find(exc, (KeyboardInterrupt,)) is not None:
            sys.exit(EXIT_INTERRUPTED)
        lost = _find(exc, (_lost_ems(),))
        if lost is not None:
            click.secho(f'error: lost the EMS: {_one_line(lost)}', fg='red', err=True)
            sys.exit(EXIT_FAILED)
        known = _find(exc, _known_errors())
        if known is not None:
            click.secho(f'error: {_one_line(known)}', fg='red', err=True)
            sys.exit(getattr(known, 'code', EXIT_FAILED))
        reason = _remote_reason(exc)
        if reason is not None:
            click.secho(f'error: {reason}', fg='red', err=True)
            sys.exit(EXIT_FAILED)
        raise


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value:
        ctx.meta[f'piker_ems.{param.name}'] = value


def participant_options(fn: Callable) -> Callable:
    """``--participant NAME`` and ``--token TOKEN``: act as that participant (default: the local
    participant, or ``$PIKER_EMS_PARTICIPANT`` / ``$PIKER_EMS_TOKEN``)."""
    fn = click.option('--token', default=None, expose_value=False, callback=_remember, metavar='TOKEN',
                      help="The participant's token (or $PIKER_EMS_TOKEN).")(fn)
    fn = click.option('--participant', default=None, expose_value=False, callback=_remember, metavar='NAME',
                      help='Act as this participant (default: the local one, or $PIKER_EMS_PARTICIPANT).')(fn)
    return fn


def _use_cli_credential() -> None:
    """Make the command's ``--participant``/``--token`` this process's credential."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    participant = ctx.meta.get('piker_ems.participant')
    token = ctx.meta.get('piker_ems.token')
    if participant or token:
        from ..service._auth import credential_for, set_default_credential

        set_default_credential(credential_for(participant, token))


def check_fqsn(fqsn: str) -> tuple[str, str]:
    """Validate a symbol and its broker before starting any actor (fast, clean failure)."""
    from ..brokers import NoBrokerBackend, get_brokermod
    from ..symbols import FqsnError, parse_fqsn

    try:
        sym, broker = parse_fqsn(fqsn)
        get_brokermod(broker)
    except (FqsnError, NoBrokerBackend) as err:
        click.secho(f'error: {err}', fg='red', err=True)
        sys.exit(EXIT_USAGE)
    return sym, broker
