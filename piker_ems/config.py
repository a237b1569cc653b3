"""Where piker_ems keeps its files and how it finds its registry.

Two environment variables override the defaults so tests and second clusters never collide with
a user's daemon:

- ``PIKER_EMS_CONFIG_DIR``: the config/state directory (default: the platform's user config dir).
- ``PIKER_EMS_REGISTRY``: ``host:port`` of the pikerd registry (default ``127.0.0.1:6116``).

Settings live in ``<config dir>/piker_ems.toml``; sections are read by the component that owns
them (e.g. ``[sim]`` by the sim backend).
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import platformdirs

DEFAULT_REGISTRY: tuple[str, int] = ('127.0.0.1', 6116)
CONFIG_FILE = 'piker_ems.toml'
ENV_CONFIG_DIR = 'PIKER_EMS_CONFIG_DIR'
ENV_REGISTRY = 'PIKER_EMS_REGISTRY'


def config_dir() -> Path:
    """Return (creating it) the directory for config, journals and state."""
    path = Path(os.environ.get(ENV_CONFIG_DIR) or platformdirs.user_config_dir('piker_ems'))
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_config() -> dict[str, Any]:
    """Read ``piker_ems.toml`` from the config dir; a missing file is an empty config."""
    path = config_dir() / CONFIG_FILE
    if not path.exists():
        return {}
    with path.open('rb') as f:
        return tomllib.load(f)


def parse_addr(text: str) -> tuple[str, int]:
    """Parse ``host:port`` (or a bare ``port``) into an address tuple, with a readable error."""
    host, sep, port = text.strip().rpartition(':')
    if not sep:
        host, port = DEFAULT_REGISTRY[0], text
    try:
        return (host or DEFAULT_REGISTRY[0], int(port))
    except ValueError:
        raise ValueError(f'bad registry address {text!r}: expected host:port') from None


def registry_addr(host: str | None = None, port: int | None = None) -> tuple[str, int]:
    """Resolve the registry address: explicit host/port win, then the env var, then the default."""
    env = os.environ.get(ENV_REGISTRY)
    base = parse_addr(env) if env else DEFAULT_REGISTRY
    return (host or base[0], port or base[1])
