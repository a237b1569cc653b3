"""piker_ems: an execution management system for traders, built as a tree of tractor actors.

``pikerd`` is the root daemon and registry; it owns ``brokerd.<broker>`` (quote feeds and live
order endpoints) and ``emsd`` (the clearing daemon) which in turn owns ``paperboi.<broker>``
paper engines. Clients (the Qt chart, the CLI, bots) find these services by name.
"""
import os

# numpy's OpenBLAS starts a pool of native threads at import (one per core) in every actor
# that loads the bar code (pikerd, brokerd, charts). Nothing here does linear algebra, so one
# thread is all it needs: fewer threads per process on small machines, and a daemon's threads
# are only its own (the operator may still override it in the environment).
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

__version__ = '0.1.0'
