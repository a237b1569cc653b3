"""Stream idioms every long-lived tractor dialogue here needs (tractor 0.1.0a5 lacks them).

- Liveness: 0.1.0a5 never tells a context that its connection dropped, so a receiver waiting on
  a dead peer hangs forever. Senders send a heartbeat when idle (:func:`send_with_heartbeats`)
  and receivers time out on silence (:class:`Silence`).
- Leaving: tractor's ``open_context`` exit waits for the callee's result, forever if the callee
  died; :func:`abandon_context` makes that exit return at once.
"""
from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import tractor
import trio

from ..log import get_logger

log = get_logger(__name__)

HEARTBEAT_S = 1.0
"""Idle interval after which a dialogue sends a heartbeat."""
HEARTBEAT_TIMEOUT_S = 3 * HEARTBEAT_S
"""Silence after which a receiver declares its peer lost."""
GATHER_S = 0.0005
"""A gathering sender (see :func:`send_with_heartbeats`) waits this long at a time while its
backlog grows ..."""
GATHER_MAX_S = 0.005
"""... and at most this long in all before sending what it has."""


def heartbeat() -> dict:
    """The heartbeat message of every dialogue (``name`` tag, so it never parses as a model)."""
    return {'name': 'heartbeat', 'time': time.time()}


def is_heartbeat(msg: Any) -> bool:
    """Whether a received message is a heartbeat (to be skipped before validation)."""
    return isinstance(msg, dict) and msg.get('name') == 'heartbeat'


class Silence:
    """The receiving side of liveness: around a whole receive loop, a deadline that every
    message pushes on (:meth:`heard`). Leaving the ``with`` block without a ``return`` from the
    loop means the peer sent nothing for ``timeout`` seconds.

    One scope for the loop, not a ``fail_after`` per receive: that costs ~9 µs of trio on every
    message (bench/PROFILE.md, round 4).
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._scope = trio.CancelScope(deadline=trio.current_time() + timeout)

    def heard(self) -> None:
        """A message arrived: the peer is alive for another ``timeout``."""
        self._scope.deadline = trio.current_time() + self.timeout

    def __enter__(self) -> 'Silence':
        self._scope.__enter__()
        return self

    def __exit__(self, *exc: Any) -> bool:
        return self._scope.__exit__(*exc)


async def send_with_heartbeats(
    outbox: trio.MemoryReceiveChannel,
    stream: tractor.MsgStream,
    interval: float = HEARTBEAT_S,
    max_batch: int = 1,
    gather: bool = False,
) -> int:
    """Send everything queued on ``outbox`` in order, and a heartbeat whenever idle.

    Returns when the outbox is closed and drained. Only the heartbeat's *wait* is timed, never
    a send (cancelling a send mid-write could corrupt the stream's framing), and never the wait
    for the next message: the heartbeat has its own task, which sends when nothing has left for
    ``interval`` (a timed wait per message cost ~12 µs per wake-up). Send errors propagate:
    they mean the peer is gone.

    ``max_batch`` > 1 (for receivers that take the list form, see docs/protocol.md): when a
    backlog has built up, what is already queued, up to ``max_batch`` messages, travels as one
    list (one IPC message instead of one each); a message alone in the queue is still sent at
    once, as itself.

    ``gather`` (with ``max_batch`` > 1): once a backlog is found (the producer outpaces this
    stream, e.g. a burst), wait :data:`GATHER_S` at a time while the backlog keeps growing (at
    most :data:`GATHER_MAX_S`, or until ``max_batch``), so a burst travels in a few large lists
    rather than many small ones: every IPC message costs both ends tractor's fixed
    per-message work. A message that finds the queue empty is never held (a lone status leaves
    at once, as itself).

    A message the wire cannot encode (a ``TypeError``/``OverflowError`` of the encoder, raised
    before anything is written) is logged and skipped, the rest of its list sent one by one:
    one bad message must not end the dialogue for every order on it. Returns how many were
    skipped.
    """
    stats = outbox.statistics
    clock = trio.current_time
    last_sent = clock()

    failed: list[Exception] = []
    skipped = 0

    async def beat() -> None:
        nonlocal last_sent
        while True:
            await trio.sleep_until(last_sent + interval)
            if clock() >= last_sent + interval:
                last_sent = clock()
                try:
                    # never cut a frame in half when the sender ends meanwhile: the channel
                    # carries the peer's other dialogues too (a peer that has not read for
                    # the heartbeat timeout is lost anyway)
                    with trio.CancelScope(shield=True, deadline=clock() + HEARTBEAT_TIMEOUT_S) as cs:
                        await stream.send(heartbeat())
                    if cs.cancelled_caught:
                        raise trio.BrokenResourceError(
                            f'the peer read nothing for {HEARTBEAT_TIMEOUT_S:g}s')
                except Exception as err:  # the peer is gone: end the sender with this error
                    failed.append(err)
                    n.cancel_scope.cancel()
                    return

    async with trio.open_nursery() as n:
        n.start_soon(beat)
        while True:
            try:  # a message already queued: a backlog
                msg = outbox.receive_nowait()
                backlog = True
            except trio.WouldBlock:
                backlog = False
                try:
                    msg = await outbox.receive()
                except trio.EndOfChannel:
                    break
            except trio.EndOfChannel:
                break
            batch = None
            if max_batch > 1:
                queued = stats().current_buffer_used
                if gather and backlog:
                    deadline = clock() + GATHER_MAX_S
                    while queued + 1 < max_batch and clock() < deadline:
                        await trio.sleep(GATHER_S)
                        now = stats().current_buffer_used
                        if now <= queued:  # the producer paused: send what there is
                            break
                        queued = now
                if queued:
                    batch = [msg]
                    for _ in range(min(queued, max_batch - 1)):
                        batch.append(outbox.receive_nowait())
                    msg = batch
            try:
                await stream.send(msg)
            except UNENCODABLE:
                skipped += await _send_each_encodable(stream, batch or [msg])
            last_sent = clock()
        n.cancel_scope.cancel()
    if failed:
        raise failed[0]
    return skipped


UNENCODABLE = (TypeError, OverflowError)
"""What tractor's msgpack encoder raises for a message it cannot encode (before any write)."""


async def _send_each_encodable(stream: tractor.MsgStream, msgs: list) -> int:
    """Send ``msgs`` one by one, logging and skipping those the wire cannot encode; how many."""
    skipped = 0
    for msg in msgs:
        try:
            await stream.send(msg)
        except UNENCODABLE as err:
            skipped += 1
            log.error('skipped a message the wire cannot encode (%s: %s): %.300r',
                      type(err).__name__, err, msg)
    return skipped


async def abandon_context(ctx: tractor.Context) -> None:
    """Give up on a context whose peer may be dead, without ever waiting on it for long.

    Ask the far end to cancel (bounded; a dead peer's send errors are ignored), then close the
    local feeder channel so tractor's own ``open_context`` exit returns instead of waiting
    forever for a result that will never come.
    """
    with trio.CancelScope(shield=True):
        with trio.move_on_after(1):
            try:
                await ctx.cancel()
            except Exception as err:  # noqa: BLE001 - best effort towards a peer that may be gone
                log.debug('cancel request to a lost peer failed: %r', err)
        if ctx._recv_chan is not None:
            await ctx._recv_chan.aclose()


@asynccontextmanager
async def open_supervisor() -> AsyncIterator[tuple[Any, trio.Nursery]]:
    """Yield ``(actor_nursery, task_nursery)`` for an actor that owns children and tasks.

    Teardown order matters with tractor 0.1.0a5: the tasks (which hold contexts on the
    children) are cancelled first, then the children are cancelled from *inside* the actor
    nursery (fast and graceful; cancelling around it takes the 3 s hard-kill path).
    """
    async with tractor.open_nursery() as actor_n:
        try:
            async with trio.open_nursery() as task_n:
                try:
                    yield actor_n, task_n
                finally:
                    task_n.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await actor_n.cancel()
