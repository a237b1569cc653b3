# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
asyncio inside trio: an asyncio event loop in one thread of ``brokerd.binance``.

ccxt (and its websocket half, ``ccxt.pro``) is asyncio code and binds each exchange object to
the loop it first runs on. Two bridges were possible (see ``docs/binance.md``): tractor's
``infect_asyncio`` (the whole actor runs trio as a guest of asyncio) or this one, a private
loop in a daemon thread. We chose the thread because it keeps brokerd a plain trio actor
spawned like every other service (no spawn flag in pikerd's service specs), keeps the quote
feed machinery shared with the other backends untouched, and avoids 0.1.0a5's rough edges of
``to_asyncio`` (errors raised before a channel's first message are only logged; cancelling a
linked task logs tracebacks). The cost is a hop between threads per call, which is small next
to a venue round trip.

Two primitives, both usable only from trio:

- :meth:`AsyncioThread.call`: run a coroutine function on the loop and await its result
  (cancelling the trio side cancels the asyncio task);
- :meth:`AsyncioThread.stream`: run an async generator on the loop and receive what it yields
  on a trio channel (leaving the block cancels the generator's task).
"""
from __future__ import annotations

import asyncio
import math
import threading
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Coroutine

import trio

__all__ = ['AsyncioThread']


class _Failed:
    """An error raised on the asyncio side, carried to the trio consumer."""

    def __init__(self, err: BaseException) -> None:
        self.err = err


class AsyncioThread:
    """One asyncio loop running in a daemon thread, started and stopped from trio."""

    def __init__(self, name: str = 'asyncio') -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        started.wait()
        self.loop = loop

    async def stop(self) -> None:
        """Cancel what still runs on the loop, stop it and join the thread."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        self.loop = None

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        fut = asyncio.run_coroutine_threadsafe(drain(), loop)
        await trio.to_thread.run_sync(fut.result)
        loop.call_soon_threadsafe(loop.stop)
        await trio.to_thread.run_sync(thread.join)

    async def call(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, **kw: Any) -> Any:
        """Await ``fn(*args, **kw)`` run on the loop; its exception is raised here."""
        if self.loop is None:
            raise RuntimeError(f'{self.name}: the asyncio loop is not running')
        fut = asyncio.run_coroutine_threadsafe(fn(*args, **kw), self.loop)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: Any) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        fut.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            fut.cancel()  # trio cancelled us: cancel the asyncio task too
            raise
        return fut.result()

    @asynccontextmanager
    async def stream(
        self, agen_fn: Callable[..., AsyncIterator[Any]], *args: Any,
    ) -> AsyncIterator[trio.MemoryReceiveChannel]:
        """Run ``agen_fn(*args)`` on the loop; yield a channel of what it yields.

        An exception in the generator is raised by the channel's next receive."""
        if self.loop is None:
            raise RuntimeError(f'{self.name}: the asyncio loop is not running')
        tx, rx = trio.open_memory_channel[Any](math.inf)
        token = trio.lowlevel.current_trio_token()

        def put(item: Any) -> None:  # runs in the trio thread
            try:
                tx.send_nowait(item)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

        def push(item: Any) -> None:  # runs in the asyncio thread
            try:
                token.run_sync_soon(put, item)
            except trio.RunFinishedError:
                pass

        async def produce() -> None:
            try:
                async for item in agen_fn(*args):
                    push(item)
            except asyncio.CancelledError:
                raise
            except BaseException as err:
                push(_Failed(err))

        fut = asyncio.run_coroutine_threadsafe(produce(), self.loop)

        async def receive_all() -> AsyncIterator[Any]:
            async for item in rx:
                if isinstance(item, _Failed):
                    raise item.err
                yield item

        try:
            yield receive_all()
        finally:
            fut.cancel()  # cancels the generator's asyncio task (it ends on the loop)
            tx.close()
