"""A per-key, reference-counted cache of long-lived async resources.

tractor 0.1.0a5's ``trionics.maybe_open_context`` counts users globally (a resource for key A is
only torn down when every user of every key left) and leaks its lock on cancellation. This is our
replacement: one entry per key, created once by the first user, living in a nursery that outlives
that user's task, and torn down (and awaited) when the last user of *that key* leaves.

Each owner (brokerd's feed bus, emsd's Router, a client process) holds its own
:class:`SharedCache`; nothing here is process-global.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import asynccontextmanager
from typing import Any, AsyncContextManager, AsyncIterator, Callable, Hashable

import trio


class _Entry:
    __slots__ = ('value', 'users', 'no_users', 'done')

    def __init__(self) -> None:
        self.value: Any = None
        self.users = 0
        self.no_users = trio.Event()
        self.done = trio.Event()


class SharedCache:
    """Share one instance of an async context manager per key among concurrent users."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._entries: dict[Hashable, _Entry] = {}
        self._locks: defaultdict[Hashable, trio.Lock] = defaultdict(trio.Lock)
        self.opened = 0  # how many resources were ever created (tests count upstreams with it)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def keys(self) -> list[Hashable]:
        """Keys with a live resource."""
        return list(self._entries)

    def users(self, key: Hashable) -> int:
        """Current user count for ``key`` (0 when absent)."""
        entry = self._entries.get(key)
        return entry.users if entry else 0

    @asynccontextmanager
    async def open(
        self,
        key: Hashable,
        factory: Callable[[], AsyncContextManager[Any]],
    ) -> AsyncIterator[tuple[bool, Any]]:
        """Enter ``factory()`` once per key and yield ``(cache_hit, value)``.

        The resource runs in the cache's nursery; if creating it raises, nothing is cached and
        the error propagates to this caller. The last user to leave tears it down and waits for
        the teardown to finish, so a following user never receives a half-closed resource.
        """
        lock = self._locks[key]
        async with lock:
            entry = self._entries.get(key)
            hit = entry is not None
            if entry is None:
                entry = _Entry()

                async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
                    try:
                        async with factory() as value:
                            entry.value = value
                            task_status.started()
                            await entry.no_users.wait()
                    finally:
                        entry.done.set()

                await self._nursery.start(run)
                self._entries[key] = entry
                self.opened += 1
            entry.users += 1
        try:
            yield hit, entry.value
        finally:
            with trio.CancelScope(shield=True):
                async with lock:
                    entry.users -= 1
                    if entry.users == 0:
                        if self._entries.get(key) is entry:
                            del self._entries[key]
                        entry.no_users.set()
                        with trio.move_on_after(5):
                            await entry.done.wait()
