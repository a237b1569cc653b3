"""Crash points for recovery tests: kill this process at a named point of the order path.

The journal's promises (nothing accepted is lost, nothing sent twice) matter exactly at the
moments between writing a record and telling someone about it. Tests set
``PIKER_EMS_CRASH_AT=<point>@<marker file>`` in a daemon's environment: the first time the
process reaches ``<point>`` it creates the marker file and SIGKILLs itself (like an OOM kill or
a power cut of that process); once the marker exists the point is inert, so the restarted
process runs through. Points:

- ``emsd.after_journal``: emsd journaled an order's new state; its statuses and venue
  commands have not left yet;
- ``emsd.before_ack_journal``: a venue's ack arrived; emsd has not applied or journaled it;
- ``venue.after_fill_journal``: a simulated venue journaled a fill; the fill message has not
  been sent.

Unset (always, outside tests) every call is one frozenset lookup.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

from .log import get_logger

log = get_logger(__name__)

ENV = 'PIKER_EMS_CRASH_AT'


def _parse(text: str) -> dict[str, Path]:
    out = {}
    for item in filter(None, (p.strip() for p in text.split(','))):
        point, _, marker = item.partition('@')
        out[point] = Path(marker) if marker else Path(f'/tmp/piker-ems-crash-{point}')
    return out


#: point -> marker file, read once from the environment at import (configuration, not state)
POINTS: dict[str, Path] = _parse(os.environ.get(ENV, ''))


def crash_point(name: str) -> None:
    """SIGKILL this process if ``name`` is armed and has not fired yet (see module doc)."""
    marker = POINTS.get(name)
    if marker is None or marker.exists():
        return
    marker.write_text(str(os.getpid()))
    log.warning('crash point %s: killing pid %d', name, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)
