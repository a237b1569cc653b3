# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
The ``[binance]`` section of ``piker_ems.toml``: keys, test network, URL overrides.

::

    [binance]
    api_key = "..."        # or env PIKER_EMS_BINANCE_API_KEY (the environment wins)
    secret = "..."         # or env PIKER_EMS_BINANCE_SECRET
    testnet = true         # the spot test network (testnet.binance.vision)
    rest_url = "http://127.0.0.1:9999"            # replaces https://api.binance.com
    ws_url = "ws://127.0.0.1:9999/ws"             # replaces wss://stream.binance.com:9443/ws
    ws_api_url = "ws://127.0.0.1:9999/ws-api/v3"  # replaces wss://ws-api.binance.com:443/ws-api/v3

Explicit URLs win over ``testnet``. The key and secret are kept out of ``repr()`` so that no
log line, error or service listing can print them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ...config import load_config

__all__ = ['BinanceSettings', 'ENV_KEY', 'ENV_SECRET', 'load_settings']

ENV_KEY = 'PIKER_EMS_BINANCE_API_KEY'
ENV_SECRET = 'PIKER_EMS_BINANCE_SECRET'

LIVE_URLS = {
    'rest_url': 'https://api.binance.com',
    'ws_url': 'wss://stream.binance.com:9443/ws',
    'ws_api_url': 'wss://ws-api.binance.com:443/ws-api/v3',
}
TESTNET_URLS = {
    'rest_url': 'https://testnet.binance.vision',
    'ws_url': 'wss://stream.testnet.binance.vision/ws',
    'ws_api_url': 'wss://ws-api.testnet.binance.vision/ws-api/v3',
}


class SettingsError(ValueError):
    """The ``[binance]`` section is malformed."""


@dataclass(frozen=True)
class BinanceSettings:
    rest_url: str
    ws_url: str
    ws_api_url: str
    testnet: bool = False
    api_key: str = field(default='', repr=False)
    secret: str = field(default='', repr=False)

    @property
    def has_keys(self) -> bool:
        return bool(self.api_key and self.secret)


def load_settings() -> BinanceSettings:
    """Read ``[binance]`` (and the key environment variables) into settings."""
    section = load_config().get('binance') or {}
    if not isinstance(section, dict):
        raise SettingsError('[binance] in piker_ems.toml must be a table')
    testnet = section.get('testnet', False)
    if not isinstance(testnet, bool):
        raise SettingsError('[binance] testnet must be true or false')
    urls = dict(TESTNET_URLS if testnet else LIVE_URLS)
    for key in urls:
        value = section.get(key)
        if value is not None:
            if not isinstance(value, str) or '://' not in value:
                raise SettingsError(f'[binance] {key} must be a URL string')
            urls[key] = value.rstrip('/')
    api_key = os.environ.get(ENV_KEY) or section.get('api_key') or ''
    secret = os.environ.get(ENV_SECRET) or section.get('secret') or ''
    if not isinstance(api_key, str) or not isinstance(secret, str):
        raise SettingsError('[binance] api_key and secret must be strings')
    return BinanceSettings(testnet=testnet, api_key=api_key, secret=secret, **urls)
