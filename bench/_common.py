"""Shared plumbing for the actor benchmarks: isolated environment, percentiles, leak check.

Import-safe: nothing here imports tractor at module level (``piker_ems.testing`` is stdlib
only), so entry scripts can call :func:`isolate` before the runtime (or any child actor) exists.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import warnings
from pathlib import Path

from piker_ems.testing import reap_descendants

SYMBOL = 'btcusd'
FQSN = f'{SYMBOL}.sim'

# a calm, slow sim market: quotes still flow through brokerd -> emsd/paperboi, but rarely
SIM_CONFIG = """
[sim]
seed = 11
rate = 5
volatility = 0.3
tick_size = 0.01
"""


def free_port() -> int:
    """An OS-assigned free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def isolate(sim_config: str = SIM_CONFIG) -> tuple[tuple[str, int], Path]:
    """Free registry port + temporary config dir, exported so every child actor inherits them.

    Must run before tractor / piker_ems are imported.
    """
    os.environ['PYTHONWARNINGS'] = 'ignore::FutureWarning'
    warnings.filterwarnings('ignore', category=FutureWarning)
    cfg = Path(tempfile.mkdtemp(prefix='piker_ems_bench_'))
    (cfg / 'piker_ems.toml').write_text(sim_config)
    os.environ['PIKER_EMS_CONFIG_DIR'] = str(cfg)
    addr = ('127.0.0.1', free_port())
    os.environ['PIKER_EMS_REGISTRY'] = f'{addr[0]}:{addr[1]}'
    return addr, cfg


def pct(samples: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``samples``."""
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def wire_templates(oid: str = 'f' * 32, owner: str = 'bench') -> dict[str, dict]:
    """Real protocol messages as they travel (plain dicts), for same-size baselines."""
    from piker_ems.clearing._messages import (
        BrokerdOrder, BrokerdStatus, Order, Status, to_wire,
    )

    order = Order(action='buy', oid=oid, symbol=FQSN, price=12345.67, size=1.0,
                  brokers=['sim'], exec_mode='live', account='paper')
    border = BrokerdOrder(action='buy', oid=oid, account='paper', reqid=None,
                          symbol=SYMBOL, price=12345.67, size=1.0)
    reqid = 'paper-00000000-0000-0000-0000-000000000000'
    bstatus = BrokerdStatus(reqid=reqid, status='submitted', account='paper', filled=0.0,
                            remaining=1.0, broker_details={'name': 'paperboi'})
    req = order.model_copy(update={'owner': owner})
    status_live = Status(oid=oid, resp='broker_submitted', req=req, owner=owner,
                         broker_reqid=reqid, brokerd_msg=to_wire(bstatus))
    status_dark = Status(oid=oid, resp='dark_submitted',
                         req=req.model_copy(update={'exec_mode': 'dark'}), owner=owner)
    return {
        'order': to_wire(order),
        'brokerd_order': to_wire(border),
        'brokerd_status': to_wire(bstatus),
        'status_live': to_wire(status_live),
        'status_dark': to_wire(status_dark),
    }


def wire_size(msg: dict) -> int:
    import msgspec

    return len(msgspec.msgpack.encode(msg))


def reap_check(cfg: Path | None = None, grace: float = 3.0) -> list[int]:
    """Wait for child actors to exit; SIGKILL (and report) any that outlive ``grace``."""
    left = reap_descendants(grace)
    if cfg is not None:
        shutil.rmtree(cfg, ignore_errors=True)
    return left


def machine_line() -> str:
    """CPU count and load average: other processes on the box skew every number here."""
    l1, l5, l15 = os.getloadavg()
    return f'{os.cpu_count()} CPUs, load average {l1:.2f} / {l5:.2f} / {l15:.2f} (1/5/15 min)'


def has_flag(name: str) -> bool:
    """Whether ``--name`` is on the command line (every bench: ``--json``, ``--quick``)."""
    import sys

    return f'--{name}' in sys.argv


def positional(default: int) -> int:
    """The first non-flag argument as an int (a bench's N), else ``default``."""
    import sys

    args = [a for a in sys.argv[1:] if not a.startswith('--')]
    return int(args[0]) if args else default


def emit_json(obj: dict) -> None:
    """The bench's results as one JSON object on the last line (for bench/run_all.py)."""
    import json

    print(json.dumps(obj, default=float))
