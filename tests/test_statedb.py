"""statedb: opening state files, with a torn WAL tail logged (not silent) and none reported on a
healthy file."""
import logging
import shutil
import sqlite3

from piker_ems.statedb import open_db, wal_torn_tail


def _write(path, n):
    conn, _ = open_db(path)
    conn.execute('CREATE TABLE IF NOT EXISTS t (i INTEGER)')
    for i in range(n):
        conn.execute('INSERT INTO t VALUES (?)', (i,))
    return conn  # left open: the WAL is not checkpointed away


def _copy_live(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ('', '-wal'):
        shutil.copy(str(src) + suffix, str(dst) + suffix)


def test_a_healthy_wal_has_no_torn_tail(tmp_path, caplog):
    src = tmp_path / 'a' / 'x.sqlite'
    conn = _write(src, 20)
    dst = tmp_path / 'b' / 'x.sqlite'
    _copy_live(src, dst)
    conn.close()
    assert wal_torn_tail(dst) is None
    with caplog.at_level(logging.WARNING):
        db, moved = open_db(dst)
    assert moved is None and not [r for r in caplog.records if 'incomplete' in r.getMessage()]
    assert db.execute('SELECT count(*) FROM t').fetchone()[0] == 20


def test_a_torn_wal_tail_is_measured_and_logged_and_complete_writes_kept(tmp_path, caplog):
    src = tmp_path / 'a' / 'x.sqlite'
    conn = _write(src, 20)
    dst = tmp_path / 'b' / 'x.sqlite'
    _copy_live(src, dst)
    conn.close()
    wal = dst.with_name(dst.name + '-wal')
    with open(wal, 'r+b') as f:  # a power cut in the middle of the last commit's frame
        f.truncate(wal.stat().st_size - 100)
    frames, nbytes = wal_torn_tail(dst)
    assert frames >= 1 and nbytes > 0
    with caplog.at_level(logging.WARNING):
        db, moved = open_db(dst)
    assert moved is None
    assert any('incomplete last write' in r.getMessage() for r in caplog.records)
    assert db.execute('SELECT count(*) FROM t').fetchone()[0] == 19  # the torn insert only


def test_no_wal_no_tail(tmp_path):
    path = tmp_path / 'x.sqlite'
    sqlite3.connect(path).close()
    assert wal_torn_tail(path) is None
