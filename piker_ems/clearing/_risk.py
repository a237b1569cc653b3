# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""Pre-trade risk: limits as data, trading states, and the checks emsd runs before it accepts.

Pure and synchronous (no trio, no I/O; time from the Router's injected clock) so every decision
is unit-testable. emsd's service task owns one :class:`RiskEngine` and hands it to the Router,
which asks it before an order is accepted: dark orders at submit *and* again when they trigger,
live orders at submit and at every modify, and every cancel for the participant's cancel rate.
A refusal is a one-line reason naming the limit and its value (``risk: max_order_size 5 ...``);
the Router answers it as an ``error`` status and nothing reaches the venue.

Limits (``[risk]`` of ``piker_ems.toml``, then ``[risk.accounts.<account>]``, then
``[risk.accounts.<account>.symbols."<fqsn>"]``; a later table overrides an earlier one)::

    max_order_size      largest size of one order (in the symbol's units)
    max_order_notional  largest price * size of one order
    max_long            largest long position after the order (counting open orders)
    max_short           largest short position (a positive number) after the order
    max_open_orders     most orders not yet done in the account (dark, live and alerts)
    order_rate          new orders and modifies per second per participant (token bucket) ...
    order_burst         ... with this many in a burst (default: 2 x order_rate)
    cancel_rate         cancels per second per participant, with ``cancel_burst``
    price_band_pct      a live limit farther than this % from the last price is refused
                        (default 50: catches a 2x or 10x typo, never a real order; 0 = off)

Every other limit is off unless configured (a newcomer's orders are only bounded by the price
band and emsd's hard sanity caps in ``_router``); turning them on is one table in the config.

Trading states, per account and cluster-wide (``*``): ``active`` (default), ``reducing`` (only
orders that shrink the position are accepted) and ``halted`` (nothing new; cancels still work).
The stricter of the account's and the cluster's state applies. The Router journals them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Mapping

__all__ = [
    'ACTIVE',
    'CLUSTER',
    'DEFAULT_PRICE_BAND_PCT',
    'HALTED',
    'REDUCING',
    'STATES',
    'Limits',
    'RiskEngine',
    'TokenBucket',
    'parse_limits',
]

#: The fat-finger guard every account has unless configured (``price_band_pct = 0``: off).
DEFAULT_PRICE_BAND_PCT = 50.0

ACTIVE = 'active'
REDUCING = 'reducing'
HALTED = 'halted'
#: States by strictness (a later one is stricter).
STATES = (ACTIVE, REDUCING, HALTED)
#: The scope of the cluster-wide state.
CLUSTER = '*'


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one account (and symbol); ``None`` is no limit (the price band: 0)."""

    max_order_size: float | None = None
    max_order_notional: float | None = None
    max_long: float | None = None
    max_short: float | None = None
    max_open_orders: int | None = None
    order_rate: float | None = None
    order_burst: float | None = None
    cancel_rate: float | None = None
    cancel_burst: float | None = None
    price_band_pct: float = DEFAULT_PRICE_BAND_PCT

    @property
    def needs_position(self) -> bool:
        return self.max_long is not None or self.max_short is not None


_NAMES = tuple(f.name for f in fields(Limits))


def _limit_values(table: Mapping[str, Any], where: str) -> dict[str, float]:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            continue
        if key not in _NAMES:
            raise ValueError(f'{where}: unknown risk limit {key!r} (known: {", ".join(_NAMES)})')
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f'{where}.{key}: must be a number >= 0, got {value!r}')
        out[key] = float(value)
    return out


def parse_limits(table: Mapping[str, Any] | None) -> dict[tuple[str | None, str | None], Limits]:
    """``[risk]`` of the config -> limits per (account, fqsn) scope, ``None`` meaning any.

    Raises ValueError (naming the key) for an unknown limit or a bad value, so a typo never
    silently leaves a limit off.
    """
    table = table or {}
    base = _limit_values(table, 'risk')
    out = {(None, None): Limits(**base)}
    accounts = table.get('accounts') or {}
    if not isinstance(accounts, dict):
        raise ValueError('risk.accounts: must be a table of accounts')
    for account, acct in accounts.items():
        if not isinstance(acct, dict):
            raise ValueError(f'risk.accounts.{account}: must be a table')
        merged = {**base, **_limit_values(acct, f'risk.accounts.{account}')}
        out[(account, None)] = Limits(**merged)
        symbols = acct.get('symbols') or {}
        for fqsn, sym in symbols.items():
            if not isinstance(sym, dict):
                raise ValueError(f'risk.accounts.{account}.symbols.{fqsn}: must be a table')
            where = f'risk.accounts.{account}.symbols.{fqsn}'
            out[(account, fqsn.lower())] = Limits(**{**merged, **_limit_values(sym, where)})
    return out


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; one request takes one token."""

    __slots__ = ('rate', 'burst', 'tokens', 'at_ns')

    def __init__(self, rate: float, burst: float, now_ns: int) -> None:
        self.rate, self.burst = rate, max(burst, 1.0)
        self.tokens, self.at_ns = self.burst, now_ns

    def take(self, now_ns: int) -> bool:
        if now_ns > self.at_ns:
            self.tokens = min(self.burst, self.tokens + (now_ns - self.at_ns) * 1e-9 * self.rate)
            self.at_ns = now_ns
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _fmt(v: float) -> str:
    return f'{v:g}'


@dataclass(frozen=True, slots=True)
class Exposure:
    """What the Router knows of an account/symbol when a check needs it."""

    position: float = 0.0     # signed, at the venue
    open_buys: float = 0.0    # remaining size of other not-done buys (dark and live)
    open_sells: float = 0.0
    open_orders: int = 0      # not-done orders of the account (all symbols)


class RiskEngine:
    """Limits, rate buckets and trading states of one emsd.

    ``limits`` as :func:`parse_limits` returns; ``clock`` gives epoch nanoseconds (the Router's).
    The checks return ``None`` (accepted) or the refusal reason.
    """

    def __init__(self, limits: Mapping[tuple[str | None, str | None], Limits] | None = None,
                 clock: Callable[[], int] | None = None) -> None:
        self.limits = dict(limits or {(None, None): Limits()})
        self.limits.setdefault((None, None), Limits())
        self.clock = clock
        self.states: dict[str, str] = {}       # scope (account or CLUSTER) -> state
        self.buckets: dict[tuple[str, str], TokenBucket] = {}
        self.refused = 0
        bands = {v.price_band_pct for v in self.limits.values()}
        #: the one price band of every scope (0: off), checked without a lookup while idle
        self.band = bands.pop() if len(bands) == 1 else None
        self._limited = self.band is None or any(
            replace(v, price_band_pct=DEFAULT_PRICE_BAND_PCT) != Limits() for v in self.limits.values())

    @property
    def idle(self) -> bool:
        """Only the price band applies and every state is active: nothing else to check
        (derived on each ask, so it can never disagree with :attr:`states`)."""
        return not self._limited and not self.states

    # --- configuration ------------------------------------------------------------------

    def limits_for(self, account: str, fqsn: str) -> Limits:
        lim = self.limits
        return lim.get((account, fqsn)) or lim.get((account, None)) or lim[(None, None)]

    def needs_exposure(self, account: str, fqsn: str, reduce_only: bool) -> bool:
        """Whether the check needs the account's position/open orders (costly: only asked
        for when a limit or state uses them)."""
        lim = self.limits_for(account, fqsn)
        return (reduce_only or lim.needs_position or lim.max_open_orders is not None
                or self.state_of(account) == REDUCING)

    # --- states -------------------------------------------------------------------------

    def state_of(self, account: str) -> str:
        """The state that applies to ``account``: the stricter of its own and the cluster's."""
        own = self.states.get(account, ACTIVE)
        cluster = self.states.get(CLUSTER, ACTIVE)
        return max(own, cluster, key=STATES.index)

    def set_state(self, scope: str, state: str) -> None:
        if state not in STATES:
            raise ValueError(f'unknown trading state {state!r}: expected one of {", ".join(STATES)}')
        if state == ACTIVE:
            self.states.pop(scope, None)
        else:
            self.states[scope] = state

    def snapshot(self) -> dict[str, str]:
        """Every scope's state (the cluster always listed)."""
        return {CLUSTER: self.states.get(CLUSTER, ACTIVE),
                **{k: v for k, v in sorted(self.states.items()) if k != CLUSTER}}

    # --- checks -------------------------------------------------------------------------

    def _refuse(self, reason: str) -> str:
        self.refused += 1
        return f'risk: {reason}'

    def check_rate(self, participant: str, kind: str, account: str, fqsn: str) -> str | None:
        """Take a token of ``participant``'s ``order`` or ``cancel`` bucket."""
        lim = self.limits_for(account, fqsn)
        rate = lim.order_rate if kind == 'order' else lim.cancel_rate
        if rate is None:
            return None
        burst = (lim.order_burst if kind == 'order' else lim.cancel_burst) or max(2 * rate, 1.0)
        now = self.clock() if self.clock is not None else 0
        bucket = self.buckets.get((participant, kind))
        if bucket is None or (bucket.rate, bucket.burst) != (rate, max(burst, 1.0)):
            bucket = self.buckets[(participant, kind)] = TokenBucket(rate, burst, now)
        if bucket.take(now):
            return None
        return self._refuse(f'{kind}_rate {_fmt(rate)}/s (burst {_fmt(burst)}) exceeded by participant {participant!r}')

    def check_band(self, price: float, last: float | None, band: float) -> str | None:
        """A live limit ``price`` farther than ``band`` % from ``last`` (``band`` 0: off)."""
        if not band or not last:
            return None
        off = abs(price - last) / last * 100.0
        if off > band + 1e-9:
            return self._refuse(f'price_band_pct {_fmt(band)}: limit {_fmt(price)} is '
                                f'{off:.3g}% from the last price {_fmt(last)}')
        return None

    def check_order(
        self, *, account: str, fqsn: str, action: str, price: float, size: float, live: bool,
        last: float | None, reduce_only: bool = False, exposure: Exposure | None = None,
        old_size: float = 0.0,
    ) -> str | None:
        """An order (new, modified, or a dark one triggering) of ``account`` on ``fqsn``.

        ``old_size``: for a modify, the size the order already counts with in ``exposure``
        (replaced by ``size``). Alerts are never refused (they trade nothing)."""
        if action == 'alert':
            return None
        state = self.state_of(account)
        if state == HALTED:
            scope = 'cluster' if self.states.get(CLUSTER) == HALTED else f'account {account}'
            return self._refuse(f'trading is halted ({scope})')
        lim = self.limits_for(account, fqsn)
        if lim.max_order_size is not None and size > lim.max_order_size:
            return self._refuse(f'max_order_size {_fmt(lim.max_order_size)}: size {_fmt(size)} is above it')
        notional = abs(price * size)
        if lim.max_order_notional is not None and notional > lim.max_order_notional:
            return self._refuse(f'max_order_notional {_fmt(lim.max_order_notional)}: '
                                f'{_fmt(price)} x {_fmt(size)} = {_fmt(notional)} is above it')
        if live:
            why = self.check_band(price, last, lim.price_band_pct)
            if why:
                return why
        ex = exposure or Exposure()
        if lim.max_open_orders is not None and not old_size and ex.open_orders + 1 > lim.max_open_orders:
            return self._refuse(f'max_open_orders {int(lim.max_open_orders)}: '
                                f'{ex.open_orders} already open in account {account}')
        signed = size if action == 'buy' else -size
        if reduce_only or state == REDUCING:
            pos = ex.position
            # what other orders of the same side would already take off the position
            pending = ex.open_buys if action == 'buy' else ex.open_sells
            pending -= old_size
            reduces = (pos < 0 < signed or pos > 0 > signed) and size + pending <= abs(pos) + 1e-9
            if not reduces:
                why = 'reduce-only order' if reduce_only else f'account {account} is reducing'
                return self._refuse(f'{why}: {action} {_fmt(size)} does not shrink the position '
                                    f'{_fmt(pos)} (other {action}s open: {_fmt(max(pending, 0.0))})')
        if lim.needs_position:
            if action == 'buy':
                worst = ex.position + ex.open_buys - old_size + size
                if lim.max_long is not None and worst > lim.max_long + 1e-9:
                    return self._refuse(f'max_long {_fmt(lim.max_long)}: position {_fmt(ex.position)} '
                                        f'with open buys would reach {_fmt(worst)}')
            else:
                worst = -ex.position + ex.open_sells - old_size + size
                if lim.max_short is not None and worst > lim.max_short + 1e-9:
                    return self._refuse(f'max_short {_fmt(lim.max_short)}: position {_fmt(ex.position)} '
                                        f'with open sells would reach {_fmt(-worst)}')
        return None
