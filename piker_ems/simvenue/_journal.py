# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
The write-ahead journal of a simulated venue (paper engine, sim exchange): SQLite, WAL mode.

One file per venue under ``<config dir>/state/`` (:func:`state_path`): ``paper.<broker>.sqlite``
for ``paperboi.<broker>``, ``sim-exchange.sqlite`` for brokerd.sim's exchange. The clearing
core (:mod:`._core`) writes to it *before* the effect leaves the process:

- an accepted order (``open``) before its ack / ``submitted`` status is returned;
- a modify (new price/size) before its ``submitted`` status; a cancel before ``cancelled``;
- a fill, in **one transaction**: the execution (fill id, price, size, fee, time), the
  order's new ``filled``/state and the position (size, average price, realized PnL, fees),
  before the fill message is returned.

If a write fails the core answers an error instead and changes nothing in memory, so what a
client was told is always a subset of what is on disk. On start the core restores its
resting orders, positions, recently ended orders and id counters from here (:meth:`load`).

Durability: ``journal_mode=WAL`` with ``synchronous=NORMAL`` by default. A commit returns once
its WAL frames are written to the file (the OS page cache), so every acknowledged record
survives ``kill -9``, an OOM kill or a crash of the process: the kernel still writes those pages
out, and the next open replays the WAL. What ``NORMAL`` gives up is an ``fsync`` per commit:
after a power loss or kernel crash the transactions since the last checkpoint may be lost
(never torn: the WAL's frame checksums make SQLite drop an incomplete tail, and the database
stays consistent). For a *simulated* venue that trade-off is right: ``FULL`` costs one fsync
(milliseconds on ordinary disks) on every order and fill, and emsd's reconciliation (SPEC §10)
already treats the venue as the truth after a reconnect. Set ``journal_sync = "full"`` in the
``[paper]`` / ``[sim]`` section to pay the fsync and survive power loss too.

Damage: a torn WAL tail is dropped by SQLite itself (every complete transaction is kept). A file
that is not a database at all (or fails its integrity check) is moved aside as
``<name>.corrupt-<time>`` (with its ``-wal``/``-shm``) and the venue starts empty, logging it;
the id counters then start from the current time in ms so no reqid or fill id is ever reused.
A file written by a *newer* schema is refused (:class:`JournalError`), never overwritten.

Schema (version :data:`SCHEMA_VERSION`, in ``meta.schema_version``)::

    meta(key PRIMARY KEY, value)          -- schema_version, venue, created_ns, id_floor,
                                          -- last_reqid (int reqids), last_fill
    orders(reqid PRIMARY KEY, oid, account, symbol, action, price, size, filled,
           status, time_ns, updated_ns, prio)    -- status: open|filled|cancelled|rejected
    fills(seq PRIMARY KEY, fill_id UNIQUE, reqid, oid, account, symbol, action, price,
          size, fee, time_ns)
    positions(account, symbol, size, avg_price, realized_pnl, fees, PRIMARY KEY(account, symbol))

``reqid`` is stored as its JSON text (``1`` or ``"paper-..."``) so int and str reqids round-trip.
One engine (one process) owns a file at a time.
"""
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..log import get_logger
from ..statedb import open_db, state_path
from ._book import ReqId, RestingOrder
from ._positions import Position

__all__ = ['GroupCommitError', 'Journal', 'JournalError', 'Restored', 'SCHEMA_VERSION', 'fee_setting', 'open_venue_journal', 'state_path', 'venue_settings']

log = get_logger(__name__)

SCHEMA_VERSION = 1


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    reqid TEXT PRIMARY KEY,
    oid TEXT NOT NULL,
    account TEXT NOT NULL,
    symbol TEXT NOT NULL,
    action TEXT NOT NULL,
    price REAL NOT NULL,
    size REAL NOT NULL,
    filled REAL NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    prio INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_oid ON orders(oid);
CREATE INDEX IF NOT EXISTS orders_status ON orders(status, updated_ns);
CREATE TABLE IF NOT EXISTS fills (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    fill_id TEXT NOT NULL UNIQUE,
    reqid TEXT NOT NULL,
    oid TEXT NOT NULL,
    account TEXT NOT NULL,
    symbol TEXT NOT NULL,
    action TEXT NOT NULL,
    price REAL NOT NULL,
    size REAL NOT NULL,
    fee REAL NOT NULL,
    time_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS fills_time ON fills(time_ns);
CREATE TABLE IF NOT EXISTS positions (
    account TEXT NOT NULL,
    symbol TEXT NOT NULL,
    size REAL NOT NULL,
    avg_price REAL NOT NULL,
    realized_pnl REAL NOT NULL,
    fees REAL NOT NULL,
    PRIMARY KEY (account, symbol)
);
"""


class JournalError(RuntimeError):
    """The journal cannot be used (e.g. written by a newer schema)."""


class GroupCommitError(JournalError):
    """A group's commit failed: none of the group's writes is on disk."""


def venue_settings(section: str, broker: str | None = None) -> dict[str, Any]:
    """The settings of a simulated venue: the ``[<section>]`` table of ``piker_ems.toml``
    (scalars only), overridden by its ``[<section>.<broker>]`` sub-table when ``broker`` is
    given. Keys used here: ``fee_bps`` (default 0), ``persist`` (default true) and
    ``journal_sync`` (default ``"normal"``)."""
    from ..config import load_config

    table = load_config().get(section) or {}
    out = {k: v for k, v in table.items() if not isinstance(v, dict)}
    if broker is not None and isinstance(table.get(broker), dict):
        out.update(table[broker])
    return out


def fee_setting(settings: dict[str, Any]) -> float:
    fee = settings.get('fee_bps', 0.0)
    if isinstance(fee, bool) or not isinstance(fee, (int, float)) or not fee >= 0:
        raise ValueError(f'fee_bps must be a number >= 0, got {fee!r}')
    return float(fee)


def open_venue_journal(name: str, venue: str, settings: dict[str, Any]) -> 'Journal':
    """The journal of a venue as its settings say: ``state/<name>.sqlite`` or, with
    ``persist = false``, an in-memory one."""
    if not settings.get('persist', True):
        return Journal.memory(venue)
    return Journal.open(state_path(name), venue, synchronous=str(settings.get('journal_sync', 'normal')))


def _key(reqid: ReqId) -> str:
    return json.dumps(reqid)


def _reqid(text: str) -> ReqId:
    value = json.loads(text)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise JournalError(f'bad reqid in the journal: {text!r}')
    return value


@dataclass
class Restored:
    """What :meth:`Journal.load` gives back to a starting core."""

    open_orders: list[RestingOrder] = field(default_factory=list)   # time priority order
    ended: list[tuple[ReqId, str]] = field(default_factory=list)   # (reqid, status), oldest first
    positions: list[Position] = field(default_factory=list)
    last_reqid: int = 0   # the highest int reqid ever issued (or the id floor)
    last_fill: int = 0    # the highest fill number ever issued (or the id floor)


class Journal:
    """One venue's SQLite journal (see the module doc). ``Journal.memory()`` for tests and
    engines that do not persist: same code path, nothing on disk."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None) -> None:
        self.conn = conn
        self.path = path
        self.moved_aside: Path | None = None
        self.writes = 0
        self.commits = 0
        self._prio = 0
        self._grouped = False   # inside group(): the writes share one transaction...
        self._begun = False     # ... opened by the group's first write
        self._after_commit: list[tuple[Callable[..., Any], tuple]] = []

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def memory(cls, venue: str = '') -> 'Journal':
        conn = sqlite3.connect(':memory:', isolation_level=None, check_same_thread=False)
        journal = cls(conn, None)
        journal._init(venue)
        return journal

    @classmethod
    def open(cls, path: Path | str, venue: str = '', *, synchronous: str = 'normal') -> 'Journal':
        """Open (creating) the journal at ``path``; a damaged file is moved aside (module doc)."""
        conn, moved = open_db(path, synchronous, what='venue journal')
        journal = cls(conn, Path(path))
        try:
            journal._check_schema()
        except JournalError:
            journal.close()
            raise
        journal._init(venue, fresh_after_damage=moved is not None)
        journal.moved_aside = moved
        return journal

    def _check_schema(self) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if 'meta' in tables:
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else SCHEMA_VERSION
            if version > SCHEMA_VERSION:
                raise JournalError(
                    f'{self.path}: journal schema {version} is newer than this version '
                    f'of piker_ems ({SCHEMA_VERSION}); refusing to touch it')

    def _init(self, venue: str, fresh_after_damage: bool = False) -> None:
        with self._tx() as c:
            for stmt in _SCHEMA.split(';'):
                if stmt.strip():
                    c.execute(stmt)
            now = time.time_ns()
            for key, value in (
                ('schema_version', SCHEMA_VERSION),
                ('venue', venue),
                ('created_ns', now),
                # after damage: ids start from the current time (ms) so none is ever reused
                ('id_floor', now // 1_000_000 if fresh_after_damage else 0),
            ):
                c.execute('INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)', (key, str(value)))
        row = self.conn.execute('SELECT MAX(prio) FROM orders').fetchone()
        self._prio = int(row[0] or 0)

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass

    # -- transactions --------------------------------------------------------------------

    class _Tx:
        """One write: its own committed transaction; in a group, the group's transaction (opened
        by its first write) or a savepoint of it, so a failed write still changes nothing."""

        def __init__(self, journal: 'Journal') -> None:
            self.journal = journal
            self.conn = journal.conn
            # 'own': BEGIN..COMMIT; 'first': opens the group's transaction; 'nested': savepoint
            self.kind = 'own' if not journal._grouped else 'nested' if journal._begun else 'first'

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute('SAVEPOINT w' if self.kind == 'nested' else 'BEGIN IMMEDIATE')
            if self.kind == 'first':
                self.journal._begun = True
            return self.conn

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            if exc_type is None:
                if self.kind == 'own':
                    self.conn.execute('COMMIT')
                    self.journal.commits += 1
                elif self.kind == 'nested':
                    self.conn.execute('RELEASE w')
                return  # 'first': the group commits
            try:
                if self.kind == 'nested':
                    self.conn.execute('ROLLBACK TO w')
                    self.conn.execute('RELEASE w')
                else:
                    self.journal._begun = False
                    self.conn.execute('ROLLBACK')
            except sqlite3.Error:
                pass

    def _tx(self) -> 'Journal._Tx':
        self.writes += 1
        return Journal._Tx(self)

    @contextmanager
    def group(self) -> Iterator[None]:
        """Every write inside shares one transaction, committed at the end (group commit: one
        WAL append instead of one per write; a group that writes once costs what that write
        alone costs). The caller must keep what those writes cause from leaving the process
        until this returns; callbacks of :meth:`after_commit` run after the commit. A failed
        commit rolls the whole group back and raises :class:`GroupCommitError` (the caller
        then knows none of it is on disk). Nested groups join the outer one."""
        if self._grouped:
            yield
            return
        self._grouped, self._begun = True, False
        try:
            yield
        finally:
            self._grouped = False
            after, self._after_commit = self._after_commit, []
            if self._begun:
                self._begun = False
                try:
                    self.conn.execute('COMMIT')
                    self.commits += 1
                except sqlite3.Error as err:
                    try:
                        self.conn.execute('ROLLBACK')
                    except sqlite3.Error:
                        pass
                    raise GroupCommitError(f'group commit failed: {err}') from err
        for fn, args in after:
            fn(*args)

    def after_commit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` once what was written so far is committed: now, or at the end of
        the open group (crash points meaning "journaled, not yet sent")."""
        if self._grouped:
            self._after_commit.append((fn, args))
        else:
            fn(*args)

    def _meta_int(self, key: str) -> int:
        row = self.conn.execute('SELECT value FROM meta WHERE key=?', (key,)).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _meta_max(c: sqlite3.Connection, key: str, value: int) -> None:
        c.execute(
            'INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE '
            'SET value = CAST(MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS TEXT)',
            (key, str(value)),
        )

    # -- writes (each one transaction, committed before it returns) -----------------------

    def accept(self, order: RestingOrder) -> None:
        """A new order was accepted (before its ack is sent)."""
        self._prio += 1
        with self._tx() as c:
            c.execute(
                'INSERT INTO orders(reqid, oid, account, symbol, action, price, size, filled, status,'
                ' time_ns, updated_ns, prio) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)',
                (_key(order.reqid), order.oid, order.account, order.symbol, order.action, order.price,
                 order.size, order.filled, 'open', order.time_ns, order.time_ns, self._prio),
            )
            if isinstance(order.reqid, int):
                self._meta_max(c, 'last_reqid', order.reqid)

    def modify(self, reqid: ReqId, price: float, size: float, time_ns: int) -> None:
        """A resting order was re-priced/re-sized (it loses its time priority)."""
        self._prio += 1
        with self._tx() as c:
            cur = c.execute(
                "UPDATE orders SET price=?, size=?, updated_ns=?, prio=? WHERE reqid=? AND status='open'",
                (price, size, time_ns, self._prio, _key(reqid)),
            )
            if cur.rowcount != 1:
                raise JournalError(f'modify of {reqid!r}: not an open order in the journal')

    def end(self, reqid: ReqId, status: str, time_ns: int) -> None:
        """An order ended without (more) fills: ``cancelled`` or ``rejected``."""
        with self._tx() as c:
            c.execute(
                'UPDATE orders SET status=?, updated_ns=? WHERE reqid=?', (status, time_ns, _key(reqid)))

    def fill(self, *, fill_id: str, fill_no: int, reqid: ReqId, oid: str, account: str, symbol: str,
             action: str, price: float, size: float, fee: float, time_ns: int, filled: float,
             status: str, position: Position) -> None:
        """One execution: the fill, the order's filled/state and the position, atomically."""
        with self._tx() as c:
            c.execute(
                'INSERT INTO fills(fill_id, reqid, oid, account, symbol, action, price, size, fee, time_ns)'
                ' VALUES (?,?,?,?,?,?,?,?,?,?)',
                (fill_id, _key(reqid), oid, account, symbol, action, price, size, fee, time_ns),
            )
            c.execute(
                'UPDATE orders SET filled=?, status=?, updated_ns=? WHERE reqid=?',
                (filled, status, time_ns, _key(reqid)),
            )
            c.execute(
                'INSERT INTO positions(account, symbol, size, avg_price, realized_pnl, fees)'
                ' VALUES (?,?,?,?,?,?) ON CONFLICT(account, symbol) DO UPDATE SET size=excluded.size,'
                ' avg_price=excluded.avg_price, realized_pnl=excluded.realized_pnl, fees=excluded.fees',
                (position.account, position.symbol, position.size, position.avg_price,
                 position.realized_pnl, position.fees),
            )
            self._meta_max(c, 'last_fill', fill_no)

    # -- reads ---------------------------------------------------------------------------

    def find_oid(self, oid: str) -> tuple[ReqId, str] | None:
        """``(reqid, account)`` of the order placed with our ``oid``, if any."""
        row = self.conn.execute('SELECT reqid, account FROM orders WHERE oid=? LIMIT 1', (oid,)).fetchone()
        return (_reqid(row[0]), row[1]) if row else None

    def load(self, ended_limit: int = 100_000) -> Restored:
        """Everything a starting core needs (see :class:`Restored`)."""
        out = Restored()
        for row in self.conn.execute(
            "SELECT reqid, oid, account, symbol, action, price, size, filled, time_ns FROM orders"
            " WHERE status='open' ORDER BY prio"
        ):
            out.open_orders.append(RestingOrder(
                reqid=_reqid(row[0]), oid=row[1], account=row[2], symbol=row[3], action=row[4],
                price=row[5], size=row[6], filled=row[7], time_ns=row[8],
            ))
        ended = self.conn.execute(
            "SELECT reqid, status FROM orders WHERE status!='open' ORDER BY updated_ns DESC, prio DESC"
            " LIMIT ?", (ended_limit,),
        ).fetchall()
        out.ended = [(_reqid(r), s) for r, s in reversed(ended)]
        for row in self.conn.execute(
            'SELECT account, symbol, size, avg_price, realized_pnl, fees FROM positions ORDER BY rowid'
        ):
            out.positions.append(Position(*row))
        floor = self._meta_int('id_floor')
        out.last_reqid = max(self._meta_int('last_reqid'), floor)
        out.last_fill = max(self._meta_int('last_fill'), floor)
        return out

    def orders(self, since_ns: int | None) -> list[dict[str, Any]]:
        """Open orders, plus those that ended at or after ``since_ns`` (``None``: open only)."""
        cols = 'reqid, oid, account, symbol, action, price, size, filled, status, time_ns'
        if since_ns is None:
            rows = self.conn.execute(
                f"SELECT {cols} FROM orders WHERE status='open' ORDER BY prio").fetchall()
        else:
            rows = self.conn.execute(
                f"SELECT {cols} FROM orders WHERE status='open' UNION ALL "
                f"SELECT {cols} FROM orders WHERE status!='open' AND updated_ns>=? ",
                (since_ns,),
            ).fetchall()
        names = cols.split(', ')
        out = []
        for row in rows:
            d = dict(zip(names, row))
            d['reqid'] = _reqid(d['reqid'])
            out.append(d)
        return out

    def fills(self, since_ns: int | None = None) -> list[dict[str, Any]]:
        """Every fill at or after ``since_ns`` (``None``: all of them), in execution order."""
        cols = 'fill_id, reqid, oid, account, symbol, action, price, size, fee, time_ns'
        query = f'SELECT {cols} FROM fills'
        args: tuple = ()
        if since_ns is not None:
            query += ' WHERE time_ns>=?'
            args = (since_ns,)
        names = cols.split(', ')
        out = []
        for row in self.conn.execute(query + ' ORDER BY seq', args):
            d = dict(zip(names, row))
            d['reqid'] = _reqid(d['reqid'])
            out.append(d)
        return out
