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


class ServiceDown(PikerdError):
    """A service this request needs was started elsewhere (``piker serve``) and is down now:
    the message (one line) names it and says since when."""


def remote_error(err: BaseException, *types: type[Exception]) -> Exception | None:
    """The first exception of ``types`` in ``err`` (its groups, its cause/context chain), as
    a local exception carrying its one-line message: a remote actor's error arrives as a
    ``RemoteActorError`` naming its type (``msgdata['type_str']``), and is rebuilt here, so
    callers report the line itself rather than a remote traceback. ``None`` if there is none."""
    by_name = {t.__name__: t for t in types}
    stack, seen = [err], 0
    while stack and seen < 50:
        exc = stack.pop()
        seen += 1
        if isinstance(exc, types):
            return exc
        msgdata = getattr(exc, 'msgdata', None)
        if isinstance(msgdata, dict) and msgdata.get('type_str') in by_name:
            name = msgdata['type_str']
            tb = (msgdata.get('tb_str') or '').strip().splitlines()
            last = tb[-1] if tb else name
            return by_name[name](last.partition(f'{name}: ')[2] or last)
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        if exc.__cause__ is not None:
            stack.append(exc.__cause__)
        elif exc.__context__ is not None:
            stack.append(exc.__context__)
    return None


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
