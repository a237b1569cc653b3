"""Participants, credentials and least-privilege RPC (issue 10, SPEC §12): security regressions."""
from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import tractor
import trio

from piker_ems.clearing import open_ems
from piker_ems.clearing import _ems
from piker_ems.service import Refused, find_service, open_pikerd
from piker_ems.service._auth import (
    AuthError, add_participant, call, credential_for, endpoint_name, list_participants, make_auth, remove_participant,
    secret_path, verify,
)

from _ems_helpers import SIM_CALM, collect_until, ems_stats, last_price, next_status
from _proc import run_cli, start_pikerd, stop_hard
from conftest import free_port, write_config

FQSN = 'btcusd.sim'
SIM_NO_HOOKS = SIM_CALM.replace('test_hooks = true\n', '')
T = 30  # bound on each test body


def refused(excinfo_value: BaseException) -> str:
    """The one line of a refusal raised (possibly inside a group) by a client call."""
    from piker_ems.service._auth import refusal

    found = refusal(excinfo_value)
    assert found is not None, repr(excinfo_value)
    return str(found)


# -- the secret and the participants file ------------------------------------------------------

@pytest.mark.trio
async def test_pikerd_creates_a_private_cluster_secret(reg_addr, config_dir):
    assert not (config_dir / 'cluster.secret').exists()
    with trio.fail_after(T):
        async with open_pikerd(reg_addr):
            path = config_dir / 'cluster.secret'
            assert path.exists() and secret_path() == path
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            first = path.read_text()
        async with open_pikerd(reg_addr):  # a restart keeps it
            assert path.read_text() == first


def test_participants_store_only_a_hash(config_dir):
    token = add_participant('bob', ['trade'])
    path = config_dir / 'participants.json'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in path.read_text()
    assert list_participants() == {'local': ['watch', 'trade', 'control-others', 'admin'], 'bob': ['trade']}
    # a credential made from the token verifies; one from another token does not
    verify(make_auth('x.y', credential_for('bob', token)), 'x.y', ['trade'])
    with pytest.raises(Refused, match="wrong token for participant 'bob'"):
        verify(make_auth('x.y', credential_for('bob', token + 'x')), 'x.y', ['trade'])
    with pytest.raises(Refused, match="lacks the admin role"):
        verify(make_auth('x.y', credential_for('bob', token)), 'x.y', ['admin'])
    # a credential is for one endpoint, once (replays are remembered by the serving actor)
    auth = make_auth('x.y', credential_for('bob', token))
    with pytest.raises(Refused, match='wrong token'):
        verify(auth, 'x.other', ['trade'])

    async def in_an_actor():
        async with tractor.open_root_actor(name='t', arbiter_addr=('127.0.0.1', free_port()), loglevel='critical'):
            verify(auth, 'x.y', ['trade'])
            with pytest.raises(Refused, match='replayed'):
                verify(auth, 'x.y', ['trade'])

    trio.run(in_an_actor)
    with pytest.raises(AuthError, match='needs its token'):
        credential_for('bob')
    assert remove_participant('bob') and 'bob' not in list_participants()
    with pytest.raises(Refused, match="unknown participant 'bob'"):
        verify(make_auth('x.y', credential_for('bob', token)), 'x.y', ['trade'])
    with pytest.raises(Refused, match='no credential'):
        verify(None, 'x.y')


def test_cli_participants_add_list_remove(config_dir):
    out = run_cli('participants', 'add', 'bob', '--roles', 'watch,trade')
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert len(token) > 20 and token not in (config_dir / 'participants.json').read_text()
    listed = run_cli('participants', 'list')
    assert 'bob' in listed.stdout and 'watch,trade' in listed.stdout and 'local' in listed.stdout
    bad = run_cli('participants', 'add', 'eve', '--roles', 'root')
    assert bad.returncode == 2 and 'roles must be among' in bad.stderr
    assert run_cli('participants', 'remove', 'bob').returncode == 0
    assert 'bob' not in run_cli('participants', 'list').stdout


# -- acting as a participant -------------------------------------------------------------------

@pytest.mark.trio
async def test_acting_as_another_participant_needs_its_token(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    bob = add_participant('bob', ['trade'])
    with trio.fail_after(T):
        async with open_pikerd(reg_addr):
            last = await last_price()
            with pytest.raises(AuthError, match='needs its token'):
                async with open_ems(FQSN, mode='dark', name='x', participant='bob'):
                    pass
            with pytest.raises(BaseException) as err:
                async with open_ems(FQSN, mode='dark', name='x', participant='bob', token='nope'):
                    pass
            assert "wrong token for participant 'bob'" in refused(err.value)
            async with open_portal_to_emsd() as portal:  # a hostile client sending no credential
                with pytest.raises(BaseException) as err:
                    async with portal.open_context(_ems._emsd_main, fqsn=FQSN, client='bob'):
                        pass
                assert 'no credential' in refused(err.value)

            async with (
                open_ems(FQSN, mode='dark', name='bot', participant='bob', token=bob) as (b_book, b_trades, _),
                open_ems(FQSN, mode='dark', name='bob') as (l_book, l_trades, _),
            ):
                assert b_book.owner == 'bob/bot' and l_book.owner == 'bob'
                oid = b_book.send('buy', round(last - 5, 2), 1)
                st = await next_status(b_trades, oid)
                assert st.resp == 'dark_submitted' and st.owner == 'bob/bot'
                # a local client labelled 'bob' is not participant bob: its cancel is refused
                # and the refusal names nothing but the oid
                l_book.cancel(oid)
                no = await next_status(l_trades, oid)
                assert no.resp == 'error' and no.req is None and no.owner in (None, 'bob')
                assert no.reason == f'order {oid} is not yours to cancel'
                assert (await ems_stats())['dark'] == 1
            # labels cannot spell another participant's owner string
            with pytest.raises(BaseException) as err:
                async with open_ems(FQSN, mode='dark', name='bob/bot'):
                    pass
            assert 'may not contain "/"' in str(err.value) or 'may not contain' in repr(err.value)


@pytest.mark.trio
async def test_control_and_watch_are_granted_by_role_only(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    bob = add_participant('bob', ['trade'])
    eve = add_participant('eve', ['watch'])
    mo = add_participant('mo', ['watch', 'trade'])
    with trio.fail_after(T):
        async with open_pikerd(reg_addr):
            last = await last_price()
            with pytest.raises(BaseException) as err:
                async with open_ems(FQSN, name='m', participant='bob', token=bob,
                                    watch='symbol', control_others=True):
                    pass
            assert "participant 'bob' may not watch" in refused(err.value)
            with pytest.raises(BaseException) as err:
                async with open_ems(FQSN, name='m', participant='eve', token=eve,
                                    watch='symbol', control_others=True):
                    pass
            assert "participant 'eve' may not control other clients' orders" in refused(err.value)
            async with (
                open_ems(FQSN, mode='dark', name='a', participant='bob', token=bob) as (a_book, a_trades, _),
                open_ems(FQSN, mode='dark', name='w', participant='eve', token=eve, watch='symbol') as (e_book, e_trades, _),
            ):
                oid = a_book.send('sell', round(last + 5, 2), 1)
                assert (await next_status(a_trades, oid)).resp == 'dark_submitted'
                assert (await next_status(e_trades, oid)).owner == 'bob/a'
                e_book.cancel(oid)   # watch-only: may not touch any order
                no = await next_status(e_trades, oid)
                assert no.resp == 'error' and no.req is None and 'may not trade' in no.reason
                mine = e_book.send('buy', round(last - 5, 2), 1)  # nor place one
                no = await next_status(e_trades, mine)
                assert no.resp == 'error' and 'may not trade' in no.reason
                async with open_ems(FQSN, mode='dark', name='w', participant='mo', token=mo,
                                    watch='symbol') as (m_book, m_trades, _):
                    m_book.cancel(oid)   # a trading watcher without control-others
                    no = (await collect_until(m_trades, {'error'}, oid))[-1]
                    assert no.resp == 'error' and no.req is None and no.owner is None
                    assert no.reason == f'order {oid} is not yours to cancel'
                # without the watch role, asking to watch is refused (never silently narrowed)
                for scope in ('symbol', 'all'):
                    with pytest.raises(BaseException) as err:
                        async with open_ems(FQSN, mode='dark', name='c', participant='bob', token=bob,
                                            watch=scope):
                            pass
                    assert "participant 'bob' may not watch other clients' orders (no watch role)" in refused(err.value)
                a_book.cancel(oid)
                assert (await next_status(a_trades, oid)).resp == 'dark_cancelled'
                stats = await ems_stats()
                assert stats['dark'] == 0


# -- least-privilege RPC -----------------------------------------------------------------------

class open_portal_to_emsd:
    async def __aenter__(self):
        self._cm = find_service('emsd')
        portal = await self._cm.__aenter__()
        if portal is None:
            from piker_ems.service import maybe_open_emsd
            await self._cm.__aexit__(None, None, None)
            self._cm = maybe_open_emsd()
            portal = await self._cm.__aenter__()
        return portal

    async def __aexit__(self, *exc):
        return await self._cm.__aexit__(*exc)


@pytest.mark.trio
async def test_operator_and_test_calls_need_the_role(reg_addr, config_dir):
    write_config(config_dir, SIM_CALM)
    bob = credential_for('bob', add_participant('bob', ['trade', 'watch']))
    with trio.fail_after(T):
        async with open_pikerd(reg_addr) as services:
            last = await last_price()
            async with open_portal_to_emsd():
                pass
            assert 'emsd' in services.list()
            async with find_service('pikerd') as pikerd:
                for cred in (bob, None):
                    with pytest.raises(tractor.RemoteActorError, match='Refused'):
                        if cred is None:  # no credential at all
                            await pikerd.run_from_ns('piker_ems.service._daemon', 'cancel_service', name='emsd')
                        else:
                            await call(pikerd, 'piker_ems.service._daemon', 'cancel_service', cred, name='emsd')
            assert 'emsd' in services.list()
            async with find_service('brokerd.sim') as brokerd:
                with pytest.raises(tractor.RemoteActorError, match="lacks the admin role"):
                    await call(brokerd, 'piker_ems.brokers.sim', 'set_price', bob, symbol='btcusd', price=1.0)
                with pytest.raises(tractor.RemoteActorError, match='Refused'):
                    await brokerd.run_from_ns('piker_ems.brokers.sim', 'set_price', symbol='btcusd', price=1.0)
            assert await last_price() > 1.0
            # the service-to-service endpoints: a participant cannot open the venue dialogue
            # (its orders would bypass emsd), a second Router, or a feed without a credential
            from piker_ems.brokers import sim
            from piker_ems.data import _brokerd
            async with find_service('brokerd.sim') as brokerd:
                for endpoint, kw in ((sim.trades_dialogue, {'auth': make_auth(endpoint_name(sim.trades_dialogue), bob)}),
                                     (_brokerd.open_feed_stream, {'symbols': ['btcusd'], 'subscriber': 'x'})):
                    with pytest.raises(BaseException) as err:
                        async with brokerd.open_context(endpoint, **kw):
                            pass
                    assert refused(err.value)
            async with find_service('emsd') as emsd:
                with pytest.raises(BaseException) as err:
                    async with emsd.open_context(_ems._setup_persistent_emsd,
                                                 auth=make_auth(endpoint_name(_ems._setup_persistent_emsd), bob)):
                        pass
                assert 'lacks the admin role' in refused(err.value)
            async with find_service('emsd') as emsd:
                with pytest.raises(tractor.RemoteActorError, match="lacks the admin role"):
                    await call(emsd, 'piker_ems.clearing._ems', 'ems_stats', bob)
            # the local participant (admin) may
            async with find_service('brokerd.sim') as brokerd:
                await call(brokerd, 'piker_ems.brokers.sim', 'set_price', symbol='btcusd', price=round(last + 1, 2))
            async with find_service('pikerd') as pikerd:
                assert await call(pikerd, 'piker_ems.service._daemon', 'cancel_service', name='emsd') is True


@pytest.mark.trio
async def test_sim_test_hooks_are_off_unless_configured(reg_addr, config_dir):
    write_config(config_dir, SIM_NO_HOOKS)
    with trio.fail_after(T):
        async with open_pikerd(reg_addr):
            before = await last_price()
            async with find_service('brokerd.sim') as brokerd:
                for fn, kw in (('set_price', {'symbol': 'btcusd', 'price': 1.0}), ('exchange_stats', {})):
                    with pytest.raises(tractor.RemoteActorError, match='test hook'):
                        await call(brokerd, 'piker_ems.brokers.sim', fn, **kw)
            assert abs(await last_price() - before) < before / 2  # never moved to 1.0


# -- the CLI user's path -----------------------------------------------------------------------

def test_cli_order_as_participant(reg_addr, config_dir, tmp_path):
    write_config(config_dir, SIM_CALM)
    pikerd = start_pikerd(reg_addr[1], tmp_path / 'pikerd.log')
    try:
        token = run_cli('participants', 'add', 'bob', '--roles', 'trade').stdout.strip()
        args = ('--port', str(reg_addr[1]), 'order', 'alert', FQSN, '--price', '1', '--detach')
        no = run_cli(*args, '--participant', 'bob')
        assert no.returncode == 1 and len(no.stderr.strip().splitlines()) == 1, no.stderr
        assert no.stderr.startswith('error: ') and 'needs its token' in no.stderr
        wrong = run_cli(*args, '--participant', 'bob', '--token', 'x' * 32)
        assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
        assert "wrong token for participant 'bob'" in wrong.stderr
        assert 'x' * 32 not in wrong.stderr + (tmp_path / 'pikerd.log').read_text()
        ok = subprocess.run(
            [*_piker(), *args, '--participant', 'bob'], capture_output=True, text=True, timeout=30,
            env={**os.environ, 'PIKER_EMS_TOKEN': token}, stdin=subprocess.DEVNULL,
        )
        assert ok.returncode == 0, ok.stderr
        assert 'by bob/piker' in ok.stdout
        assert token not in ok.stdout + ok.stderr + (tmp_path / 'pikerd.log').read_text()
    finally:
        stop_hard(pikerd)


def test_a_client_without_the_secret_makes_none_and_says_how_to_get_one(reg_addr, config_dir, tmp_path):
    """A client on another host (its own config dir, no secret) never makes a cluster secret of
    its own: without --participant it is told, in one line, it has no credential for that
    cluster and how to get one; with --participant/--token (``piker quote`` too) it works."""
    write_config(config_dir, SIM_CALM)
    pikerd = start_pikerd(reg_addr[1], tmp_path / 'pikerd.log')
    try:
        token = run_cli('participants', 'add', 'viewer', '--roles', 'watch').stdout.strip()
        elsewhere = tmp_path / 'host-b'
        elsewhere.mkdir()
        env = {k: v for k, v in os.environ.items()
               if k not in ('PIKER_EMS_SECRET_FILE', 'PIKER_EMS_PARTICIPANT', 'PIKER_EMS_TOKEN')}
        env['PIKER_EMS_CONFIG_DIR'] = str(elsewhere)

        def piker(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([*_piker(), '--port', str(reg_addr[1]), *args], capture_output=True, text=True,
                                  timeout=60, env=env, stdin=subprocess.DEVNULL)

        expected = (f'error: no credential for the cluster at 127.0.0.1:{reg_addr[1]}: no cluster secret at '
                    f'{elsewhere / "cluster.secret"}; copy it from the pikerd host (README "Several machines") '
                    f'or give --participant NAME --token TOKEN')
        for args in (('order', 'alert', FQSN, '--price', '1', '--detach'), ('quote', FQSN, '-n', '1'), ('services',)):
            proc = piker(*args)
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert proc.stderr.splitlines() == [expected], proc.stderr
        assert not (elsewhere / 'cluster.secret').exists()
        # the way out it names: a participant and its token
        quote = piker('quote', FQSN, '-n', '1', '--json', '--participant', 'viewer', '--token', token)
        assert quote.returncode == 0, quote.stderr
        assert [json.loads(line)['fqsn'] for line in quote.stdout.splitlines()] == [FQSN]
        nope = piker('quote', FQSN, '-n', '1', '--participant', 'viewer')
        assert nope.returncode == 1 and nope.stderr.splitlines() == [
            "error: participant 'viewer' needs its token (--token or $PIKER_EMS_TOKEN)"], nope.stderr
        listed = piker('services', '--participant', 'viewer', '--token', token)
        assert listed.returncode == 0 and 'pikerd' in listed.stdout, listed.stderr
        assert not (elsewhere / 'cluster.secret').exists()
    finally:
        stop_hard(pikerd)


def _piker() -> list[str]:
    from _proc import script

    return [script('piker')]



# -- no registry poisoning ---------------------------------------------------------------------

@pytest.mark.trio
async def test_an_impostor_service_is_never_used_and_is_reported(reg_addr, config_dir, tmp_path, caplog):
    import sys

    from piker_ems.service import list_registry

    write_config(config_dir, SIM_CALM)
    other = tmp_path / 'other-config'
    other.mkdir()
    with trio.fail_after(T):
        async with open_pikerd(reg_addr):
            last = await last_price()
            async with open_ems(FQSN, mode='dark', name='a') as (book, trades, _):
                pass  # the genuine emsd runs
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).parent / '_impostor.py'), str(reg_addr[1]), 'emsd'],
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                env={**os.environ, 'PIKER_EMS_CONFIG_DIR': str(other)},
            )
            try:
                fake = (await trio.to_thread.run_sync(proc.stdout.readline)).strip()
                # (it prints its uid once registered: tractor registers before the root opens)
                assert f'emsd.{fake}' in await list_registry(reg_addr)
                async with find_service('emsd') as portal:  # the newest entry is the impostor's
                    assert portal is not None and portal.channel.uid[1] != fake
                assert any(f"('emsd', '{fake}')" in r.getMessage() and 'not a genuine emsd' in r.getMessage()
                           for r in caplog.records)
                async with open_ems(FQSN, mode='dark', name='a') as (book, trades, _):
                    oid = book.send('buy', round(last - 5, 2), 1)
                    assert (await next_status(trades, oid)).resp == 'dark_submitted'
                    assert (await ems_stats())['dark'] == 1  # in the genuine emsd
            finally:
                proc.kill()
                proc.wait()
