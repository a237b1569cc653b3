"""emsd's order journal: every order's state, written before its effect leaves emsd.

A restarted emsd (after a crash, ``kill -9``, an OOM kill or a normal stop) rebuilds its dark book
and live order map from here: nothing accepted is lost, nothing sent is sent twice.

Storage: one SQLite file (stdlib ``sqlite3``) in WAL mode, one row per order holding the order's
whole state-machine record (upserted in one transaction per event), plus a small ``meta`` table
(schema version). Write-ahead: the Router writes an order's row after its state machine accepted
an event and *before* any status is routed or any command is queued for the venue.

``synchronous``: ``NORMAL`` by default. In WAL mode a committed transaction is in the WAL file
(the OS page cache) when ``commit()`` returns, so it survives the emsd process dying in any way
(``kill -9`` included); only a power loss or kernel crash can lose the last few commits, and
never corrupts the file. ``FULL`` adds an fsync per commit (a few ms on common disks) for that
case; set ``[emsd] journal_sync = "full"`` in ``piker_ems.toml`` to choose it.

Compaction: finished orders whose owner has seen their end are deleted beyond the newest
``keep_done`` (and any older than ``keep_days``), so the file stays small however long emsd runs.
A file that is not a database at all (corrupt) is moved aside and a new one started, with the
reason logged (:mod:`piker_ems.statedb`); SQLite itself discards a torn last transaction on open
and keeps every complete one.
"""
from __future__ import annotations

import json
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


class Journal:
    """The journal file of one emsd."""

    def __init__(self, path: Path, sync: str = 'normal') -> None:
        self.path = Path(path)
        self.writes = 0
        # the order path's JSON encoder: msgspec is several times faster than json.dumps for
        # the same compact JSON (load() reads either)
        self._encode = msgspec.json.Encoder().encode
        self.db, self.moved_aside = open_db(self.path, sync, what='emsd journal')
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            self.db.close()
            raise RuntimeError(f'{self.path}: journal schema {row[0]} is newer than this '
                               f'piker_ems ({SCHEMA_VERSION}); refusing to touch it')

    def write(self, oid: str, record: dict[str, Any], final: bool, unseen: bool, now_ns: int) -> None:
        """Upsert one order's record (one committed transaction, or part of the open group)."""
        self.db.execute(
            'INSERT INTO orders (oid, record, final, unseen, updated_ns) VALUES (?, ?, ?, ?, ?) '
            'ON CONFLICT(oid) DO UPDATE SET record=excluded.record, final=excluded.final, '
            'unseen=excluded.unseen, updated_ns=excluded.updated_ns',
            (oid, self._encode(record).decode(), int(final), int(unseen), now_ns),
        )
        self.writes += 1

    def begin(self) -> None:
        """Open a group: the writes until :meth:`commit` share one transaction (the Router's
        ``group()``: a batch of events, one commit)."""
        self.db.execute('BEGIN')

    def commit(self) -> None:
        """Commit the group opened by :meth:`begin` (a failure rolls it back and raises)."""
        try:
            self.db.execute('COMMIT')
        except Exception:
            if self.db.in_transaction:
                self.db.execute('ROLLBACK')
            raise

    def load(self) -> list[JournalRecord]:
        """Every order worth restoring: not final, or final and not yet seen by its owner.

        A row that does not parse is logged and skipped; every complete record is kept.
        """
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
        cutoff = now_ns - int(keep_days * 86_400e9)
        cur = self.db.execute(
            'DELETE FROM orders WHERE final = 1 AND unseen = 0 AND (updated_ns < ? OR oid NOT IN ('
            'SELECT oid FROM orders WHERE final = 1 AND unseen = 0 ORDER BY updated_ns DESC LIMIT ?))',
            (cutoff, keep_done))
        return cur.rowcount

    def write_state(self, scope: str, state: str, now_ns: int) -> None:
        """Record the trading state of an account (or ``*``, the cluster) in its own committed
        transaction, before the halt's cancels leave emsd."""
        self.db.execute(
            'INSERT INTO trading_state (scope, state, updated_ns) VALUES (?, ?, ?) '
            'ON CONFLICT(scope) DO UPDATE SET state=excluded.state, updated_ns=excluded.updated_ns',
            (scope, state, now_ns))
        self.writes += 1

    def load_states(self) -> dict[str, str]:
        """Every scope's trading state as last written."""
        return dict(self.db.execute('SELECT scope, state FROM trading_state'))

    def counts(self) -> dict[str, int]:
        live, done = self.db.execute('SELECT sum(final = 0), sum(final = 1) FROM orders').fetchone()
        return {'open': live or 0, 'done': done or 0}

    def close(self) -> None:
        self.db.close()
