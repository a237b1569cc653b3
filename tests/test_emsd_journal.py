"""emsd's journal: the order log (appended on the order path) and its fold into the store.

What a trader relies on: whatever emsd accepted is found again by a restart, however emsd died,
in its latest state; a torn or failed write never hides the entries around it; folding the log
in a worker thread while orders keep coming loses and reorders nothing.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from piker_ems.clearing import _journal
from piker_ems.clearing._journal import Journal, read_journal


def record(state: str, n: int = 0) -> dict:
    return {'machine': {'state': state, 'n': n}, 'req': {'oid': 'x', 'price': 1.5}}


def states(path: Path, key: str = 'state') -> dict[str, Any]:
    """Each order's ``machine[key]`` as a restarted emsd would find it."""
    return {oid: r.record['machine'][key] for oid, r in read_journal(path).items()}


def test_a_restart_finds_every_write_without_a_close(tmp_path):
    """kill -9 leaves the log unfolded: the next open folds it, latest state per order."""
    path = tmp_path / 'emsd.sqlite'
    j = Journal(path)
    j.write('a', record('pending_new'), False, False, 1)
    j.write('b', record('dark'), False, False, 2)
    j.write('a', record('working'), False, False, 3)
    j.write('c', record('filled'), True, True, 4)   # final, owner away: restored as unseen
    # (no close: the process "died" here)
    again = Journal(path)
    rows = {r.oid: r for r in again.load()}
    assert {o: r.record['machine']['state'] for o, r in rows.items()} == {
        'a': 'working', 'b': 'dark', 'c': 'filled'}
    assert rows['c'].final and rows['c'].unseen
    assert again.folded == 4 and not path.with_name('emsd.sqlite-log').stat().st_size
    again.close()


def test_a_group_is_one_append_and_a_failed_one_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / 'emsd.sqlite'
    j = Journal(path)
    j.write('a', record('pending_new'), False, False, 1)
    j.begin()
    j.write('a', record('working'), False, False, 2)
    j.write('b', record('pending_new'), False, False, 3)
    assert states(path) == {'a': 'pending_new'}          # nothing of the group yet
    j.commit()
    assert states(path) == {'a': 'working', 'b': 'pending_new'}

    log_file = path.with_name('emsd.sqlite-log')
    size = log_file.stat().st_size
    real_write = os.write

    def half_then_fail(fd, data):  # the disk fills up in the middle of the group's append
        if fd == j._fd and len(data) > 40:
            real_write(fd, data[:40])
            raise OSError(28, 'No space left on device')
        return real_write(fd, data)

    monkeypatch.setattr(_journal.os, 'write', half_then_fail)
    j.begin()
    j.write('a', record('filled'), True, False, 4)
    with pytest.raises(OSError):
        j.commit()
    monkeypatch.setattr(_journal.os, 'write', real_write)
    assert log_file.stat().st_size == size                # the torn half was cut back out
    j.write('b', record('working'), False, False, 5)      # and later entries stay readable
    assert states(path) == {'a': 'working', 'b': 'working'}
    j.close()
    assert states(path) == {'a': 'working', 'b': 'working'}


def test_a_torn_last_entry_is_dropped_and_said(tmp_path, caplog):
    path = tmp_path / 'emsd.sqlite'
    j = Journal(path)
    for i in range(5):
        j.write(f'o{i}', record('dark', i), False, False, i)
    log_file = path.with_name('emsd.sqlite-log')
    with open(log_file, 'r+b') as f:
        f.truncate(log_file.stat().st_size - 7)
    with caplog.at_level(logging.WARNING):
        again = Journal(path)
    assert [r.oid for r in again.load()] == ['o0', 'o1', 'o2', 'o3']
    assert any('dropping an incomplete last write' in r.getMessage() for r in caplog.records)
    again.close()


def test_folding_in_a_thread_while_writing_keeps_the_latest_state(tmp_path):
    """The emsd loop: the order path appends while a worker thread folds the logs set aside."""
    path = tmp_path / 'emsd.sqlite'
    j = Journal(path)
    stop = threading.Event()
    folded = []

    def folder():
        while not stop.is_set():
            folded.append(j.fold_in_thread())

    t = threading.Thread(target=folder)
    t.start()
    try:
        for i in range(3000):
            oid = f'o{i % 300}'
            j.write(oid, record('working', i), False, False, i)
            if i % 97 == 0:
                j.rotate()
    finally:
        stop.set()
        t.join()
    assert sum(folded) > 0                      # the thread did fold while we wrote
    expected = {f'o{k}': max(i for i in range(3000) if i % 300 == k) for k in range(300)}
    assert states(path, 'n') == expected
    j.close()
    assert states(path, 'n') == expected
    assert not list(tmp_path.glob('emsd.sqlite-log.*'))


def test_a_log_that_cannot_be_deleted_stops_the_fold_before_newer_ones(tmp_path, monkeypatch):
    """Folding a newer log first would let the older one, folded again later, undo it."""
    path = tmp_path / 'emsd.sqlite'
    j = Journal(path)
    j.write('a', record('pending_new'), False, False, 1)
    j.rotate()
    j.write('a', record('working'), False, False, 2)
    j.rotate()
    older, newer = _journal.logs_aside(j.log_path)
    real_unlink = Path.unlink

    def stuck(self, *a, **kw):
        if self == older:
            raise PermissionError(13, 'Permission denied')
        return real_unlink(self, *a, **kw)

    monkeypatch.setattr(Path, 'unlink', stuck)
    with pytest.raises(PermissionError):
        j.fold_in_thread()
    assert newer.exists()                          # not folded past the stuck one
    monkeypatch.setattr(Path, 'unlink', real_unlink)
    assert j.fold_in_thread() == 2                 # the older again, then the newer
    assert states(path) == {'a': 'working'}
    j.close()


def test_full_sync_flushes_every_append(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(_journal.os, 'fdatasync', lambda fd: calls.append(fd))
    j = Journal(tmp_path / 'emsd.sqlite', sync='full')
    j.write('a', record('dark'), False, False, 1)
    j.begin()
    j.write('b', record('dark'), False, False, 2)
    j.write('c', record('dark'), False, False, 3)
    j.commit()
    assert len(calls) == 2                         # one per append, a group is one append
    j.close()
