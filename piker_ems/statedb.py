"""Opening the SQLite files that hold state across restarts (emsd's order journal, the
simulated venues' journals), the same way for all of them.

- Files live under ``<config dir>/state/`` (:func:`state_path`).
- WAL mode, and the ``synchronous`` level the owner chose (``NORMAL``: every commit survives a
  ``kill -9`` of the process; ``FULL``: also a power loss, for an fsync per commit).
- A file SQLite cannot read, or that fails its quick integrity check, is moved aside as
  ``<name>.corrupt-<time>`` (with its ``-wal``/``-shm``), logged, and a new file started. A torn
  last transaction is not damage: SQLite drops it on open and keeps every complete one; before
  opening, :func:`wal_torn_tail` reads the WAL so what is dropped is logged, not silent.
"""
from __future__ import annotations

import sqlite3
import struct
import time
from pathlib import Path

import trio

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


_WAL_MAGIC = (0x377F0682, 0x377F0683)  # checksums little- / big-endian
_WAL_HEADER = 32
_FRAME_HEADER = 24


def _wal_checksum(data: bytes, s0: int, s1: int, big: bool) -> tuple[int, int]:
    """SQLite's WAL checksum: over 32-bit words, two at a time, in the file's byte order."""
    words = struct.unpack(f'{">" if big else "<"}{len(data) // 4}I', data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def wal_torn_tail(path: Path) -> tuple[int, int] | None:
    """What SQLite will drop from ``path``'s WAL when it opens it: ``(frames, bytes)`` after
    the last complete transaction, or None when there is nothing to drop (or no WAL).

    A frame counts only if its salts match the header and its checksum continues the chain;
    a transaction is complete at a frame that records the database size (a commit frame).
    """
    wal = path.with_name(path.name + '-wal')
    try:
        data = wal.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < _WAL_HEADER:
        return (0, len(data)) if data else None
    magic, _, page_size, _, salt1, salt2, c0, c1 = struct.unpack('>8I', data[:_WAL_HEADER])
    if magic not in _WAL_MAGIC or page_size < 512 or page_size & (page_size - 1):
        return None  # not a WAL SQLite would use: it ignores it, and integrity checks catch the rest
    big = magic & 1 == 1
    s0, s1 = _wal_checksum(data[:24], 0, 0, big)
    if (s0, s1) != (c0, c1):
        return None  # a header SQLite ignores (e.g. an old WAL being reset)
    frame = _FRAME_HEADER + page_size
    pos, good_end, frames, committed_frames = _WAL_HEADER, _WAL_HEADER, 0, 0
    while pos + frame <= len(data):
        _, commit, fs1, fs2, f0, f1 = struct.unpack('>6I', data[pos:pos + _FRAME_HEADER])
        if (fs1, fs2) != (salt1, salt2):
            break
        s0, s1 = _wal_checksum(data[pos:pos + 8], s0, s1, big)
        s0, s1 = _wal_checksum(data[pos + _FRAME_HEADER:pos + frame], s0, s1, big)
        if (s0, s1) != (f0, f1):
            break
        pos += frame
        frames += 1
        if commit:
            good_end, committed_frames = pos, frames
    dropped = len(data) - good_end
    if dropped <= 0:
        return None
    # frames of the same salt after the last commit, plus any partial frame
    return (max(frames - committed_frames, 0) + (1 if (len(data) - pos) else 0), dropped)


def open_db(path: Path | str, synchronous: str = 'normal', what: str = 'journal'
            ) -> tuple[sqlite3.Connection, Path | None]:
    """Open (creating) the file at ``path``; a damaged one is moved aside and a new one
    started. Returns the connection and where the damaged file went (None if it was fine)."""
    path = Path(path)
    try:
        torn = wal_torn_tail(path)
    except Exception as err:  # never let the look-ahead stop a start
        torn = None
        log.warning('%s %s: could not read its WAL ahead of opening: %s', what, path, err)
    if torn is not None:
        log.warning('%s %s: dropping an incomplete last write (%d frame(s), %d bytes of its WAL); '
                    'every complete transaction is kept', what, path, torn[0], torn[1])
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


async def checkpoint_in_background(conn: sqlite3.Connection, path: Path | str,
                                   every_s: float = 1.0) -> None:
    """Take over the WAL checkpoints of ``conn``'s file until cancelled.

    SQLite checkpoints inside a commit once the WAL passes ~1000 pages: it copies the WAL into
    the file and fsyncs, milliseconds on the order path (4x the cost of a paper order's commit,
    amortized, in ``bench/PROFILE.md``). Instead, automatic checkpoints stop and a PASSIVE one
    (it never blocks the writer) runs every ``every_s`` in a worker thread on its own
    connection. Cancelled: the automatic ones resume. Nothing about durability changes: a
    commit is in the WAL either way, and SQLite replays it on open.
    """
    conn.execute('PRAGMA wal_autocheckpoint=0')
    side = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5.0)

    def checkpoint() -> None:
        side.execute('PRAGMA wal_checkpoint(PASSIVE)').fetchall()

    try:
        while True:
            await trio.sleep(every_s)
            try:
                await trio.to_thread.run_sync(checkpoint, cancellable=False)
            except Exception:
                log.exception('checkpoint of %s failed', path)
    finally:
        side.close()
        try:
            conn.execute('PRAGMA wal_autocheckpoint=1000')
        except sqlite3.Error:  # the owner closed it already
            pass
