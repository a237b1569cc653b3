# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""The status vocabulary (``clearing/_statuses``): what every ``resp`` means, the open-set rule
for unknown venue statuses, venue status words, and ``Status`` validation."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from piker_ems.clearing import _statuses as S
from piker_ems.clearing._messages import MsgError, Status, parse_ems_msg

#: resp -> (final, error, working, book side, cancelled, filled): the documented table.
MEANING: dict[str, tuple[bool, bool, bool, str | None, bool, bool]] = {
    'dark_submitted':          (False, False, True, 'dark', False, False),
    'alert_submitted':         (False, False, True, 'dark', False, False),
    'dark_triggered':          (False, False, True, 'venue', False, False),
    'broker_submitted':        (False, False, True, 'venue', False, False),
    'broker_partially_filled': (False, False, True, 'venue', False, False),
    'broker_filled':           (False, False, True, 'venue', False, True),
    'broker_disconnected':     (False, False, True, 'venue', False, False),
    'error':                   (False, True, False, None, False, False),
    'alert_triggered':         (True, False, False, None, False, False),
    'dark_cancelled':          (True, False, False, None, True, False),
    'broker_executed':         (True, False, False, None, False, True),
    'broker_cancelled':        (True, False, False, None, True, False),
    'broker_expired':          (True, False, False, None, True, False),
    'broker_closed':           (True, False, False, None, True, False),
    'broker_inactive':         (True, False, False, None, True, False),
    'broker_errored':          (True, True, False, None, False, False),
}


def test_the_table_covers_exactly_the_known_resps():
    assert set(MEANING) == set(S.KNOWN_RESPS)
    assert S.FINAL_RESPS == {r for r, m in MEANING.items() if m[0]}
    assert S.FINAL_RESPS <= S.KNOWN_RESPS
    for name in S.__all__:
        if name.isupper() and isinstance(getattr(S, name), str) and name != 'VENUE_STATUS_RE':
            assert getattr(S, name) in S.KNOWN_RESPS, name


@pytest.mark.parametrize('resp', sorted(MEANING))
def test_known_resp_meaning(resp):
    final, error, working, side, cancelled, filled = MEANING[resp]
    assert S.is_known(resp)
    assert S.is_valid_resp(resp)
    assert S.is_final(resp) is final
    assert S.is_error(resp) is error
    assert S.is_working(resp) is working
    assert S.book_side(resp) == side
    assert S.is_cancelled(resp) is cancelled
    assert S.is_filled(resp) is filled
    # a final status is never working, and lives on no side of the book
    if final:
        assert not working and side is None


@pytest.mark.parametrize('resp', [
    'broker_held', 'broker_pending_risk_check', 'broker_x', 'broker_' + 'a' * 32,
    'broker_suspended', 'broker_replaced',
])
def test_unknown_broker_resp_is_open_set_notice(resp):
    """The open-set rule: an unknown well-formed ``broker_<x>`` is non-final, non-error,
    working, at the venue."""
    assert S.is_valid_resp(resp)
    assert not S.is_known(resp)
    assert not S.is_final(resp)
    assert not S.is_error(resp)
    assert S.is_working(resp)
    assert S.book_side(resp) == 'venue'
    assert not S.is_cancelled(resp) and not S.is_filled(resp)


@pytest.mark.parametrize('resp', [
    '', 'broker_', 'broker_foo bar', 'broker_Held', 'broker_9', 'broker_' + 'a' * 33,
    'broker_held!', 'broker_a-b', 'held', 'dark_foo', 'alert_fired', 'ERROR', 'errored',
    ' broker_held', 'status', 'broker_he\nld',
])
def test_invalid_resps(resp):
    assert not S.is_valid_resp(resp)
    assert not S.is_known(resp)


@pytest.mark.parametrize('resp', ['broker_held\n', 'broker_submitted_\n'])
def test_trailing_newline_is_not_a_valid_resp(resp):
    assert not S.is_valid_resp(resp)


@pytest.mark.parametrize('word,remaining,resp', [
    ('submitted', None, 'broker_submitted'),
    ('open', None, 'broker_submitted'),
    ('accepted', 0.0, 'broker_submitted'),
    ('new', None, 'broker_submitted'),
    ('PreSubmitted', None, 'broker_submitted'),
    ('working', None, 'broker_submitted'),
    ('filled', None, 'broker_executed'),
    ('filled', 0.0, 'broker_executed'),
    ('filled', -1.0, 'broker_executed'),
    ('filled', 2.5, 'broker_partially_filled'),
    ('Filled', 1e-9, 'broker_partially_filled'),
    ('partially_filled', None, 'broker_partially_filled'),
    ('partially_filled', 3.0, 'broker_partially_filled'),
    ('cancelled', None, 'broker_cancelled'),
    ('canceled', 4.0, 'broker_cancelled'),
    ('CANCELLED', None, 'broker_cancelled'),
    ('expired', None, 'broker_expired'),
    ('closed', None, 'broker_closed'),
    ('inactive', None, 'broker_inactive'),
    ('rejected', None, 'broker_errored'),
    ('error', None, 'broker_errored'),
    ('  submitted  ', None, 'broker_submitted'),
    # well-formed unknown words: the open set
    ('held', None, 'broker_held'),
    ('Pending_Risk_Check', None, 'broker_pending_risk_check'),
    ('a' * 32, None, 'broker_' + 'a' * 32),
])
def test_venue_status_resp(word, remaining, resp):
    got = S.venue_status_resp(word, remaining)
    assert got == resp
    assert S.is_valid_resp(got)


@pytest.mark.parametrize('word', [
    'foo bar!', '', '   ', 'a' * 33, '9lives', 'filled!', 'a-b', 'hé', 'x.y', '_held',
    'held\x00', 'partially filled',
])
def test_malformed_venue_status_is_none(word):
    assert S.venue_status_resp(word) is None
    assert S.venue_status_resp(word, 1.0) is None


def test_venue_words_map_to_known_resps():
    for word, resp in S.VENUE_STATUS_RESPS.items():
        assert S.is_known(resp), word
        assert S.VENUE_STATUS_RE.match(word), word
        assert S.venue_status_resp(word) == resp


def test_final_cancel_synonyms_are_final_not_error():
    for word in ('cancelled', 'canceled', 'expired', 'closed', 'inactive'):
        resp = S.venue_status_resp(word)
        assert S.is_final(resp) and S.is_cancelled(resp) and not S.is_error(resp)


def _status(resp: str) -> Status:
    return Status(oid='oid-1', resp=resp)


@pytest.mark.parametrize('resp', sorted(S.KNOWN_RESPS) + ['broker_held', 'broker_suspended'])
def test_status_accepts_valid_resps(resp):
    assert _status(resp).resp == resp
    msg = parse_ems_msg({'name': 'status', 'oid': 'oid-1', 'resp': resp})
    assert isinstance(msg, Status) and msg.resp == resp


@pytest.mark.parametrize('resp', [
    '', 'foo', 'broker_', 'broker_foo bar!', 'broker_Held', 'dark_foo', 'broker_' + 'a' * 33,
])
def test_status_refuses_invalid_resps(resp):
    with pytest.raises(ValidationError, match='resp'):
        _status(resp)
    with pytest.raises(MsgError, match='resp'):
        parse_ems_msg({'name': 'status', 'oid': 'oid-1', 'resp': resp})


@pytest.mark.parametrize('word', ['submitted', 'filled', 'held', 'cancelled', 'rejected'])
def test_every_mapped_venue_word_makes_a_valid_status(word):
    for remaining in (None, 0.0, 1.0):
        assert _status(S.venue_status_resp(word, remaining)).resp
