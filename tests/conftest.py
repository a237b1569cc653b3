"""Test isolation: a free registry port and a temporary config dir per test, Qt offscreen,
a hard check that no actor process outlives its test, and a Qt test's widgets deleted in its
own teardown on the main thread."""
from __future__ import annotations

import gc
import os
import socket
from pathlib import Path

import pytest

from piker_ems.testing import reap_descendants

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


@pytest.fixture(autouse=True)
def project_logs_reach_caplog():
    """``setup_console`` (called by any in-process daemon or CLI a test ran) stops the project
    logger propagating to the root, where pytest's ``caplog`` listens: undo that per test."""
    import logging

    logger = logging.getLogger('piker_ems')
    saved = logger.propagate, logger.level
    logger.propagate = True
    logger.setLevel(logging.NOTSET)  # (setup_console may have left it at 'critical')
    yield
    logger.propagate, level = saved
    logger.setLevel(level)


@pytest.fixture(autouse=True)
def no_leaked_subactors():
    """Fail (and clean up) if a test leaves any child process running."""
    yield
    leaked = reap_descendants(grace=3)
    assert not leaked, f'leaked sub-processes: {leaked}'



@pytest.fixture(autouse=True)
def qt_objects_die_with_their_test(request):
    """A Qt test's widgets (closed by pytest-qt, deleted later) are deleted now, and cycles
    holding Qt wrappers collected now, on the main thread: not at some later test's first
    event loop or in whatever thread the collector next happens to run."""
    yield
    if 'qtbot' not in request.fixturenames:
        return
    from PyQt5 import QtCore

    QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.DeferredDelete)
    gc.collect()
