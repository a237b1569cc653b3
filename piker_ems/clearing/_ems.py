"""emsd: its service task (which owns the Router) and the client endpoint ``_emsd_main``."""
from __future__ import annotations

import time

import tractor
import trio

from ..config import load_config
from ..log import get_logger, setup_console
from ..service._auth import Refused, WatchRefused, act_as_service, guarded, verify
from ..service._specs import ServiceDown
from ..service._state import actor_state
from ..service._ipc import open_supervisor, send_with_heartbeats
from ..symbols import parse_fqsn
from ..statedb import checkpoint_in_background, state_path
from ._journal import Journal
from ._messages import pack_snapshot
from ._risk import CLUSTER, RiskEngine, parse_limits
from ._orders import ClientConn, owner_name
from ._router import MAX_DONE_ORDERS, Router
from ._scan import ScanDirectory
from ._venues import VenueDirectory

log = get_logger(__name__)

#: How long a connecting client waits for its symbol's first quote and its venue to open.
CONNECT_WAIT_S = 15.0
#: How often the journal drops old finished orders.
COMPACT_EVERY_S = 300.0
#: How often the journal's WAL is checkpointed (in a worker thread).
CHECKPOINT_EVERY_S = 1.0
#: How often the journal's order log is folded into its store (in a worker thread).
FOLD_EVERY_S = 0.5
#: At most this many queued messages travel to a client in one IPC message (a list).
MAX_BATCH = 64


def open_journal(settings: dict) -> Journal | None:
    """emsd's journal as ``[emsd]`` of ``piker_ems.toml`` says: ``persist`` (default true),
    ``journal_sync`` (``normal``/``full``), ``keep_done`` finished orders (default 10 000)
    and ``keep_days`` (default 30)."""
    if not settings.get('persist', True):
        return None
    return Journal(state_path('emsd'), str(settings.get('journal_sync', 'normal')))


async def _compact(journal: Journal, settings: dict) -> None:
    """Drop finished orders beyond the configured count / age, now and then."""
    keep_done = int(settings.get('keep_done', MAX_DONE_ORDERS))
    keep_days = float(settings.get('keep_days', 30))
    while True:
        try:
            n = journal.compact(keep_done, keep_days, time.time_ns())
            if n:
                log.info('journal: dropped %d old finished orders', n)
        except Exception:
            log.exception('journal compaction failed')
        await trio.sleep(COMPACT_EVERY_S)


async def _checkpoints(journal: Journal) -> None:
    """Checkpoint the journal's WAL now and then in a worker thread, not inside a write on
    the order path (:func:`piker_ems.statedb.checkpoint_in_background`)."""
    await checkpoint_in_background(journal.db, journal.path, CHECKPOINT_EVERY_S)


async def _fold(journal: Journal) -> None:
    """Set the journal's order log aside now and then and fold it into the store in a worker
    thread (the order path only ever appends; see :mod:`._journal`)."""
    while True:
        await trio.sleep(FOLD_EVERY_S)
        try:
            journal.rotate()
            await trio.to_thread.run_sync(journal.fold_in_thread, cancellable=False)
        except Exception:  # a full disk, say: the log stays and is folded later (or at start)
            log.exception('journal: folding the order log failed; will retry')


def current_router() -> Router:
    """The Router of this emsd process (owned by emsd's service task)."""
    router = actor_state().get('router')
    if router is None:
        raise RuntimeError('this actor is not emsd (no Router)')
    return router


@guarded('admin')
@tractor.context
async def _setup_persistent_emsd(ctx: tractor.Context, loglevel: str | None = None) -> None:
    """emsd's service task: own the Router (and its paper engines) until pikerd cancels us."""
    setup_console(loglevel, process_name='emsd')
    act_as_service()
    state = actor_state()
    config = load_config()
    settings = config.get('emsd') or {}
    limits = parse_limits(config.get('risk'))  # a bad limit fails emsd's start, naming the key
    journal = open_journal(settings)
    try:
        async with open_supervisor() as (actor_n, n):
            venues = VenueDirectory(n.start_soon, actor_n, loglevel)
            scans = ScanDirectory(n.start_soon, loglevel)
            risk = RiskEngine(limits, clock=time.time_ns)
            router = Router(venues, scans, clock=time.time_ns, spawn=n.start_soon, journal=journal, risk=risk)
            if journal is not None:
                for scope, st in journal.load_states().items():  # a halt survives a restart
                    risk.set_state(scope, st)
                router.restore(journal.load())
                n.start_soon(_compact, journal, settings)
                n.start_soon(_checkpoints, journal)
                n.start_soon(_fold, journal)
            state['router'] = router
            try:
                await ctx.started('emsd')
                await trio.sleep_forever()
            finally:
                state.pop('router', None)
    finally:
        if journal is not None:
            journal.close()


EMSD_MAIN = 'piker_ems.clearing._ems._emsd_main'


def verify_refusal(principal, what: str, role: str) -> Refused:
    """A refusal (logged) of something the authenticated ``principal`` lacks ``role`` for."""
    log.warning('refused %s: participant %r may not %s (no %s role)', EMSD_MAIN, principal.participant, what, role)
    cls = WatchRefused if role == 'watch' else Refused  # (a client may then connect without watching)
    return cls(f'participant {principal.participant!r} may not {what} (no {role} role)')


async def _write(conn: ClientConn, stream: tractor.MsgStream, done: trio.CancelScope) -> None:
    """Drain the client's outbound queue to its stream (a backlog as batches of up to
    :data:`MAX_BATCH`), heartbeating when idle.

    A send failure means the client is gone (crashed, killed): end the whole connection.
    """
    try:
        await send_with_heartbeats(conn.rx, stream, max_batch=MAX_BATCH, gather=True)
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
    auth: dict | None = None,
) -> None:
    """One client connection: ensure feed and venue, send the start state, then serve commands.

    ``auth`` is the client's signed credential (see :mod:`piker_ems.service._auth`): the
    connection acts for that participant, its orders are owned by ``participant/client`` (the
    bare ``client`` label for the local participant). ``watch`` needs the ``watch`` role and
    ``control_others`` the ``control-others`` role (the connection is refused otherwise, with
    one line naming the missing role); placing orders needs the ``trade`` role.

    ``started()`` carries ``{'positions': [...], 'orders': <blob>, 'trading_state': ...}``:
    the broker/account positions, the open orders for ``fqsn`` (so a restarted client can
    redraw them), packed (:func:`~._messages.unpack_snapshot` reads it), and the account's
    trading state (later changes arrive as ``TradingState``). Each message on the stream is a
    status / position / trading-state dict, or a list of them (a batch: docs/protocol.md).
    """
    principal = verify(auth, EMSD_MAIN, ('watch', 'trade'))
    router = current_router()
    _, broker = parse_fqsn(fqsn)
    if not client or client.startswith('@'):
        raise ValueError(f'client name {client!r} is reserved (names starting with @ are emsd\'s own)')
    if '/' in client:
        raise ValueError(f'client name {client!r} may not contain "/"')
    if watch is not None and 'watch' not in principal.roles:
        # refused, not narrowed: a client that asked to watch must not believe it sees everything
        raise verify_refusal(principal, 'watch other clients\' orders', 'watch')
    if control_others and 'control-others' not in principal.roles:
        raise verify_refusal(principal, 'control other clients\' orders', 'control-others')
    fqsn = fqsn.strip().lower()
    if watch not in (None, 'symbol', 'all'):
        raise ValueError(f"watch must be None, 'symbol' or 'all', not {watch!r}")
    if on_disconnect not in ('keep', 'cancel', 'cancel-dark'):
        raise ValueError(f"on_disconnect must be keep, cancel or cancel-dark, not {on_disconnect!r}")
    owner = owner_name(principal.participant, client)
    conn = ClientConn(
        owner, fqsn, broker, account, watch=watch,
        control_others=control_others, on_disconnect=on_disconnect,
        participant=principal.participant, may_trade='trade' in principal.roles,
    )
    scan = router.scans.get(fqsn)
    await scan.wait_ready(CONNECT_WAIT_S)
    if scan.failed:
        # (a brokerd that is down is said as is: the client shows that line, not an error type)
        raise ServiceDown(scan.failed) if scan.down else ValueError(scan.failed)
    # the venue opens meanwhile; its positions are in the start state if it opens in time
    await router.venues.wait_open(router.venues.key_for(broker, account), CONNECT_WAIT_S)
    router.add_client(conn)
    try:
        await ctx.started({
            'positions': router.positions_for(broker, account),
            # a watcher sees its whole scope; anyone else exactly its own open orders. One
            # packed blob (a list of Status dicts): see _messages.pack_snapshot for why
            'orders': pack_snapshot(router.open_orders(
                fqsn=None if watch == 'all' else conn.fqsn,
                broker=broker,
                owner=None if watch else owner,
            )),
            # then pushed as a TradingState message whenever it changes
            'trading_state': router.risk.state_of(account),
        })
        async with ctx.open_stream() as stream, trio.open_nursery() as n:
            n.start_soon(_write, conn, stream, n.cancel_scope)
            async for raw in stream:
                router.handle_client_msg(conn, raw)
            n.cancel_scope.cancel()
    finally:
        router.drop_client(conn)
        log.info('%r left', conn)


@guarded('admin')
async def ems_stats() -> dict:
    """RPC: counts for tests and the CLI."""
    router = current_router()
    stats = router.stats()
    if router.journal is not None:
        stats['journal'] = {**router.journal.counts(), 'writes': router.journal.writes,
                            'path': str(router.journal.path)}
    return stats


@guarded('admin')
async def ems_set_trading_state(state: str, account: str | None = None, alerts: bool = False) -> dict:
    """RPC (admin): put ``account`` (default: the whole cluster) in ``active``, ``reducing``
    or ``halted``; halting cancels every working order in scope (alerts too with ``alerts``).
    Returns ``{'scope', 'state', 'cancelled', 'states'}``."""
    if account is not None and (not account.strip() or account == CLUSTER):
        raise ValueError(f'not a valid account: {account!r}')
    return current_router().set_trading_state(account or CLUSTER, state, cancel_alerts=alerts)


@guarded()
async def ems_trading_states() -> dict[str, str]:
    """RPC (any participant): the trading state of the cluster (``*``) and of every account
    that is not active, for ``piker services`` (connected clients get each change pushed as a
    ``TradingState`` message instead)."""
    return current_router().risk.snapshot()


@guarded('watch', 'trade')
async def ems_positions(account: str | None = None, open_venues: bool = True) -> list[dict]:
    """RPC: every position of every venue (all accounts, or ``account``), with the last price
    of the symbol when emsd scans it.

    With ``open_venues`` (default) emsd first opens the venues of every backend it has (the
    paper engine, and the live dialogue where a backend has one), so a freshly restarted
    pikerd shows the positions its venues restored from their journals."""
    router = current_router()
    if open_venues:
        from ..brokers import available_backends, get_brokermod

        keys = []
        for broker in available_backends():
            if account in (None, 'paper'):
                keys.append((broker, 'paper'))
            if account != 'paper' and hasattr(get_brokermod(broker), 'trades_dialogue'):
                keys.append((broker, 'live'))
        async with trio.open_nursery() as n:
            for key in keys:
                n.start_soon(router.venues.wait_open, key, CONNECT_WAIT_S)
    out = []
    for link in router.venues.open_links():
        broker = link.key[0]
        for pos in link.positions.values():
            if account is not None and pos.account != account:
                continue
            scan = router.scans.peek(f'{pos.symbol}.{broker}')
            out.append({**pos.model_dump(mode='json'), 'venue': '.'.join(link.key),
                        'last': scan.last if scan is not None else None})
    return out
