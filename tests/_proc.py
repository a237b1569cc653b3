"""OS-level helpers for tests that run real daemons: the process table, ports, subprocesses.

Waiting here is bounded polling of things that have no event to wait on (the process table, a
port starting to accept connections).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from piker_ems.testing import descendants

BIN = Path(sys.executable).parent


def script(name: str) -> str:
    """Path of one of our console scripts (``pikerd``, ``piker``) in this venv."""
    path = BIN / name
    assert path.exists(), f'console script {name} not installed in {BIN}'
    return str(path)


def proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (``None`` when it does not exist)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited: it counts as gone)."""
    state = proc_state(pid)
    return state is not None and state != 'Z'


def parent_pid(pid: int) -> int:
    with open(f'/proc/{pid}/stat') as f:
        return int(f.read().rsplit(')', 1)[1].split()[1])


def cmdline(pid: int) -> str:
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            return f.read().replace(b'\0', b' ').decode(errors='replace')
    except (FileNotFoundError, ProcessLookupError):
        return ''


def actor_pids(name: str, root: int | None = None) -> list[int]:
    """Live tractor sub-actor processes named ``name`` below ``root`` (default: this process)."""
    return [
        pid for pid in descendants(root or os.getpid())
        if f"--uid ('{name}'," in cmdline(pid) and is_alive(pid)
    ]


def wait_until(predicate, timeout: float, interval: float = 0.05, msg: str = '') -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(msg or f'condition not met within {timeout}s')
        time.sleep(interval)


def wait_gone(pids: list[int], timeout: float = 5.0) -> None:
    """Wait until none of ``pids`` runs."""
    wait_until(
        lambda: not [p for p in pids if is_alive(p)], timeout,
        msg=f'still alive after {timeout}s: {[p for p in pids if is_alive(p)]}',
    )


def port_open(port: int, host: str = '127.0.0.1') -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def default_sigint() -> None:  # runs in the child before exec
    # a parent started in the background may ignore SIGINT; our daemon must see it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_daemon(cmd: list[str], log_path: Path, ready, timeout: float, what: str,
                 env: dict | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session (output to ``log_path``); return once ``ready()`` is
    true, or kill it and everything below it and fail, saying ``what`` did not start."""
    with open(log_path, 'wb') as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, preexec_fn=default_sigint,
        )
    try:
        wait_until(lambda: ready() or proc.poll() is not None, timeout,
                   msg=f'{what} did not start within {timeout}s')
        assert proc.poll() is None, f'{what} exited early:\n{log_path.read_text()}'
    except BaseException:
        stop_hard(proc)
        raise
    return proc


def start_pikerd(port: int, log_path: Path, timeout: float = 10.0) -> subprocess.Popen:
    """Start the real ``pikerd`` console script on ``port``; return once it accepts TCP."""
    return start_daemon([script('pikerd'), '--port', str(port), '--loglevel', 'info'], log_path,
                        lambda: port_open(port), timeout, f'pikerd on port {port}')


def stop_hard(proc: subprocess.Popen) -> None:
    """Test-cleanup: kill a daemon and everything below it, whatever state it is in."""
    pids = descendants(proc.pid)
    for pid in [proc.pid, *pids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=5)
    wait_gone(pids, timeout=5)


def run_script(name: str, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run one of our console scripts to completion and capture its output."""
    return subprocess.run(
        [script(name), *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )


def run_cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run the real ``piker`` console script and capture its output."""
    return run_script('piker', *args, timeout=timeout)


@contextmanager
def pikerd_process(port: int, log: Path):
    """A real ``pikerd`` process for the duration of the block; on exit it must stop cleanly on
    SIGTERM (exit 0, every child gone), else it is killed hard."""
    proc = start_pikerd(port, log)
    try:
        yield proc
        kids = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        wait_gone(kids)
    finally:
        if proc.poll() is None:
            stop_hard(proc)


def cli(port: int, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """``piker --port PORT ARGS...`` as a user runs it."""
    return run_cli('--port', str(port), *args, timeout=timeout)


@contextmanager
def cli_running(port: int, *args: str):
    """``piker --port PORT ARGS...`` running in the background (its stdout/stderr piped, text)
    for the block: a test reads it while acting; killed if it still runs at the end."""
    proc = subprocess.Popen(
        [script('piker'), '--port', str(port), *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def json_lines(out: str) -> list[dict]:
    """The JSON objects of a ``--json`` output, one per line."""
    import json

    return [json.loads(line) for line in out.splitlines() if line.strip()]
