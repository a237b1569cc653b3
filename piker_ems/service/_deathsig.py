"""Make every sub-actor die with its parent (Linux ``PR_SET_PDEATHSIG``).

tractor 0.1.0a5 children do not notice when their parent is SIGKILLed and keep running as
orphans. This module is listed in every spawned actor's ``enable_modules`` so it is imported in
the child at start-up; importing it asks the kernel to SIGKILL this process when its parent dies.
It is a no-op in the root process (which also imports ``enable_modules``) and off Linux.
"""
import ctypes
import os
import signal
import sys

from tractor import _state

PR_SET_PDEATHSIG = 1


def arm() -> bool:
    """Request SIGKILL on parent death for this process; return whether it was armed."""
    if not sys.platform.startswith('linux') or _state.is_root_process():
        return False
    try:
        libc = ctypes.CDLL('libc.so.6', use_errno=True)
        armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0
    except OSError:
        return False
    if armed and os.getppid() == 1:
        # the parent died before we armed: nobody will ever reap or cancel us
        os._exit(1)
    return armed


ARMED = arm()
