"""Test isolation: a free registry port and a temporary config dir per test, Qt offscreen,
and a hard check that no actor process outlives its test."""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')
# spawned actors inherit this: silence trio's MultiError deprecation noise in children
os.environ['PYTHONWARNINGS'] = 'ignore::FutureWarning'


def free_port() -> int:
    """An OS-assigned free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def reg_addr(monkeypatch) -> tuple[str, int]:
    """A fresh registry address for this test (also exported for code using the default)."""
    addr = ('127.0.0.1', free_port())
    monkeypatch.setenv('PIKER_EMS_REGISTRY', f'{addr[0]}:{addr[1]}')
    return addr


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch) -> Path:
    """A temporary config dir (children inherit it through the environment)."""
    path = tmp_path / 'config'
    path.mkdir()
    monkeypatch.setenv('PIKER_EMS_CONFIG_DIR', str(path))
    return path


def write_config(config_dir: Path, text: str) -> None:
    """Write ``piker_ems.toml`` for the actors a test spawns."""
    (config_dir / 'piker_ems.toml').write_text(text)


def child_pids(pid: int | None = None) -> list[int]:
    """Live (non-zombie) direct children of ``pid`` (default: this process)."""
    pid = pid or os.getpid()
    out = []
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open(f'/proc/{d}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != 'Z':
            out.append(int(d))
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``."""
    out, todo = [], [pid]
    while todo:
        kids = child_pids(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


def _reset_process_state() -> None:
    """Forget per-process singletons a test's in-process pikerd/brokerd may have left."""
    from piker_ems.service import _daemon

    _daemon._Local.services = None
    _daemon._Embedded.cache = None


@pytest.fixture(autouse=True)
def no_leaked_subactors():
    """Fail (and clean up) if a test leaves any child process running."""
    yield
    _reset_process_state()
    deadline = time.monotonic() + 3
    leaked = descendants(os.getpid())
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = descendants(os.getpid())
    for pid in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not leaked, f'leaked sub-processes: {leaked}'
