# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
The clock a simulated venue reads: a callable returning epoch nanoseconds.

It is passed into the book, the clearing core and the dialogue engine instead of being read
from :mod:`time` inside them, so the core stays pure and a test drives it with
:class:`FakeClock` and gets the exact same timestamps on every run. This module is the only
place in the package that touches the system clock.
"""
from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ['Clock', 'FakeClock', 'system_clock']

#: A clock: ``clock()`` -> epoch time in integer nanoseconds.
Clock = Callable[[], int]


def system_clock() -> int:
    """The wall clock (what the actors use)."""
    return time.time_ns()


class FakeClock:
    """A manual clock for tests: it only moves when told to.

    ``FakeClock(start_ns)()`` returns ``start_ns`` until :meth:`advance` (or :meth:`set`) moves
    it; ``step_ns`` makes every read advance by that much afterwards (strictly increasing
    timestamps without manual steps).
    """

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000, step_ns: int = 0) -> None:
        self.now_ns = int(start_ns)
        self.step_ns = int(step_ns)
        self.reads = 0

    def __call__(self) -> int:
        now = self.now_ns
        self.now_ns += self.step_ns
        self.reads += 1
        return now

    def advance(self, seconds: float = 0.0, *, ns: int = 0) -> int:
        """Move forward by ``seconds`` (plus ``ns``); returns the new time."""
        if seconds < 0 or ns < 0:
            raise ValueError('a clock never goes backwards')
        self.now_ns += round(seconds * 1e9) + int(ns)
        return self.now_ns

    def set(self, now_ns: int) -> None:
        if now_ns < self.now_ns:
            raise ValueError('a clock never goes backwards')
        self.now_ns = int(now_ns)
