"""emsd: its service task (which creates the Router) and the client endpoint ``_emsd_main``."""
from __future__ import annotations

import tractor
import trio

from ..log import get_logger, setup_console
from ..service._ipc import open_supervisor, send_with_heartbeats
from ..symbols import parse_fqsn
from ._orders import ClientConn
from ._router import Router

log = get_logger(__name__)



@tractor.context
async def _setup_persistent_emsd(ctx: tractor.Context, loglevel: str | None = None) -> None:
    """emsd's service task: own the Router (and its paper engines) until pikerd cancels us."""
    setup_console(loglevel, process_name='emsd')
    async with open_supervisor() as (actor_n, n):
        Router._current = Router(n, actor_n, loglevel)
        try:
            await ctx.started('emsd')
            await trio.sleep_forever()
        finally:
            Router._current = None


async def _write(conn: ClientConn, stream: tractor.MsgStream, done: trio.CancelScope) -> None:
    """Drain the client's outbound queue to its stream, heartbeating when idle.

    A send failure means the client is gone (crashed, killed): end the whole connection.
    """
    try:
        await send_with_heartbeats(conn.rx, stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as err:
        log.warning('%r is gone (%s)', conn, type(err).__name__)
    finally:
        done.cancel()


@tractor.context
async def _emsd_main(
    ctx: tractor.Context,
    fqsn: str,
    client: str,
    account: str = 'paper',
    watch: str | None = None,
    control_others: bool = False,
    on_disconnect: str = 'keep',
) -> None:
    """One client connection: ensure feed and venue, send the start state, then serve commands.

    ``started()`` carries ``{'positions': [...], 'orders': [...]}``: the broker/account
    positions and the open orders for ``fqsn`` (so a restarted client can redraw them).
    """
    router = Router.current()
    _, broker = parse_fqsn(fqsn)
    if watch not in (None, 'symbol', 'all'):
        raise ValueError(f"watch must be None, 'symbol' or 'all', not {watch!r}")
    if on_disconnect not in ('keep', 'cancel', 'cancel-dark'):
        raise ValueError(f"on_disconnect must be keep, cancel or cancel-dark, not {on_disconnect!r}")
    conn = ClientConn(
        client, fqsn.lower(), broker, account, watch=watch,
        control_others=control_others, on_disconnect=on_disconnect,
    )
    await router.ensure_scan(fqsn)
    from ._router import venue_for

    await router.ensure_venue(venue_for(broker, account))
    router.add_client(conn)
    try:
        await ctx.started({
            'positions': router.positions_for(broker, account),
            # a watcher sees its whole scope; anyone else exactly its own open orders
            'orders': router.open_orders(
                fqsn=None if watch == 'all' else conn.fqsn,
                broker=broker,
                owner=None if watch else client,
            ),
        })
        async with ctx.open_stream() as stream, trio.open_nursery() as n:
            n.start_soon(_write, conn, stream, n.cancel_scope)
            async for raw in stream:
                await router.handle_client_msg(conn, raw)
            n.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await router.drop_client(conn)
        log.info('%r left', conn)


async def ems_stats() -> dict:
    """RPC: counts for tests and the CLI."""
    router = Router.current()
    phases: dict[str, int] = {}
    for st in router.orders.values():
        phases[st.phase] = phases.get(st.phase, 0) + 1
    return {
        'clients': len(router.clients),
        'venues': [list(k) for k in router.venues],
        'venue_requests': {'.'.join(k): v.sent for k, v in router.venues.items()},
        'scans': [f'{s}.{b}' for b, s in router.scans],
        'dark': sum(len(s.book) for s in router.scans.values()),
        'phases': phases,
        'rejected_client_msgs': router.rejected_client_msgs,
        'rejected_broker_msgs': router.rejected_broker_msgs,
    }
