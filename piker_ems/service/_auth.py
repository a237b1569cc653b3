"""Participants, the cluster secret and the credentials every guarded RPC checks (SPEC §12).

- The **cluster secret** (``<config dir>/cluster.secret``, file mode 0600, or the file named by
  ``$PIKER_EMS_SECRET_FILE``) is made by pikerd on its first start. Whoever can read it is the
  **local participant** (``local``, every role): the CLI, the chart and ``open_ems`` on this
  machine pick it up by themselves, so a newcomer needs no config.
- Other participants live in ``<config dir>/participants.json`` (mode 0600): a name, its roles
  and a *verifier*, the SHA-256 of its token. The token is printed once by ``piker participants
  add`` and never stored.
- A guarded RPC takes an ``auth`` argument: ``{participant, ts, nonce, mac}`` where ``mac`` is an
  HMAC-SHA256, keyed with the participant's key (its verifier, or for ``local`` a key derived
  from the cluster secret), over the endpoint's name, the time and a fresh nonce. Neither the
  token nor the secret ever travels; a captured ``auth`` works for that one endpoint only, once,
  within :data:`MAX_SKEW_S`.

The roles: ``watch`` (quotes, positions, other participants' order flows), ``trade`` (place
and manage one's own orders), ``control-others`` (cancel/modify watched orders of others) and
``admin`` (stop services, operator and test calls).
"""
from __future__ import annotations

import contextvars
import functools
import hashlib
import hmac
import inspect
import json
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import config
from ..log import get_logger

log = get_logger(__name__)

ROLES = ('watch', 'trade', 'control-others', 'admin')
LOCAL = 'local'
SECRET_FILE = 'cluster.secret'
PARTICIPANTS_FILE = 'participants.json'
ENV_SECRET_FILE = 'PIKER_EMS_SECRET_FILE'
ENV_PARTICIPANT = 'PIKER_EMS_PARTICIPANT'
ENV_TOKEN = 'PIKER_EMS_TOKEN'
MAX_SKEW_S = 120.0
NAME_RE = re.compile(r'^[a-z][a-z0-9_-]{0,31}$')

__all__ = [
    'AuthError', 'Credential', 'LOCAL', 'ROLES', 'Refused', 'add_participant', 'client_credential',
    'credential_for', 'ensure_secret', 'guarded', 'list_participants', 'make_auth',
    'remove_participant', 'secret_path', 'use_credential', 'verify', 'WatchRefused',
]


class AuthError(RuntimeError):
    """This client has no usable credential (no secret file, token without a participant...)."""


class Refused(PermissionError):
    """A guarded call was refused: unknown participant, bad credential or missing role."""


class WatchRefused(Refused):
    """A client without the ``watch`` role asked to watch other clients' orders: it may
    connect again without watching (its own orders only)."""


class NotGenuine(Refused):
    """Every registration of a service failed its identity challenge (an impostor, or this
    client's own key is wrong)."""


# --- the cluster secret -----------------------------------------------------------------------

def secret_path() -> Path:
    """Where the cluster secret lives: ``$PIKER_EMS_SECRET_FILE`` or the config dir."""
    env = os.environ.get(ENV_SECRET_FILE)
    return Path(env) if env else config.config_dir() / SECRET_FILE


def _write_private(path: Path, data: bytes, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` readable by its owner only (never briefly wider)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def load_secret() -> bytes | None:
    """The cluster secret, or ``None`` if there is none yet."""
    path = secret_path()
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning('%s is readable by others (mode %o): chmod 600 it', path, mode)
    if not text:
        raise AuthError(f'{path} is empty')
    return text.encode()


def no_secret_line(registry: tuple[str, int] | None = None) -> str:
    """Why a client with no cluster secret (and no participant) cannot go on, and what to do."""
    if registry is None:
        import tractor

        actor = tractor.current_actor(err_on_no_runtime=False)
        registry = tuple(actor._arb_addr) if actor is not None else config.registry_addr()
    return (f'no credential for the cluster at {registry[0]}:{registry[1]}: no cluster secret at '
            f'{secret_path()}; copy it from the pikerd host (README "Several machines") or give '
            f'--participant NAME --token TOKEN')


def require_secret() -> bytes:
    """The cluster secret; :class:`AuthError` (one line saying how to get it) if there is none.
    Only pikerd makes one (:func:`ensure_secret`): a client or a served service that made its
    own would hold a secret no other process of the cluster knows."""
    secret = load_secret()
    if secret is None:
        raise AuthError(no_secret_line())
    return secret


def ensure_secret() -> bytes:
    """The cluster secret, made now (mode 0600) if there is none: pikerd's first start (or
    ``piker participants add`` on the pikerd host), nobody else."""
    secret = load_secret()
    if secret is not None:
        return secret
    path = secret_path()
    try:
        _write_private(path, (secrets.token_hex(32) + '\n').encode(), exclusive=True)
        log.info('created the cluster secret at %s', path)
    except FileExistsError:  # another process made it meanwhile
        pass
    secret = load_secret()
    assert secret is not None
    return secret


def _local_key(secret: bytes) -> bytes:
    return hmac.new(secret, b'piker-ems participant local', hashlib.sha256).digest()


def _verifier(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- participants -----------------------------------------------------------------------------

def _participants_path() -> Path:
    return config.config_dir() / PARTICIPANTS_FILE


def _load_participants() -> dict[str, dict]:
    path = _participants_path()
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def parse_roles(text: str | Iterable[str]) -> list[str]:
    """``'watch,trade'`` -> ``['watch', 'trade']``; unknown roles are an error."""
    items = [r.strip() for r in (text.split(',') if isinstance(text, str) else text) if r.strip()]
    bad = [r for r in items if r not in ROLES]
    if bad or not items:
        raise ValueError(f'roles must be among {", ".join(ROLES)} (got {", ".join(bad) or "none"})')
    return sorted(set(items), key=ROLES.index)


def add_participant(name: str, roles: Iterable[str]) -> str:
    """Add (or re-key) participant ``name`` with ``roles``; return its new token (shown once)."""
    if not NAME_RE.match(name) or name == LOCAL:
        raise ValueError(f'participant name {name!r}: lowercase letters, digits, - and _ '
                         f'(at most 32, starting with a letter), and not {LOCAL!r}')
    roles = parse_roles(roles)
    ensure_secret()
    token = secrets.token_urlsafe(24)
    table = _load_participants()
    table[name] = {'roles': roles, 'verifier': _verifier(token), 'created': int(time.time())}
    _write_private(_participants_path(), (json.dumps(table, indent=2) + '\n').encode())
    return token


def remove_participant(name: str) -> bool:
    """Remove participant ``name``; return whether it existed."""
    table = _load_participants()
    if table.pop(name, None) is None:
        return False
    _write_private(_participants_path(), (json.dumps(table, indent=2) + '\n').encode())
    return True


def list_participants() -> dict[str, list[str]]:
    """``{name: roles}`` of every participant, ``local`` included."""
    out = {LOCAL: list(ROLES)}
    out.update({name: list(p.get('roles', ())) for name, p in sorted(_load_participants().items())})
    return out


def _participant(name: str) -> tuple[bytes, frozenset[str]] | None:
    """The key and roles a verifier uses for ``name`` (``None``: no such participant)."""
    if name == LOCAL:
        secret = load_secret()
        return None if secret is None else (_local_key(secret), frozenset(ROLES))
    mirror = _mirror()
    if mirror is not None:  # a served service: pikerd's table, not this host's config dir
        return mirror.get(name)
    entry = _load_participants().get(name)
    if entry is None:
        return None
    return bytes.fromhex(entry['verifier']), frozenset(entry.get('roles', ()))


# --- the client's side ------------------------------------------------------------------------

@dataclass(frozen=True)
class Credential:
    """Who this client acts as, and the key it signs with (never sent)."""

    participant: str
    key: bytes = b''

    def __repr__(self) -> str:  # never print the key
        return f'Credential({self.participant!r})'


def credential_for(participant: str | None = None, token: str | None = None) -> Credential:
    """The credential for ``participant`` with ``token``; both unset: the local participant.

    ``$PIKER_EMS_PARTICIPANT`` / ``$PIKER_EMS_TOKEN`` fill in what is not given.
    """
    participant = participant or os.environ.get(ENV_PARTICIPANT) or None
    token = token or os.environ.get(ENV_TOKEN) or None
    if participant in (None, LOCAL) and token is None:
        # whoever can read this host's cluster secret is the local participant; a client never
        # makes one (pikerd does, on its first start)
        return Credential(LOCAL, _local_key(require_secret()))
    if participant is None:
        raise AuthError('a token was given without --participant')
    if token is None:
        raise AuthError(f'participant {participant!r} needs its token (--token or ${ENV_TOKEN})')
    return Credential(participant, bytes.fromhex(_verifier(token)))


_current: contextvars.ContextVar[Credential | None] = contextvars.ContextVar('piker_ems_credential', default=None)


class use_credential:
    """``with use_credential(cred):`` guarded calls made in this task (and the tasks it starts
    afterwards) sign with ``cred``."""

    def __init__(self, cred: Credential) -> None:
        self.cred = cred

    def __enter__(self) -> Credential:
        self._token = _current.set(self.cred)
        return self.cred

    def __exit__(self, *exc: Any) -> None:
        _current.reset(self._token)


def set_default_credential(cred: Credential) -> None:
    """The credential of this context and the tasks started from it (the CLI sets its
    ``--participant``/``--token`` before ``trio.run``, whose tasks inherit it)."""
    _current.set(cred)


def local_credential() -> Credential:
    """The local participant's credential, whatever this process's default is: services and
    pikerd sign their own calls to each other with it (they run where the secret is)."""
    return Credential(LOCAL, _local_key(require_secret()))


def act_as_service() -> None:
    """Called by each service task: calls this actor makes act as the local participant."""
    from ._state import actor_state

    actor_state()['credential'] = local_credential()


def client_credential() -> Credential:
    """The credential in use here (see :class:`use_credential`), else the running service
    actor's own (:func:`act_as_service`), else :func:`credential_for` (env vars, or local)."""
    from ._state import maybe_actor_state

    state = maybe_actor_state()
    return _current.get() or (state or {}).get('credential') or credential_for()


def _mac(key: bytes, participant: str, endpoint: str, ts: float, nonce: str) -> str:
    msg = f'{participant}\n{endpoint}\n{ts!r}\n{nonce}'.encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def make_auth(endpoint: str, cred: Credential | None = None) -> dict:
    """The ``auth`` argument of one call to ``endpoint`` (``'module.function'``)."""
    cred = cred or client_credential()
    ts = time.time()
    nonce = secrets.token_hex(12)
    return {'participant': cred.participant, 'ts': ts, 'nonce': nonce,
            'mac': _mac(cred.key, cred.participant, endpoint, ts, nonce)}


# --- the verifier's side ----------------------------------------------------------------------

@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    participant: str
    roles: frozenset[str]


def _fresh(nonce: str, ts: float) -> bool:
    """Whether ``nonce`` is new to this actor (replays are remembered per actor, for twice
    the accepted clock skew). Outside an actor nothing is remembered (nothing serves RPCs)."""
    from ._state import maybe_actor_state

    state = maybe_actor_state()
    if state is None:
        return True
    seen: dict[str, float] = state.setdefault('auth_nonces', {})
    now = time.time()
    if len(seen) > 10_000:
        for n, t in list(seen.items()):
            if t < now - 2 * MAX_SKEW_S:
                del seen[n]
    if nonce in seen:
        return False
    seen[nonce] = ts
    return True


def verify(auth: Any, endpoint: str, roles: Iterable[str] = ()) -> Principal:
    """Check ``auth`` for a call to ``endpoint`` and that the caller has one of ``roles``.

    Raises :class:`Refused` with one line (naming the participant, never a key) and logs it.
    """
    roles = tuple(roles)
    who = auth.get('participant') if isinstance(auth, dict) else None

    def refuse(why: str) -> Refused:
        log.warning('refused %s for %s: %s', endpoint, who or 'an anonymous caller', why)
        return Refused(f'{endpoint}: {why}')

    if not isinstance(auth, dict) or not isinstance(who, str):
        raise refuse('no credential (a participant and its token are required)')
    try:
        ts = float(auth['ts'])
        nonce = str(auth['nonce'])
        mac = str(auth['mac'])
    except (KeyError, TypeError, ValueError):
        raise refuse('malformed credential') from None
    known = _participant(who)
    if known is None:
        raise refuse(f'unknown participant {who!r}')
    key, granted = known
    if not hmac.compare_digest(_mac(key, who, endpoint, ts, nonce), mac):
        if who == LOCAL:
            raise refuse("not the local participant (this client's cluster secret differs from the service's)")
        raise refuse(f'wrong token for participant {who!r}')
    if abs(time.time() - ts) > MAX_SKEW_S:
        raise refuse(f'credential of {who!r} is stale (clocks more than {MAX_SKEW_S:g}s apart?)')
    if not _fresh(nonce, ts):
        raise refuse(f'credential of {who!r} was replayed')
    if roles and not granted.intersection(roles):
        raise refuse(f'participant {who!r} lacks the {" or ".join(roles)} role')
    return Principal(who, granted)


def endpoint_name(fn: Callable) -> str:
    return f'{fn.__module__}.{fn.__name__}'


def guarded(*roles: str) -> Callable[[Callable], Callable]:
    """Decorate an async RPC function (plain, or a ``@tractor.context`` below this decorator):
    it takes ``auth`` and runs only for a caller with one of ``roles`` (any authenticated
    participant when none are given). ``functools.wraps`` keeps tractor's context marker."""

    def deco(fn: Callable) -> Callable:
        name = endpoint_name(fn)
        takes_principal = 'principal' in inspect.signature(fn).parameters

        @functools.wraps(fn)
        async def wrapper(*args: Any, auth: Any = None, **kwargs: Any) -> Any:
            principal = verify(auth, name, roles)
            if takes_principal:
                kwargs['principal'] = principal
            return await fn(*args, **kwargs)

        return wrapper

    return deco


# --- services prove who they are (no registry poisoning) -------------------------------------

AUTH_MODULE = 'piker_ems.service._auth'
_CHALLENGE_RE = re.compile(r'^[0-9a-f]{32}$')


def _proof(key: bytes, service: str, challenge: str) -> str:
    # 'prove:' can never start a call's MAC message (participant names have no ':')
    return hmac.new(key, f'prove:{service}:{challenge}'.encode(), hashlib.sha256).hexdigest()


async def prove(challenge: str, participant: str) -> str:
    """RPC (every service): answer ``challenge`` for ``participant`` with the key this cluster
    holds for it, which an impostor (a process that merely registered the name) does not have."""
    import tractor

    if not isinstance(challenge, str) or not _CHALLENGE_RE.match(challenge):
        raise Refused('prove: the challenge must be 32 hex digits')
    known = _participant(participant)
    if known is None:
        raise Refused(f'prove: unknown participant {participant!r}')
    return _proof(known[0], tractor.current_actor().name, challenge)


async def is_genuine(portal: Any, name: str, cred: Credential | None = None, timeout: float = 5.0) -> str | None:
    """Challenge the service behind ``portal`` to prove it is this cluster's ``name``.

    Returns ``None`` if it proved it, else why not (one line, for the report).
    """
    import trio

    cred = cred or client_credential()
    challenge = secrets.token_hex(16)
    try:
        with trio.fail_after(timeout):
            answer = await portal.run_from_ns(AUTH_MODULE, 'prove', challenge=challenge,
                                              participant=cred.participant)
    except trio.TooSlowError:
        return f'no answer to the identity challenge within {timeout:g}s'
    except Exception as err:  # noqa: BLE001 - a fake may fail in any way
        return f'the identity challenge failed ({type(err).__name__})'
    if not isinstance(answer, str) or not hmac.compare_digest(answer, _proof(cred.key, name, challenge)):
        return WRONG_ANSWER
    return None


WRONG_ANSWER = 'wrong answer to the identity challenge'


async def call(portal: Any, ns: str, fn: str, cred: Credential | None = None, **kwargs: Any) -> Any:
    """``portal.run_from_ns(ns, fn, **kwargs)`` signed with ``cred`` (default: the one in use)."""
    return await portal.run_from_ns(ns, fn, auth=make_auth(f'{ns}.{fn}', cred), **kwargs)


def refusal(err: BaseException) -> Refused | None:
    """The :class:`Refused` a remote service answered with (as a local exception), if ``err``
    (or a group or chain around it) is one; ``None`` otherwise."""
    from ._specs import remote_error

    return remote_error(err, WatchRefused, Refused)  # type: ignore[return-value]


# --- participants of a service served on another host -------------------------------------
# The participants live in pikerd's config dir. A served service (``piker serve``) gets pikerd's
# table through its supervisor, which fetches it from pikerd every MIRROR_EVERY_S; the
# verifiers travel wrapped (XOR with an HMAC keystream of the cluster secret and a fresh nonce),
# so only a holder of the secret can use them.

MIRROR_EVERY_S = 2.0
_MIRROR_KEY = 'participants_mirror'


def _mirror() -> dict[str, tuple[bytes, frozenset[str]]] | None:
    from ._state import maybe_actor_state

    state = maybe_actor_state()
    return None if state is None else state.get(_MIRROR_KEY)


def _wrap(secret: bytes, nonce: str, name: str, data: bytes) -> bytes:
    pad = hmac.new(secret, f'wrap participant:{nonce}:{name}'.encode(), hashlib.sha256).digest()
    return bytes(a ^ b for a, b in zip(data, pad, strict=True))


@guarded('admin')
async def participants_table(nonce: str) -> dict:
    """RPC (pikerd): every participant's roles and wrapped verifier, for a served service's
    supervisor (admin: it holds the cluster secret)."""
    if not isinstance(nonce, str) or not _CHALLENGE_RE.match(nonce):
        raise Refused('participants_table: the nonce must be 32 hex digits')
    secret = require_secret()
    return {name: {'roles': list(p.get('roles', ())),
                   'wrapped': _wrap(secret, nonce, name, bytes.fromhex(p['verifier'])).hex()}
            for name, p in _load_participants().items()}


async def fetch_participants(portal: Any) -> tuple[str, dict]:
    """``(nonce, table)`` from pikerd's :func:`participants_table` (signed as local)."""
    nonce = secrets.token_hex(16)
    return nonce, await call(portal, AUTH_MODULE, 'participants_table', cred=local_credential(), nonce=nonce)


@guarded('admin')
async def set_participants_mirror(nonce: str, table: dict) -> int:
    """RPC (a served service, from its supervisor): verify callers against ``table`` (pikerd's
    participants, verifiers wrapped with ``nonce``) instead of this host's config dir."""
    from ._state import actor_state

    secret = require_secret()
    mirror = {}
    for name, p in table.items():
        key = _wrap(secret, str(nonce), name, bytes.fromhex(p['wrapped']))
        mirror[name] = (key, frozenset(r for r in p.get('roles', ()) if r in ROLES))
    actor_state()[_MIRROR_KEY] = mirror
    return len(mirror)
