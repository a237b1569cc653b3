"""The service tree: pikerd, its Services, registry lookups and find-or-spawn helpers."""
from ._auth import AuthError, Credential, Refused, credential_for
from ._cache import SharedCache
from ._daemon import Services, local_services, maybe_open_pikerd, open_pikerd
from ._registry import find_service, list_registry, registry_is_up, wait_for_service
from ._spawn import maybe_open_emsd, maybe_spawn_brokerd, maybe_spawn_daemon
from ._specs import PikerdError, ServiceDown, ServiceSpec, service_spec

__all__ = [
    'AuthError', 'Credential', 'PikerdError', 'Refused', 'credential_for', 'ServiceDown', 'ServiceSpec', 'Services', 'SharedCache', 'find_service', 'list_registry',
    'local_services', 'maybe_open_emsd', 'maybe_open_pikerd', 'maybe_spawn_brokerd',
    'maybe_spawn_daemon', 'open_pikerd', 'registry_is_up', 'service_spec', 'wait_for_service',
]
