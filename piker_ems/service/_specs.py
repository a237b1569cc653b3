"""What runs each named service (SPEC §1): a leaf module that both pikerd's side
(:mod:`._daemon`) and the callers' side (:mod:`._spawn`) import, so neither imports the other
back.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

BROKERD_MODULES = ['piker_ems.data._brokerd']
EMSD_MODULES = ['piker_ems.clearing._ems']


class PikerdError(RuntimeError):
    """pikerd cannot start or be reached (e.g. its registry port is taken)."""


@dataclass
class ServiceSpec:
    """How to run one named daemon: its actor modules and its service-task endpoint."""

    name: str
    enable_modules: list[str]
    target: str  # 'package.module:function' of a @tractor.context endpoint
    kwargs: dict[str, Any] = field(default_factory=dict)

    def resolve_target(self) -> Callable:
        """Import and return the service-task endpoint."""
        mod, _, fn = self.target.partition(':')
        return getattr(importlib.import_module(mod), fn)


def service_spec(name: str, loglevel: str | None = None) -> ServiceSpec:
    """Describe how to run the service called ``name``; unknown names are a clear error."""
    from ..brokers import get_brokermod

    if name == 'emsd':
        return ServiceSpec(
            'emsd', EMSD_MODULES, 'piker_ems.clearing._ems:_setup_persistent_emsd',
        )
    prefix, dot, broker = name.partition('.')
    if prefix == 'brokerd' and dot and broker:
        mod = get_brokermod(broker)
        return ServiceSpec(
            name,
            [*BROKERD_MODULES, mod.__name__],
            'piker_ems.data._brokerd:_setup_persistent_brokerd',
            {'broker': broker},
        )
    raise PikerdError(f'no service named {name!r}: expected emsd or brokerd.<broker>')
