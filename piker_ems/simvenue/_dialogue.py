# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
The ``trades_dialogue`` engine of a simulated venue: the trio side around a clearing core.

One engine per venue (owned by the actor that runs it, see :func:`piker_ems.service._state.owned`) holds the core;
each open ``trades_dialogue`` context is a :class:`Dialogue` with an unbounded outbox drained by
its own sender task (with heartbeats), while the receive loop always drains the IPC stream and
never blocks, so the channel can never stall and no bad message can kill the loop. Subclasses
only decide *when* a request is processed (the paper engine holds a new order until its
symbol's first quote; the exchange adds latency).

Error boundaries: every request and every execution is handled in its own ``try``; a failure
answers that request / fails that order with a ``BrokerdError`` for its reqid and nothing else,
so one client's bad order can never stop another order's fill or status.

Ordering: every message about one order is produced by one synchronous call (or, for a delayed
fill, one task) and queued on the outbox in that order, so an ack always precedes the order's
``submitted`` status, which precedes its fill.
"""
from __future__ import annotations

import itertools
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import trio

from ..clearing._messages import BrokerdCancel, BrokerdOrder, MsgError, parse_broker_request, to_wire
from ..log import get_logger
from ..statedb import checkpoint_in_background
from ._book import ReqId
from ._clock import Clock, system_clock
from ._core import ClearingCore, Execution
from ._fidelity import Fidelity, Latency
from ._journal import GroupCommitError, Journal

__all__ = ['Dialogue', 'DialogueEngine', 'STATS_MEMORY']

log = get_logger(__name__)

#: How many requests/journal entries an engine keeps for its stats.
STATS_MEMORY = 10_000


class Dialogue:
    """One open ``trades_dialogue``: an unbounded outbox its sender task drains to the stream.

    Sending never blocks and never raises, so it can be called from synchronous code (a quote
    listener, the receive loop). Unbounded on purpose: order events must never be dropped, and
    the peer (emsd) always drains its side.
    """

    def __init__(self, peer: str = '', ident: int = 0) -> None:
        self.id = ident
        self.peer = peer
        self._tx, self.outbox = trio.open_memory_channel[dict](math.inf)
        self.open = True
        self.sent = 0

    def send(self, msg: dict) -> bool:
        if not self.open:
            return False
        try:
            self._tx.send_nowait(msg)
        except Exception:  # closed/broken: the dialogue is ending
            self.open = False
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self.open = False
        self._tx.close()

    def __repr__(self) -> str:
        return f'<Dialogue #{self.id} {self.peer}>'


class DialogueEngine:
    """One simulated venue: a :class:`ClearingCore` plus its open dialogues.

    Subclasses set when requests are processed by overriding :meth:`on_request` (default: at
    once) and when executions are reported by overriding :meth:`execute` (default: at once),
    and may schedule work with :meth:`spawn` (tasks in the engine's nursery, which outlives any
    dialogue: orders keep resting, and filling, when a client goes away).
    """

    def __init__(
        self,
        broker: str,
        next_reqid: Callable[[], ReqId],
        *,
        name: str = '',
        clock: Clock = system_clock,
        journal: Journal | None = None,
        fee_bps: float = 0.0,
        fill_prefix: str | None = None,
        fidelity: Fidelity | None = None,
    ) -> None:
        self.broker = broker
        self.name = name or broker
        self.clock = clock
        self.fidelity = fidelity or Fidelity()
        self.latency = Latency(self.fidelity)
        def make_core(journal: Journal | None) -> ClearingCore:
            return ClearingCore(
                broker, next_reqid, clock=clock, journal=journal, fee_bps=fee_bps,
                fill_prefix=fill_prefix, fidelity=self.fidelity)

        self._make_core = make_core
        self.core = make_core(journal)
        # inside journal_group(): what the group's requests/quotes produce, held until commit
        self._held: list[tuple[Dialogue, dict]] | None = None
        # latency lanes ('ack', 'fill'): FIFO, so a delay never reorders two reports
        self._lanes: dict[str, Any] = {}
        self._lane_due: dict[str, float] = {}
        self.dialogues: set[Dialogue] = set()
        self.owners: dict[ReqId, Dialogue] = {}
        self._dialogue_ids = itertools.count(1)
        self.dialogues_opened = 0
        self.rejected = 0
        self.received = 0
        self.failures = 0  # requests/executions that hit an unexpected error (all answered)
        self.requests: deque[dict] = deque(maxlen=STATS_MEMORY)
        self.journal: deque[dict] = deque(maxlen=STATS_MEMORY)
        self.nursery: Any = None  # a trio.Nursery set by bind()

    # -- wiring ------------------------------------------------------------------------

    def bind(self, nursery: Any) -> None:
        """Give the engine the long-lived nursery its background tasks run in (then
        :meth:`on_bind` lets a subclass resume work for orders restored from its journal)."""
        if self.nursery is None:
            self.nursery = nursery
            journal = self.core.journal
            if journal.path is not None:  # WAL checkpoints off the order path (a worker thread)
                self.spawn(checkpoint_in_background, journal.conn, journal.path)
            self.on_bind()

    def on_bind(self) -> None:
        """Called once the engine can run tasks; default: nothing."""

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the engine's nursery; a failure is logged, never propagated."""
        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception:
                self.failures += 1
                log.exception('%s: background task %s failed', self.name, getattr(fn, '__name__', fn))

        self.nursery.start_soon(guarded)

    def later(self, lane: str, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` after ``delay`` seconds, and never before anything queued earlier
        on the same ``lane`` (one task per lane in the engine's nursery)."""
        send = self._lanes.get(lane)
        if send is None:
            send, recv = trio.open_memory_channel(math.inf)
            self._lanes[lane] = send
            self.spawn(self._run_lane, recv)
        due = max(trio.current_time() + delay, self._lane_due.get(lane, 0.0))
        self._lane_due[lane] = due
        send.send_nowait((due, fn, args))

    async def _run_lane(self, recv: Any) -> None:
        async for due, fn, args in recv:
            await trio.sleep_until(due)
            try:
                fn(*args)
            except Exception:
                self.failures += 1
                log.exception('%s: delayed %s failed', self.name, getattr(fn, '__name__', fn))

    def arrive(self, dialogue: Dialogue, req: BrokerdOrder | BrokerdCancel) -> None:
        """A valid request reaches the venue: a new order after the ack latency (if any),
        anything else at once."""
        if isinstance(req, BrokerdOrder) and req.reqid is None and self.fidelity.delays:
            self.later('ack', self.latency.ack(), self.guarded_process, dialogue, req, True)
            return
        self.process(dialogue, req)

    def open_dialogue(self, peer: str = '') -> Dialogue:
        """Register a new dialogue (its events are routed from now on)."""
        dialogue = Dialogue(peer, next(self._dialogue_ids))
        self.dialogues_opened += 1
        self.dialogues.add(dialogue)
        return dialogue

    def close_dialogue(self, dialogue: Dialogue) -> None:
        """Forget a dialogue; its orders stay (their fills go to whoever is connected)."""
        dialogue.close()
        self.dialogues.discard(dialogue)
        for reqid in [r for r, d in self.owners.items() if d is dialogue]:
            del self.owners[reqid]

    # -- the dialogue ----------------------------------------------------------------

    async def serve(self, ctx: Any, since_ns: int | None = None, max_batch: int = 1) -> None:
        """Run one ``trades_dialogue`` on a tractor context until the peer closes its stream.

        ``started()`` carries the venue snapshot (:meth:`ClearingCore.snapshot`): positions,
        open orders and, with ``since_ns``, the orders ended and the fills since then.
        ``max_batch`` > 1 (a peer that asked for the list form, docs/backends.md): a backlog of
        events (an ack and its status, a fill, its status and the position: one request's
        worth) leaves as one list message, and a list received is that peer's backlog of
        requests, handled in order in one journal group. 1: every message alone both ways (a
        list received is one invalid request)."""
        import tractor

        from ..service._ipc import send_with_heartbeats

        batches = max_batch > 1

        if self.nursery is None:
            self.bind(tractor.current_actor()._service_n)
        dialogue = self.open_dialogue(str(getattr(ctx.chan, 'uid', '') or ''))
        log.info('%s: trades dialogue %r opened', self.name, dialogue)
        try:
            await ctx.started(self.core.snapshot(since_ns))
            async with ctx.open_stream() as stream, trio.open_nursery() as n:

                async def sender() -> None:
                    try:
                        # heartbeats let emsd tell a dead venue from a quiet one
                        await send_with_heartbeats(dialogue.outbox, stream, max_batch=max_batch)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
                        log.warning('%s: %r: peer gone while sending', self.name, dialogue)
                    n.cancel_scope.cancel()

                n.start_soon(sender)
                # the receive loop: always drains the stream, never blocks, never dies
                async for raw in stream:
                    if batches and isinstance(raw, list):  # the peer's backlog, in order
                        with self.journal_group():
                            for item in raw:
                                self.handle_raw(dialogue, item)
                    else:
                        self.handle_raw(dialogue, raw)
                n.cancel_scope.cancel()
        finally:
            self.close_dialogue(dialogue)
            log.info('%s: trades dialogue %r closed', self.name, dialogue)

    def handle_raw(self, dialogue: Dialogue, raw: Any) -> None:
        """Validate one received message and hand it on; nothing here may raise."""
        self.received += 1
        try:
            req = parse_broker_request(raw)
        except MsgError as err:
            self._reject(dialogue, raw, str(err))
            return
        except Exception as err:  # a validator bug must not kill the loop either
            self._reject(dialogue, raw, f'invalid request: {type(err).__name__}: {err}')
            return
        self.requests.append(to_wire(req))
        self._journal('in', req.name, req.oid, req.reqid)
        self.guarded_process(dialogue, req, held=False)

    def guarded_process(self, dialogue: Dialogue, req: BrokerdOrder | BrokerdCancel, held: bool = False) -> None:
        """The error boundary of one request: any failure answers *this* request only.

        ``held``: the request was held (paper: waiting for a first quote) and is processed now;
        otherwise it goes through :meth:`on_request`, which may hold or delay it.
        """
        try:
            if held:
                self.process(dialogue, req)
            else:
                self.on_request(dialogue, req)
        except Exception as err:
            self.failures += 1
            log.exception('%s: failed to handle %r', self.name, req)
            self._reject(dialogue, to_wire(req), f'internal error: {type(err).__name__}: {err}')

    def _reject(self, dialogue: Dialogue, raw: Any, reason: str) -> None:
        self.rejected += 1
        log.warning('%s: rejected request %r: %s', self.name, raw, reason)
        try:
            err = self.core.reject(raw, reason)
        except Exception:
            log.exception('%s: could not build an error for %r', self.name, raw)
            return
        if err is not None:
            self.emit(dialogue, [err])

    def on_request(self, dialogue: Dialogue, req: BrokerdOrder | BrokerdCancel) -> None:
        """Decide when to process a valid request (subclasses hold or delay); default: now."""
        self.process(dialogue, req)

    # -- processing --------------------------------------------------------------------

    @contextmanager
    def journal_group(self) -> Iterator[None]:
        """Journal everything done inside in one transaction (group commit) and send what it
        produced only after that commit: a list of requests (with the fills they cross at once)
        or a quote's several fills cost one commit instead of one per write. Write-ahead holds: the
        messages are held here (not even queued) until the commit. A failed commit (disk full,
        I/O error) means none of it is on disk: the held messages are dropped, the core is
        rebuilt from the journal (what is on disk is the truth) and every order the group
        spoke of gets a ``BrokerdError``. Nested groups join the outer one."""
        if self._held is not None:
            yield
            return
        held: list[tuple[Dialogue, dict]] = []
        self._held = held
        lost = False
        try:
            with self.core.journal.group():
                yield
        except GroupCommitError as err:
            lost = True
            self._held = None
            self._group_lost(held, err)
        finally:
            self._held = None
            if not lost:  # committed (also when the block raised: what it wrote is on disk)
                for dialogue, msg in held:
                    dialogue.send(msg)

    def _group_lost(self, held: list[tuple[Dialogue, dict]], err: Exception) -> None:
        self.failures += 1
        log.error('%s: journal commit failed, %d messages dropped, reloading from the journal: %s',
                  self.name, len(held), err)
        self.core = self._make_core(self.core.journal)
        told: set[tuple[Any, Any]] = set()
        for dialogue, msg in held:
            oid = msg.get('oid') or (msg.get('broker_details') or {}).get('oid')
            if msg.get('name') == 'position' or (oid, dialogue) in told:
                continue
            told.add((oid, dialogue))
            err_msg = self.core.reject({'oid': oid, 'reqid': msg.get('reqid')},
                                       f'venue could not record it: {err}')
            if err_msg is not None:
                self.emit(dialogue, [err_msg])

    def process(self, dialogue: Dialogue, req: BrokerdOrder | BrokerdCancel) -> None:
        """Apply a request to the core and send what it produced (synchronous).

        Each execution it causes runs in its own boundary (:meth:`run_execution`), so a failed
        execution never turns into an error for the request that already got its ack. (No
        journal group of its own: one request writes once, twice if it fills at once, and a
        group costs more than it saves for so few writes; lists of requests are grouped.)
        """
        if isinstance(req, BrokerdCancel):
            msgs = self.core.cancel(req)
            if msgs and msgs[0]['name'] == 'status':
                self.owners.pop(req.reqid, None)
            self.emit(dialogue, msgs)
            return
        msgs, execs = self.core.submit(req)
        if msgs and msgs[0]['name'] != 'error':
            # the dialogue that placed (or last modified) an order gets its fills
            self.owners[msgs[0]['reqid']] = dialogue
        self.emit(dialogue, msgs)
        for ex in execs:
            self.run_execution(ex)

    def on_quote(self, symbol: str, quote: Mapping[str, Any]) -> None:
        """Feed a quote to the core and execute what it crossed (synchronous, never raises)."""
        try:
            execs = self.core.on_quote(symbol, quote)
        except Exception:
            self.failures += 1
            log.exception('%s: failed to match quote for %s', self.name, symbol)
            return
        if len(execs) > 1:
            with self.journal_group():  # the fills one quote crossed: one commit
                for ex in execs:
                    self.run_execution(ex)
        elif execs:
            self.run_execution(execs[0])

    def run_execution(self, ex: Execution) -> None:
        """The error boundary of one execution: report it (:meth:`execute`) or fail its order."""
        try:
            self.execute(ex)
        except Exception as err:
            self._execution_failed(ex, err)

    def execute(self, ex: Execution) -> None:
        """Report an execution now, or after the fill latency (the order already left the book,
        or its filled part did)."""
        if self.fidelity.delays:
            self.later('fill', self.latency.fill(), self.settle, ex)
        else:
            self.settle(ex)

    def settle(self, ex: Execution) -> None:
        """Book the execution; send fill + filled to the order's dialogue, the position to all.

        Never raises: a refused or failed execution becomes a ``BrokerdError`` for its reqid.
        """
        try:
            msgs, position = self.core.settle(ex)
        except Exception as err:
            self._execution_failed(ex, err)
            return
        if position is None:
            log.warning('%s: execution of %s refused: %s', self.name, ex.reqid, msgs[0].get('reason'))
        self._to_owner(ex.reqid, msgs, final=ex.remaining <= 0 or position is None)
        if position is not None:
            for d in list(self.dialogues):
                self.emit(d, [position])

    def _execution_failed(self, ex: Execution, err: Exception) -> None:
        self.failures += 1
        log.error('%s: execution of %s failed: %r', self.name, ex.reqid, err, exc_info=err)
        try:
            msg = self.core.fail_execution(ex, f'execution failed: {type(err).__name__}: {err}')
        except Exception:
            log.exception('%s: could not report the failed execution of %s', self.name, ex.reqid)
            return
        self._to_owner(ex.reqid, [msg])

    def _to_owner(self, reqid: ReqId, msgs: list[dict], final: bool = True) -> None:
        """An order's events go to its dialogue, or (it left) to every open one; after its
        final ones the order is forgotten."""
        owner = self.owners.pop(reqid, None) if final else self.owners.get(reqid)
        if owner is not None and owner.open:
            self.emit(owner, msgs)
        else:  # its dialogue left: whoever is connected now may know the order
            for d in list(self.dialogues):
                self.emit(d, msgs)

    def emit(self, dialogue: Dialogue, msgs: Iterable[dict]) -> None:
        held = self._held
        for msg in msgs:
            oid = msg.get('oid') or (msg.get('broker_details') or {}).get('oid')
            self._journal('out', msg.get('name'), oid, msg.get('reqid'))
            if held is not None:  # in a journal group: sent once it is committed
                held.append((dialogue, msg))
            else:
                dialogue.send(msg)

    def _journal(self, direction: str, name: Any, oid: Any, reqid: Any) -> None:
        self.journal.append({
            'dir': direction, 'name': name, 'oid': oid, 'reqid': reqid, 'time_ns': self.clock(),
        })

    # -- stats --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters and open orders (tests and ``piker`` CLIs read this through an RPC)."""
        core = self.core
        return {
            'broker': self.broker,
            'pid': os.getpid(),
            'dialogues_opened': self.dialogues_opened,
            'dialogues_active': len(self.dialogues),
            'received': self.received,
            'rejected': self.rejected,
            'failures': self.failures,
            'executions': core.executions,
            'failed_executions': core.failed_executions,
            'duplicates': core.duplicates,
            'restored_orders': core.restored_orders,
            'last_fill': core.last_fill,
            'fee_bps': core.fee_bps,
            'maker_fee_bps': core.maker_bps,
            'taker_fee_bps': core.taker_bps,
            'fidelity': asdict(self.fidelity),
            'journal_path': str(core.journal.path) if core.journal.path else None,
            'resting_orders': len(core.book),
            'open_orders': [o.summary() for o in core.book.orders()],
            'positions': [asdict(p) for p in core.positions.all(include_flat=True)],
            'l1': {
                sym: {'bid': core.bids.get(sym), 'ask': core.asks.get(sym)}
                for sym in sorted(set(core.bids) | set(core.asks))
            },
            'requests': list(self.requests),
            'journal': list(self.journal),
        }
