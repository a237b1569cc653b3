"""``piker quote``: print live quotes (human lines or JSON lines for scripts)."""
from __future__ import annotations

import json
import sys

import click

from ._common import CliState, check_fqsn, participant_options, run


def format_quote(fqsn: str, q: dict) -> str:
    """One readable line per quote."""
    last = f"last {q['last']:<10} ({q.get('size', 0):g})" if q.get('size') else f"last {q['last']:<10}"
    return (
        f"{fqsn:<14} bid {q['bid']:>10} x {q.get('bsize', 0):<6g} "
        f"ask {q['ask']:>10} x {q.get('asize', 0):<6g} {last} vol {q.get('volume', 0):g}"
    )


async def stream_quotes(state: CliState, fqsns: list[str], count: int | None, as_json: bool) -> None:
    """Open the feed (joining or becoming pikerd) and print until ``count`` quotes or Ctrl-C."""
    from ..data import open_feed
    from ..service import maybe_open_pikerd

    async with maybe_open_pikerd(
        state.registry, loglevel=state.loglevel, name='piker.quote',
        tractor_loglevel=state.tractor_loglevel,
    ) as services:
        if services is not None:
            click.secho(
                f'note: no pikerd at {state.registry[0]}:{state.registry[1]}; '
                'running a private service tree in this process (it stops when this command exits)',
                fg='yellow', err=True,
            )
        async with open_feed(fqsns, loglevel=state.loglevel) as feed:
            seen = 0
            async for packet in feed.stream:
                for fqsn, quote in packet.items():
                    if as_json:
                        sys.stdout.write(json.dumps({'fqsn': fqsn, **quote}) + '\n')
                    else:
                        sys.stdout.write(format_quote(fqsn, quote) + '\n')
                    seen += 1
                    if count is not None and seen >= count:
                        sys.stdout.flush()
                        return
                sys.stdout.flush()


@click.command()
@click.argument('fqsns', nargs=-1, required=True)
@click.option('--count', '-n', type=click.IntRange(min=1), default=None, help='Stop after N quotes.')
@click.option('--json', 'as_json', is_flag=True, help='One JSON object per quote per line.')
@participant_options
@click.pass_obj
def quote(state: CliState, fqsns: tuple[str, ...], count: int | None, as_json: bool) -> None:
    """Print live quotes for FQSNS (e.g. btcusd.sim) until Ctrl-C or --count."""
    for fqsn in fqsns:
        check_fqsn(fqsn)
    run(stream_quotes, state, list(fqsns), count, as_json)
