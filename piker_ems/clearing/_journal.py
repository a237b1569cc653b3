"""emsd's order journal: every order's state, written before its effect leaves emsd.

A restarted emsd (after a crash, ``kill -9``, an OOM kill or a normal stop) rebuilds its dark book
and live order map from here: nothing accepted is lost, nothing sent is sent twice.

Storage: the *order log* ``emsd.sqlite-log`` and the *store* ``emsd.sqlite``.

- Write-ahead goes to the log: each order event appends the order's whole state-machine record
  as one framed entry (length, CRC-32, msgpack of the oid, flags and the record's JSON) with one
  ``write()`` (a group of events, one
  ``write()``), after the state machine accepted the event and *before* any status is routed or
  any command is queued for the venue. An append is ~2 µs of work where an SQLite transaction
  (locks, two B-tree pages, WAL frames) is ~7–20 µs, ~60 µs in a just-woken actor
  (bench/PROFILE.md, round 4): the journal is on every order's path.
- The store is one SQLite file (stdlib ``sqlite3``, WAL mode): one row per order holding its
  latest record, a ``meta`` table (schema version) and the trading states. About twice a second
  emsd renames the log aside (``-log.<n>``) and a worker thread *folds* it into the store in one
  transaction, then deletes it. Opening the journal folds whatever logs a previous life left, in
  order, before anything is read; entries are whole records, so folding one twice is harmless.
- A torn last entry (emsd killed mid-``write()``) fails its length or CRC check and is dropped,
  logged, with every complete entry before it kept.

``synchronous``: ``NORMAL`` by default. A ``write()`` that returned is in the OS page cache, so it
survives the emsd process dying in any way (``kill -9`` included); only a power loss or kernel
crash can lose the last few entries. ``FULL`` adds an ``fdatasync`` per append (a few ms on
common disks) for that case; set ``[emsd] journal_sync = "full"`` in ``piker_ems.toml``.

Compaction: finished orders whose owner has seen their end are deleted beyond the newest
``keep_done`` (and any older than ``keep_days``), so the file stays small however long emsd runs.
A store that is not a database at all (corrupt) is moved aside and a new one started, with the
reason logged (:mod:`piker_ems.statedb`); the logs are then folded into the new store, so the
orders they hold are kept.
"""
from __future__ import annotations

import json
import os
import sqlite3
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from ..log import get_logger
from ..statedb import open_db

log = get_logger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    oid TEXT PRIMARY KEY,
    record TEXT NOT NULL,          -- the order's state-machine record (JSON)
    final INTEGER NOT NULL,        -- 1 once the order had its final status
    unseen INTEGER NOT NULL,       -- final while its owner was away
    updated_ns INTEGER NOT NULL
);
-- no secondary index: every write would also rewrite its entry (an upsert re-indexes the
-- columns it sets): half of a write's cost on the order path (bench/PROFILE.md, round 4).
-- The table stays small (compaction keeps ``keep_done`` finished orders), so load() at start,
-- compact() every few minutes and counts() scan it whole in milliseconds
DROP INDEX IF EXISTS orders_live;
DROP INDEX IF EXISTS orders_open;
CREATE TABLE IF NOT EXISTS trading_state (
    scope TEXT PRIMARY KEY,        -- an account, or '*' for the whole cluster
    state TEXT NOT NULL,           -- active | reducing | halted
    updated_ns INTEGER NOT NULL
);
"""


@dataclass
class JournalRecord:
    """One order as journaled: the machine's fields plus routing facts (JSON-safe)."""

    oid: str
    record: dict[str, Any]
    final: bool
    unseen: bool
    updated_ns: int


#: An entry's header: the msgpack body's length and its CRC-32.
_HEADER = struct.Struct('<II')
#: Larger "entries" are garbage (a torn or foreign file), not orders.
_MAX_ENTRY = 16 << 20

_UPSERT = (
    'INSERT INTO orders (oid, record, final, unseen, updated_ns) VALUES (?, ?, ?, ?, ?) '
    'ON CONFLICT(oid) DO UPDATE SET record=excluded.record, final=excluded.final, '
    'unseen=excluded.unseen, updated_ns=excluded.updated_ns'
)


def read_log(path: Path) -> tuple[list[tuple], int]:
    """The complete entries of one log file, in order, and how many bytes after them were
    dropped (a torn last write; 0 normally). Each entry: ``(oid, final, unseen, updated_ns,
    record)``, the record as JSON bytes."""
    data = path.read_bytes()
    decode = msgspec.msgpack.Decoder().decode
    out, pos = [], 0
    while pos + _HEADER.size <= len(data):
        size, crc = _HEADER.unpack_from(data, pos)
        body = data[pos + _HEADER.size:pos + _HEADER.size + size]
        if size > _MAX_ENTRY or len(body) < size or zlib.crc32(body) != crc:
            break
        try:
            entry = decode(body)
        except (msgspec.DecodeError, ValueError, TypeError):
            break
        if type(entry) is not list or len(entry) != 5:
            break
        out.append(entry)
        pos += _HEADER.size + size
    return out, len(data) - pos


def logs_aside(log_path: Path) -> list[Path]:
    """The logs :meth:`Journal.rotate` set aside next to ``log_path`` and not folded yet, oldest
    first (``<log>.<n>``, n increasing)."""
    aside = [p for p in log_path.parent.glob(log_path.name + '.*') if p.suffix[1:].isdigit()]
    return sorted(aside, key=lambda p: int(p.suffix[1:]))


class Journal:
    """The journal of one emsd: its order log and store (see the module docstring)."""

    def __init__(self, path: Path, sync: str = 'normal') -> None:
        self.path = Path(path)
        self.log_path = self.path.with_name(self.path.name + '-log')
        self.writes = 0
        self.folded = 0          # log entries moved into the store
        self._fsync = sync.lower() in ('full', 'extra')
        self._encode = msgspec.msgpack.Encoder().encode
        self._json = msgspec.json.Encoder().encode
        self._group: list[bytes] | None = None
        self._fold_lock = threading.Lock()   # the worker thread's fold vs a fold on the caller's
        self._next_seq = time.time_ns()
        self.db, self.moved_aside = open_db(self.path, sync, what='emsd journal')
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            self.db.close()
            raise RuntimeError(f'{self.path}: journal schema {row[0]} is newer than this '
                               f'piker_ems ({SCHEMA_VERSION}); refusing to touch it')
        self._fd = -1
        self._fold_all(self.db, at_open=True)  # what a previous life (crashed or not) left
        self._open_log()

    # --- the order path -------------------------------------------------------------------------

    def _open_log(self) -> None:
        self._fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _append(self, data: bytes) -> None:
        """One ``write()`` (all of it, or the log is cut back to where it was and this raises)."""
        start, done = self._size, 0
        try:
            while done < len(data):
                done += os.write(self._fd, data[done:])
            if self._fsync:
                os.fdatasync(self._fd)
        except BaseException:
            try:
                os.ftruncate(self._fd, start)  # never leave a torn entry before later ones
            except OSError:
                log.exception('journal: cannot cut a failed append out of %s', self.log_path)
            raise
        self._size = start + len(data)

    def write(self, oid: str, record: dict[str, Any], final: bool, unseen: bool, now_ns: int) -> None:
        """Journal one order's record: appended now, or with the open group at :meth:`commit`."""
        # the record as the store keeps it (JSON): folding then only moves bytes (the fold's
        # Python work holds the GIL the order path needs)
        body = self._encode((oid, int(final), int(unseen), now_ns, self._json(record)))
        entry = _HEADER.pack(len(body), zlib.crc32(body)) + body
        if self._group is not None:
            self._group.append(entry)
        else:
            self._append(entry)
        self.writes += 1

    def begin(self) -> None:
        """Open a group: the writes until :meth:`commit` are appended with one ``write()``
        (the Router's ``group()``: a batch of events, one append)."""
        self._group = []

    def commit(self) -> None:
        """Append the group opened by :meth:`begin` (a failure appends none of it and raises)."""
        entries, self._group = self._group, None
        if entries:
            self._append(b''.join(entries))

    # --- folding the log into the store --------------------------------------------------------

    def rotate(self) -> bool:
        """Set the current log aside for folding (cheap: a rename); False if it is empty."""
        if self._fd < 0 or self._size == 0 or self._group is not None:
            return False
        self._next_seq = max(self._next_seq + 1, time.time_ns())
        os.close(self._fd)
        self._fd = -1
        try:
            os.rename(self.log_path, self.log_path.with_name(f'{self.log_path.name}.{self._next_seq}'))
        finally:
            self._open_log()
        return True

    def _fold_all(self, conn: sqlite3.Connection, at_open: bool = False) -> int:
        """Fold every log set aside (and, at open, the current one), oldest first, each in one
        transaction, deleting it after its commit. Stops at a file it cannot delete (folding a
        newer one first could let the older one, folded again later, undo it)."""
        with self._fold_lock:
            paths = logs_aside(self.log_path)
            if at_open and self.log_path.exists():  # the last life's current log (never ours)
                paths.append(self.log_path)
            n = 0
            for path in paths:
                entries, torn = read_log(path)
                if torn:
                    log.warning('emsd journal %s: dropping an incomplete last write (%d bytes); '
                                'every complete entry before it is kept', path.name, torn)
                latest = {e[0]: e for e in entries}  # an order's last entry is its state
                conn.execute('BEGIN')
                try:
                    conn.executemany(_UPSERT, [
                        (oid, record.decode(), final, unseen, updated)
                        for oid, final, unseen, updated, record in latest.values()])
                    conn.execute('COMMIT')
                except BaseException:
                    conn.execute('ROLLBACK')
                    raise
                path.unlink()
                n += len(entries)
            self.folded += n
            return n

    def fold(self) -> int:
        """Fold the log into the store now, on this thread (before reading the store)."""
        self.rotate()
        return self._fold_all(self.db)

    def fold_in_thread(self) -> int:
        """Fold the logs set aside by :meth:`rotate` on a connection of its own (for a worker
        thread; the order path keeps appending meanwhile)."""
        if not logs_aside(self.log_path):
            return 0
        side = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            return self._fold_all(side)
        finally:
            side.close()

    # --- reading (the store, after a fold) ------------------------------------------------------

    def load(self) -> list[JournalRecord]:
        """Every order worth restoring: not final, or final and not yet seen by its owner.

        A row that does not parse is logged and skipped; every complete record is kept.
        """
        self.fold()
        out = []
        rows = self.db.execute(
            'SELECT oid, record, final, unseen, updated_ns FROM orders '
            'WHERE final = 0 OR unseen = 1 ORDER BY updated_ns')
        for oid, record, final, unseen, updated in rows:
            try:
                out.append(JournalRecord(oid, json.loads(record), bool(final), bool(unseen), updated))
            except (ValueError, TypeError) as err:
                log.error('journal: dropping unreadable record of order %s: %s', oid, err)
        return out

    def compact(self, keep_done: int, keep_days: float, now_ns: int) -> int:
        """Delete finished, seen orders beyond the newest ``keep_done`` or older than
        ``keep_days``; returns how many were deleted."""
        self.fold()
        cutoff = now_ns - int(keep_days * 86_400e9)
        cur = self.db.execute(
            'DELETE FROM orders WHERE final = 1 AND unseen = 0 AND (updated_ns < ? OR oid NOT IN ('
            'SELECT oid FROM orders WHERE final = 1 AND unseen = 0 ORDER BY updated_ns DESC LIMIT ?))',
            (cutoff, keep_done))
        return cur.rowcount

    def write_state(self, scope: str, state: str, now_ns: int) -> None:
        """Record the trading state of an account (or ``*``, the cluster) in its own committed
        transaction of the store, before the halt's cancels leave emsd."""
        self.db.execute(
            'INSERT INTO trading_state (scope, state, updated_ns) VALUES (?, ?, ?) '
            'ON CONFLICT(scope) DO UPDATE SET state=excluded.state, updated_ns=excluded.updated_ns',
            (scope, state, now_ns))
        self.writes += 1

    def load_states(self) -> dict[str, str]:
        """Every scope's trading state as last written."""
        return dict(self.db.execute('SELECT scope, state FROM trading_state'))

    def counts(self) -> dict[str, int]:
        self.fold()
        live, done = self.db.execute('SELECT sum(final = 0), sum(final = 1) FROM orders').fetchone()
        return {'open': live or 0, 'done': done or 0}

    def close(self) -> None:
        """Fold what is left (a failure leaves it for the next open) and close."""
        try:
            self.fold()
        except Exception:
            log.exception('journal: could not fold %s at close; the next start will', self.log_path)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.db.close()


def read_journal(path: Path | str) -> dict[str, JournalRecord]:
    """Every order of the journal at ``path`` as a restarted emsd would find it (the store plus
    the logs, in order; an unreadable record as ``None``), read without changing anything: for
    tests and tools, while emsd may be appending and folding (the logs are read first, so an
    entry folded meanwhile is found in the store)."""
    path = Path(path)
    current = path.with_name(path.name + '-log')
    entries: list[tuple] = []
    for log_file in [*logs_aside(current), current]:
        try:
            entries.extend(read_log(log_file)[0])
        except FileNotFoundError:  # folded meanwhile: its entries are in the store now
            pass
    out: dict[str, JournalRecord] = {}
    rows: list[tuple] = []
    if path.exists():
        db = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
        try:
            rows = list(db.execute('SELECT oid, final, unseen, updated_ns, record FROM orders'))
        finally:
            db.close()
    for oid, final, unseen, updated, record in [*rows, *entries]:  # the logs are newer
        try:
            parsed = json.loads(record)
        except (ValueError, TypeError):
            parsed = None  # unreadable: load() skips it (and says so)
        out[oid] = JournalRecord(oid, parsed, bool(final), bool(unseen), updated)
    return out
