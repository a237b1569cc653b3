"""Opening the SQLite files that hold state across restarts (emsd's order journal, the
simulated venues' journals), the same way for all of them.

- Files live under ``<config dir>/state/`` (:func:`state_path`).
- WAL mode, and the ``synchronous`` level the owner chose (``NORMAL``: every commit survives a
  ``kill -9`` of the process; ``FULL``: also a power loss, for an fsync per commit).
- A file SQLite cannot read, or that fails its quick integrity check, is moved aside as
  ``<name>.corrupt-<time>`` (with its ``-wal``/``-shm``), logged, and a new file started. A torn
  last transaction is not damage: SQLite drops it on open and keeps every complete one.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from .config import config_dir
from .log import get_logger

log = get_logger(__name__)

SYNC_LEVELS = ('off', 'normal', 'full', 'extra')


def state_path(name: str) -> Path:
    """``<config dir>/state/<name>.sqlite`` (the directory is created)."""
    path = config_dir() / 'state'
    path.mkdir(parents=True, exist_ok=True)
    return path / f'{name}.sqlite'


def connect(path: Path, synchronous: str = 'normal') -> sqlite3.Connection:
    """A connection in WAL mode (autocommit: callers open their own transactions)."""
    synchronous = synchronous.lower()
    if synchronous not in SYNC_LEVELS:
        raise ValueError(f'journal_sync must be one of {", ".join(SYNC_LEVELS)}, got {synchronous!r}')
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        mode = conn.execute('PRAGMA journal_mode=WAL').fetchone()[0]
        if str(mode).lower() != 'wal':
            raise sqlite3.DatabaseError(f'cannot use WAL mode (got {mode!r})')
        conn.execute(f'PRAGMA synchronous={synchronous.upper()}')
        rows = [r[0] for r in conn.execute('PRAGMA quick_check').fetchall()]
        if rows != ['ok']:
            raise sqlite3.DatabaseError('integrity check failed: ' + '; '.join(map(str, rows[:5])))
    except BaseException:
        conn.close()
        raise
    return conn


def open_db(path: Path | str, synchronous: str = 'normal', what: str = 'journal'
            ) -> tuple[sqlite3.Connection, Path | None]:
    """Open (creating) the file at ``path``; a damaged one is moved aside and a new one
    started. Returns the connection and where the damaged file went (None if it was fine)."""
    path = Path(path)
    try:
        return connect(path, synchronous), None
    except sqlite3.DatabaseError as err:
        moved = move_aside(path, err, what)
        return connect(path, synchronous), moved


def move_aside(path: Path, err: Exception, what: str = 'journal') -> Path:
    """Rename a damaged file (and its WAL/shm) out of the way; log what happened."""
    stamp = time.strftime('%Y%m%dT%H%M%S')
    moved = path.with_name(f'{path.name}.corrupt-{stamp}')
    n = 1
    while moved.exists():
        n += 1
        moved = path.with_name(f'{path.name}.corrupt-{stamp}-{n}')
    path.rename(moved)
    for suffix in ('-wal', '-shm'):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(moved.with_name(moved.name + suffix))
    log.error('%s %s is damaged (%s): moved aside as %s, starting empty', what, path, err, moved.name)
    return moved
