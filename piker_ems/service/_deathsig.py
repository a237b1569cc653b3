"""Make every sub-actor die with its parent process (Linux).

tractor 0.1.0a5 children do not notice when their parent is SIGKILLed and keep running as
orphans. This module is listed in every spawned actor's ``enable_modules`` so it is imported in
the child at start-up; importing it starts a daemon thread that waits for the parent *process* to
exit (a ``pidfd``, or polling ``getppid()`` where pidfds are unavailable) and then SIGKILLs this
process. It is a no-op in the root process (which also imports ``enable_modules``) and off Linux.

Why not ``prctl(PR_SET_PDEATHSIG)``: the kernel sends that signal when the parent *thread* that
forked us exits, and trio spawns subprocesses from a worker thread of its thread cache, which
exits after 10 s idle. With PDEATHSIG every daemon was SIGKILLed ~10 s after it was spawned.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time

from tractor import _state


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _watch_pidfd(pidfd: int) -> None:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    while not poller.poll():  # readable once the process has exited
        pass
    _die()


def _watch_ppid(ppid: int, period: float = 0.2) -> None:
    while os.getppid() == ppid:
        time.sleep(period)
    _die()


def arm() -> bool:
    """Start watching the parent process; return whether a watcher runs."""
    if not sys.platform.startswith('linux') or _state.is_root_process():
        return False
    # NB: no "ppid == 1 means orphaned" shortcut: pikerd may itself be PID 1 (a container's
    # entry point). We run after the handshake with our parent, so it was alive moments ago.
    ppid = os.getppid()
    try:
        pidfd = os.pidfd_open(ppid)
    except (AttributeError, OSError):
        target, args = _watch_ppid, (ppid,)
    else:
        if os.getppid() != ppid:  # it died (and its pid may be reused) while we opened it
            os._exit(1)
        target, args = _watch_pidfd, (pidfd,)
    threading.Thread(target=target, args=args, name='parent-death-watch', daemon=True).start()
    return True


ARMED = arm()
