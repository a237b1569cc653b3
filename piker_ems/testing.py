"""Support for tests and benchmarks: finding (and reaping) the actor processes a run left.

tractor actors are OS processes; a test or benchmark that leaves one behind has a teardown bug.
These helpers read the Linux process table directly, so they see what tractor does not.
"""
from __future__ import annotations

import os
import signal
import time


def child_pids(pid: int | None = None) -> list[int]:
    """Live (non-zombie) direct children of ``pid`` (default: this process)."""
    pid = pid or os.getpid()
    out = []
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open(f'/proc/{d}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != 'Z':
            out.append(int(d))
    return out


def descendants(pid: int | None = None) -> list[int]:
    """Every live descendant of ``pid`` (default: this process)."""
    out, todo = [], [pid or os.getpid()]
    while todo:
        kids = child_pids(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


def reap_descendants(grace: float = 3.0) -> list[int]:
    """Give this process's descendants ``grace`` seconds to exit, SIGKILL the rest.

    Returns the pids that had to be killed (a leak to report), so nothing outlives the run.
    """
    deadline = time.monotonic() + grace
    left = descendants()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the OS process table: there is no event to wait on
        left = descendants()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left
