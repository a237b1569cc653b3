"""Bench-only: timestamp every tractor IPC message in every actor process (``trace_hops.py``).

Why: to split an order's round trip into tractor's own work (framing, msgpack, its debug
strings, the socket, the wake-up of the receiving actor) and ours, hop by hop, in the real
processes, without patching tractor or touching piker_ems. Python imports ``sitecustomize`` at
start-up from ``PYTHONPATH``; ``trace_hops.py`` puts this folder there, so every actor it spawns
(tractor starts them as ``python -m tractor._child``) loads it. Nothing happens unless
``PIKER_HOPTRACE_DIR`` is set.

Each event is ``(t_ns, dir, what)`` with ``t_ns`` from ``CLOCK_MONOTONIC`` (one clock for all
processes on the host): ``tx`` when ``MsgpackTCPStream.send`` is entered (before msgpack
encoding), ``txd`` when its ``send_all`` returned, ``rx`` when a whole frame was read and is
about to be decoded, ``mark`` for labels the bench process records itself. A process writes
its events to ``<dir>/<name>.<pid>.json`` when it exits.
"""
from __future__ import annotations

import os

_DIR = os.environ.get('PIKER_HOPTRACE_DIR')


def _what(msg: object) -> str:
    """A short description of a tractor message: its stream payload's kind and order id."""
    if not isinstance(msg, dict):
        return type(msg).__name__
    if 'yield' not in msg:
        return '+'.join(k for k in msg if k != 'cid')
    p = msg['yield']
    if isinstance(p, list):
        return f'[{len(p)}]' + (_what({'yield': p[0]}) if p else '')
    if isinstance(p, (bytes, bytearray)):
        return f'bytes{len(p)}'
    if not isinstance(p, dict):
        return type(p).__name__
    kind = p.get('resp') or p.get('status') or p.get('action') or p.get('name') or '?'
    oid = p.get('oid') or p.get('reqid') or ''
    return f'{kind}:{str(oid)[:12]}'


def _wrap(spec: str, events: list, clock) -> None:  # noqa: ANN001
    """Time a synchronous function or method, ``module:Name`` or ``module:Class.method``
    (``fn>`` at entry, ``fn<`` at exit, outermost calls only)."""
    import functools
    import importlib

    modname, qual = spec.split(':')
    owner = importlib.import_module(modname)
    *path, attr = qual.split('.')
    for part in path:
        owner = getattr(owner, part)
    fn = getattr(owner, attr)
    depth = [0]

    @functools.wraps(fn)
    def timed(*a, **kw):  # noqa: ANN002, ANN003
        depth[0] += 1
        if depth[0] == 1:
            events.append((clock(), 'fn>', qual))
        try:
            return fn(*a, **kw)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                events.append((clock(), 'fn<', qual))

    setattr(owner, attr, timed)


def _install(out_dir: str) -> None:
    import atexit
    import json
    import sys
    import time

    from tractor import _ipc

    events: list[tuple[int, str, str]] = []
    clock = time.perf_counter_ns  # CLOCK_MONOTONIC on Linux: comparable across processes
    name = 'root'
    if '--uid' in sys.argv:
        name = sys.argv[sys.argv.index('--uid') + 1].split("'")[1]

    orig_send = _ipc.MsgpackTCPStream.send
    orig_init = _ipc.MsgpackTCPStream.__init__

    async def send(self, msg):  # noqa: ANN001
        events.append((clock(), 'tx', _what(msg)))
        out = await orig_send(self, msg)
        events.append((clock(), 'txd', ''))
        return out

    def __init__(self, *a, **kw):  # noqa: ANN001, N807
        orig_init(self, *a, **kw)
        decode = self.decode

        def traced_decode(data):  # noqa: ANN001
            t = clock()
            msg = decode(data)
            events.append((t, 'rx', _what(msg)))
            return msg

        self.decode = traced_decode

    _ipc.MsgpackTCPStream.send = send
    _ipc.MsgpackTCPStream.__init__ = __init__

    for spec in filter(None, os.environ.get('PIKER_HOPTRACE_WRAP', '').split(',')):
        _wrap(spec, events, clock)

    def mark(label: str) -> None:
        events.append((clock(), 'mark', label))

    def dump() -> None:
        path = os.path.join(out_dir, f'{name}.{os.getpid()}.json')
        with open(path, 'w') as f:
            json.dump({'name': name, 'pid': os.getpid(), 'events': events}, f)

    atexit.register(dump)
    module = sys.modules[__name__]
    module.mark = mark  # type: ignore[attr-defined]
    module.dump = dump  # type: ignore[attr-defined]  (the bench process reads its own before exit)


if _DIR:
    try:
        _install(_DIR)
    except ImportError:  # a python without tractor (e.g. a tool run from this environment)
        pass
