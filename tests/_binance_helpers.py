"""The fake Binance exchange as a test fixture: a subprocess on a free port, the ``[binance]``
config pointing brokerd.binance at it, and its control API."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import trio

FAKE = Path(__file__).with_name('_fake_binance.py')
KEY, SECRET = 'test-key-9f3a', 'test-secret-51c7e0'


@dataclass
class FakeBinance:
    url: str
    proc: subprocess.Popen

    @property
    def host(self) -> str:
        return self.url.split('//', 1)[1]

    def config(self, keys: bool = True, extra: str = '') -> str:
        text = (f'[binance]\nrest_url = "{self.url}"\nws_url = "ws://{self.host}/ws"\n'
                f'ws_api_url = "ws://{self.host}/ws-api/v3"\n')
        if keys:
            text += f'api_key = "{KEY}"\nsecret = "{SECRET}"\n'
        return text + extra

    def ctl_sync(self, path: str, body: dict | None = None, timeout: float = 10) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + '/_fake/' + path, data=data,
                                     method='POST' if data is not None else 'GET')
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    async def ctl(self, path: str, body: dict | None = None) -> dict:
        return await trio.to_thread.run_sync(self.ctl_sync, path, body)

    async def quote(self, bid: float, ask: float | None = None, **sizes: float) -> dict:
        body = {'bid': bid, **sizes}
        if ask is not None:
            body['ask'] = ask
        return await self.ctl('quote', body)

    def wait_subscribed(self, *streams: str, timeout: float = 30) -> dict:
        """Block until every one of ``streams`` is subscribed (``'user'``: a user-data
        stream; an HTTP 408 error after ``timeout`` seconds)."""
        return self.ctl_sync('subscribed', {'streams': list(streams), 'timeout': timeout}, timeout + 5)

    async def subscribed(self, *streams: str, timeout: float = 30) -> dict:
        return await trio.to_thread.run_sync(lambda: self.wait_subscribed(*streams, timeout=timeout))

    async def state(self) -> dict:
        return await self.ctl('state')


def start_fake(rate: float = 0.0, port: int = 0) -> FakeBinance:
    proc = subprocess.Popen(
        [sys.executable, str(FAKE), '--port', str(port), '--rate', str(rate),
         '--api-key', KEY, '--secret', SECRET],
        stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()  # 'listening on http://127.0.0.1:<port>'
    if not line.startswith('listening on '):
        proc.kill()
        raise RuntimeError(f'fake binance did not start: {line!r}')
    return FakeBinance(line.split()[-1], proc)


def stop_fake(fake: FakeBinance) -> None:
    fake.proc.terminate()
    try:
        fake.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        fake.proc.kill()
        fake.proc.wait()
