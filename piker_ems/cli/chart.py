"""``piker chart FQSN``: the Qt chart with order mode (SPEC §8).

Qt is imported only inside the command: sub-actors re-import CLI modules and must not pay for
(or need a display for) PyQt.
"""
from __future__ import annotations

import os
import sys

import click

from ._common import CliState, check_fqsn, participant_options, run


@click.command()
@click.argument('fqsns', metavar='FQSN [FQSN...]', nargs=-1, required=True)
@click.option('--period', type=float, default=5.0, show_default=True, help='Bar period in seconds.')
@click.option('--size', type=float, default=1.0, show_default=True, help='Starting size of orders placed with f/d (+/- change it).')
@click.option('--account', default='paper', show_default=True,
              help="'paper' trades the paper engine; another account the broker's live endpoint.")
@click.option('--name', default='chart', show_default=True,
              help='Client name owning the orders placed here (a restarted chart of the same name adopts them).')
@click.option('--screenshot', type=click.Path(dir_okay=False), default=None,
              help='Headless run: save a PNG of the window after --exit-after seconds, then exit.')
@click.option('--exit-after', type=float, default=None, help='Exit after this many seconds (default 5 with --screenshot).')
@click.option('--notify', is_flag=True, help='Desktop notifications on fills and alerts (needs notify-send).')
@click.option('--control-others', is_flag=True,
              help="Let this chart cancel/drag other clients' orders (c under the cursor, Shift+cc for all).")
@participant_options
@click.pass_obj
def chart(state: CliState, fqsns: tuple[str, ...], period: float, size: float, account: str, name: str,
          screenshot: str | None, exit_after: float | None, notify: bool, control_others: bool) -> None:
    """Chart FQSN live and trade it from the keyboard (several FQSNs: a tab each).

    \b
    hold f (buy), d (sell), a (alert): stage a line at the cursor
      + hold s or ctrl: live (to the broker) instead of dark (held by the EMS)
      left click: submit; release the key: unstage
    drag a line: modify      c / Delete: cancel under cursor      cc: cancel all yours
    Shift+cc (with --control-others): cancel every order on the symbol, others' too
    +/- : order size up/down by one lot (or type it in the status bar's size field)
    drag the plot: pan (stops following)   End: follow the newest bar again
    drag/wheel the price axis: scale prices   R: prices fit the bars again
    ?: all keys   Ctrl+T: add a symbol (tab)   Ctrl+Tab: next tab   Ctrl+Q: quit
    """
    for fqsn in fqsns:
        check_fqsn(fqsn)
    if period <= 0:
        raise click.UsageError('--period must be > 0')
    if size <= 0:
        raise click.UsageError('--size must be > 0')
    if exit_after is not None and exit_after < 0:
        raise click.UsageError('--exit-after must be >= 0')

    from ..ui._exec import display_problem, platform_problem, run_qt

    if screenshot and display_problem() is not None:
        os.environ['QT_QPA_PLATFORM'] = 'offscreen'   # a screenshot needs no screen
    # Qt aborts the process (no exception) when it cannot open a display or load its platform
    # plugin: check both first and say what is missing in one line
    problem = display_problem() or platform_problem()
    if problem is not None:
        click.secho(f'error: {problem}', fg='red', err=True)
        sys.exit(2)

    from ..ui.app import ChartApp, ChartOptions

    opts = ChartOptions(
        fqsn=fqsns[0], more=list(fqsns[1:]), period=period, size=size, account=account, name=name,
        registry=state.registry, loglevel=state.loglevel, tractor_loglevel=state.tractor_loglevel,
        screenshot=screenshot, exit_after=exit_after, notify=notify, control_others=control_others,
    )

    async def main() -> int:
        return await ChartApp(opts).run()

    code = run(main, runner=lambda fn: run_qt(fn, app_name='piker'))
    if screenshot:
        click.echo(f'screenshot saved to {screenshot}', err=True)
    sys.exit(code or 0)
