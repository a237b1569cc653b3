# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
The status vocabulary: what every ``Status.resp`` value means, decided here once.

emsd's order state machine (:mod:`._machine`) is the only producer of statuses; the router, the
chart, the CLI, bots and the tests all read them through the predicates below instead of
keeping their own lists (they used to, and disagreed on which statuses end an order).

Meanings:

=====================  =======  =====  ===========================================
resp                   final    error  what happened
=====================  =======  =====  ===========================================
dark_submitted         no       no     a dark buy/sell rests in emsd (also re-armed by a modify)
alert_submitted        no       no     an alert rests in emsd
dark_triggered         no       no     the market crossed a dark order; it goes to the venue
broker_submitted       no       no     the venue works the order (also: a modify was accepted)
broker_partially_filled no      no     the venue reports progress; the order keeps working
broker_filled          no       no     one execution (``brokerd_msg`` has size and price)
broker_disconnected    no       no     the venue's dialogue was lost: emsd reconnects and reconciles
                                       (the venue is the truth); the order's next status says how
                                       it stands
error                  no       yes    a *request* was refused (bad field, unknown oid, not yours,
                                       a cancel or modify the venue refused); the order, if it
                                       exists, is unchanged and keeps its own statuses
alert_triggered        yes      no     an alert fired
dark_cancelled         yes      no     a dark order or alert was cancelled before it fired
broker_executed        yes      no     fully filled
broker_cancelled       yes      no     cancelled at the venue
broker_expired         yes      no     the venue ended it (time in force)
broker_closed          yes      no     the venue closed it without a fill
broker_inactive        yes      no     the venue deactivated it
broker_errored         yes      yes    the venue refused or failed the order, or it was lost
                                       with its venue; it is not working anywhere
=====================  =======  =====  ===========================================

**Every oid gets exactly one final status, and nothing after it.**

Backend statuses are an open set: a venue may report a status this module does not know.
The one rule for those: the state machine relays a well-formed unknown venue status
(:data:`VENUE_STATUS_RE`) as a *non-final, non-error, working* ``broker_<status>`` notice that
changes nothing, and :func:`is_final` / :func:`is_error` / :func:`is_working` say exactly that
for any ``broker_<x>`` they do not know. A malformed status string is refused as an illegal
venue event (logged and counted, never relayed).
"""
from __future__ import annotations

import re
from typing import Literal

__all__ = [
    'ALERT_SUBMITTED',
    'ALERT_TRIGGERED',
    'BROKER_CANCELLED',
    'BROKER_DISCONNECTED',
    'BROKER_ERRORED',
    'BROKER_EXECUTED',
    'BROKER_FILLED',
    'BROKER_PARTIALLY_FILLED',
    'BROKER_SUBMITTED',
    'DARK_CANCELLED',
    'DARK_SUBMITTED',
    'DARK_TRIGGERED',
    'ERROR',
    'FINAL_RESPS',
    'KNOWN_RESPS',
    'VENUE_STATUS_RE',
    'book_side',
    'is_cancelled',
    'is_error',
    'is_filled',
    'is_final',
    'is_known',
    'is_valid_resp',
    'is_working',
    'venue_status_resp',
]

DARK_SUBMITTED = 'dark_submitted'
ALERT_SUBMITTED = 'alert_submitted'
DARK_TRIGGERED = 'dark_triggered'
ALERT_TRIGGERED = 'alert_triggered'
DARK_CANCELLED = 'dark_cancelled'
BROKER_SUBMITTED = 'broker_submitted'
BROKER_PARTIALLY_FILLED = 'broker_partially_filled'
BROKER_FILLED = 'broker_filled'
BROKER_EXECUTED = 'broker_executed'
BROKER_CANCELLED = 'broker_cancelled'
BROKER_EXPIRED = 'broker_expired'
BROKER_CLOSED = 'broker_closed'
BROKER_INACTIVE = 'broker_inactive'
BROKER_ERRORED = 'broker_errored'
BROKER_DISCONNECTED = 'broker_disconnected'
ERROR = 'error'

BROKER_PREFIX = 'broker_'

#: Statuses after which nothing more is sent for that oid.
FINAL_RESPS: frozenset[str] = frozenset({
    ALERT_TRIGGERED, DARK_CANCELLED, BROKER_EXECUTED, BROKER_CANCELLED, BROKER_EXPIRED,
    BROKER_CLOSED, BROKER_INACTIVE, BROKER_ERRORED,
})
#: Statuses that report a failure (of a request, or of the order itself).
ERROR_RESPS: frozenset[str] = frozenset({ERROR, BROKER_ERRORED})
#: Final statuses that mean "cancelled or ended without a (complete) fill".
CANCELLED_RESPS: frozenset[str] = frozenset({
    DARK_CANCELLED, BROKER_CANCELLED, BROKER_EXPIRED, BROKER_CLOSED, BROKER_INACTIVE,
})
#: Statuses of an order resting in emsd's dark book.
DARK_RESPS: frozenset[str] = frozenset({DARK_SUBMITTED, ALERT_SUBMITTED})
#: Every status this module gives a meaning to.
KNOWN_RESPS: frozenset[str] = frozenset({
    DARK_SUBMITTED, ALERT_SUBMITTED, DARK_TRIGGERED, BROKER_SUBMITTED, BROKER_PARTIALLY_FILLED,
    BROKER_FILLED, BROKER_DISCONNECTED, ERROR,
}) | FINAL_RESPS

#: A venue status string emsd will relay as ``broker_<status>`` when it does not know it.
VENUE_STATUS_RE = re.compile(r'[a-z][a-z_]{0,31}')  # used with fullmatch

#: Venue status words (lowercased) and the canonical resp each stands for.
VENUE_STATUS_RESPS: dict[str, str] = {
    'submitted': BROKER_SUBMITTED,
    'open': BROKER_SUBMITTED,
    'accepted': BROKER_SUBMITTED,
    'new': BROKER_SUBMITTED,
    'presubmitted': BROKER_SUBMITTED,
    'working': BROKER_SUBMITTED,
    'filled': BROKER_EXECUTED,  # with remaining > 0: BROKER_PARTIALLY_FILLED (see the machine)
    'partially_filled': BROKER_PARTIALLY_FILLED,
    'cancelled': BROKER_CANCELLED,
    'canceled': BROKER_CANCELLED,
    'expired': BROKER_EXPIRED,
    'closed': BROKER_CLOSED,
    'inactive': BROKER_INACTIVE,
    'rejected': BROKER_ERRORED,
    'error': BROKER_ERRORED,
}


def is_valid_resp(resp: str) -> bool:
    """Whether ``resp`` may appear on the wire: a known status or a ``broker_<word>``."""
    if resp in KNOWN_RESPS:
        return True
    return resp.startswith(BROKER_PREFIX) and VENUE_STATUS_RE.fullmatch(resp[len(BROKER_PREFIX):]) is not None


def is_known(resp: str) -> bool:
    """Whether this module gives ``resp`` a meaning of its own (else: the open-set rule)."""
    return resp in KNOWN_RESPS


def is_final(resp: str) -> bool:
    """Whether ``resp`` ends the order: nothing more will be sent for its oid."""
    return resp in FINAL_RESPS


def is_error(resp: str) -> bool:
    """Whether ``resp`` reports a failure (``error``: a refused request; ``broker_errored``)."""
    return resp in ERROR_RESPS


def is_cancelled(resp: str) -> bool:
    """Whether ``resp`` is a final status of an order that ended without completing."""
    return resp in CANCELLED_RESPS


def is_filled(resp: str) -> bool:
    """Whether ``resp`` reports an execution (one fill, or the order fully filled)."""
    return resp in (BROKER_FILLED, BROKER_EXECUTED)


def is_working(resp: str) -> bool:
    """Whether the order is alive after ``resp`` (resting dark, or working at a venue).

    ``error`` is not about the order's life (the order keeps its previous state), so it is
    not working here; unknown ``broker_<x>`` statuses are working (the open-set rule).
    """
    return not is_final(resp) and resp != ERROR


def book_side(resp: str) -> Literal['dark', 'venue'] | None:
    """Where an order with last status ``resp`` lives: emsd's dark book, a venue, or nowhere
    (final, or ``error`` which says nothing about the order)."""
    if resp in DARK_RESPS:
        return 'dark'
    if is_final(resp) or resp == ERROR:
        return None
    return 'venue'


def venue_status_resp(status: str, remaining: float | None = None) -> str | None:
    """The resp for a venue's status word, or None if the word is malformed.

    Known words map to their canonical resp; ``filled`` with ``remaining > 0`` is partial
    progress; a well-formed unknown word becomes ``broker_<word>`` (the open-set rule).
    """
    word = status.strip().lower()
    resp = VENUE_STATUS_RESPS.get(word)
    if resp == BROKER_EXECUTED and remaining is not None and remaining > 0:
        return BROKER_PARTIALLY_FILLED
    if resp is not None:
        return resp
    if VENUE_STATUS_RE.fullmatch(word):
        return BROKER_PREFIX + word
    return None
