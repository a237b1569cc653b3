"""Logging setup: stdlib ``logging`` with a coloured console handler.

Every module gets its logger with :func:`get_logger`; entry points (CLIs, daemons, tests) call
:func:`setup_console` once with the level the user asked for.
"""
from __future__ import annotations

import logging
import sys

import colorlog

_ROOT = 'piker_ems'
_FORMAT = '%(log_color)s%(asctime)s %(levelname)-7s%(reset)s %(cyan)s%(processName)s%(reset)s %(name)s: %(message)s'
LEVELS = ('debug', 'info', 'warning', 'error', 'critical')


def get_logger(name: str) -> logging.Logger:
    """Return the project logger for a module (``piker_ems.<...>`` keeps one hierarchy)."""
    if not name.startswith(_ROOT):
        name = f'{_ROOT}.{name}'
    return logging.getLogger(name)


def setup_console(level: str | int | None = 'warning', *, process_name: str | None = None) -> None:
    """Attach one coloured stderr handler to the project logger at ``level``.

    Idempotent: calling it again only changes the level, so sub-actors and tests may call it
    freely. ``process_name`` labels lines from this process (e.g. the actor name).
    """
    if level is None:
        return
    logger = logging.getLogger(_ROOT)
    if isinstance(level, str):
        level = level.upper()
    logger.setLevel(level)
    if process_name:
        import multiprocessing
        multiprocessing.current_process().name = process_name
    if not any(getattr(h, '_piker_ems', False) for h in logger.handlers):
        handler = colorlog.StreamHandler(sys.stderr)
        handler.setFormatter(colorlog.ColoredFormatter(_FORMAT, datefmt='%H:%M:%S'))
        handler._piker_ems = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
