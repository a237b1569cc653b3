"""An outage is logged once, not once per retry.

emsd retries a lost venue (and a lost feed) every second while it is down: logging each failed
attempt as an error would bury everything else in the log. :class:`OutageLog` logs a WARNING
(with the reason) when a thing goes down, a reminder at most every :data:`REMIND_S` while it
stays down, and an INFO when it comes back; the attempts in between are DEBUG.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

#: Seconds between two reminders that something is still down.
REMIND_S = 60.0


@dataclass
class _Outage:
    since: float       # clock() when it went down
    since_wall: float  # time.time() then, for the log line
    reminded: float    # clock() of the last warning
    reason: str
    attempts: int = 1


class OutageLog:
    """The outages of a set of named things (``what`` says what they are, e.g. ``trades
    dialogue``), logged through ``log``; ``clock`` is monotonic seconds (tests pass their own)."""

    def __init__(self, log: logging.Logger, what: str, clock: Callable[[], float] = time.monotonic,
                 remind_s: float = REMIND_S) -> None:
        self.log = log
        self.what = what
        self.clock = clock
        self.remind_s = remind_s
        self._down: dict[str, _Outage] = {}

    def is_down(self, name: str) -> bool:
        return name in self._down

    def down(self, name: str, reason: str) -> None:
        """An attempt to use ``name`` failed (or it was lost) because of ``reason``."""
        now = self.clock()
        outage = self._down.get(name)
        if outage is None:
            self._down[name] = _Outage(now, time.time(), now, reason)
            self.log.warning('%s %s is down: %s', self.what, name, reason)
            return
        outage.attempts += 1
        outage.reason = reason
        if now - outage.reminded >= self.remind_s:
            outage.reminded = now
            self.log.warning('%s %s is still down (since %s, %d attempts; last: %s)', self.what, name,
                             time.strftime('%H:%M:%S', time.localtime(outage.since_wall)), outage.attempts,
                             reason)
        else:
            self.log.debug('%s %s: attempt %d failed: %s', self.what, name, outage.attempts, reason)

    def up(self, name: str) -> bool:
        """``name`` works again; returns whether it had been down (and then says so)."""
        outage = self._down.pop(name, None)
        if outage is None:
            return False
        self.log.info('%s %s is back after %.0fs down (%d failed attempts)', self.what, name,
                      self.clock() - outage.since, outage.attempts)
        return True
