"""A price-sorted trigger index for the dark book of one (broker, symbol).

emsd keeps dark buy/sell orders and price alerts locally, invisible to the broker, and fires them
from a single quote-scan task per (broker, symbol) (SPEC section 5.4). That scan runs on every
tick, so its cost must not grow with the number of resting orders: a loop over per-order
predicates is O(N) per tick, which is unusable with thousands of alerts on a busy symbol.

:class:`DarkBook` instead keeps, for each action (``buy``, ``sell``, ``alert``), two binary heaps:

- an *above* min-heap keyed by trigger: entries firing when a tick price ``>=`` trigger. Only the
  top can be crossed first, so a tick pops while ``top.trigger <= price``;
- a *below* max-heap keyed by ``-trigger``: entries firing when a tick price ``<=`` trigger. A
  tick pops while ``top.trigger >= price``.

A tick that fires nothing costs one peek per heap its tick type is allowed to look at (at most
six); a tick firing ``k`` entries costs ``O(k log N)``.

Disarm and modify (re-arm with the same oid) use *lazy deletion*: the authoritative state is the
``oid -> Entry`` dict and every arm gets a fresh sequence number. A heap item whose
``(oid, seq)`` no longer matches a live entry is stale and is discarded when it surfaces at the
top of its heap. Stale items buried deep in a heap would otherwise accumulate under churn
(a trader dragging an order line produces many modifies), so the heaps are rebuilt from the live
entries whenever stale items outnumber live ones; that rebuild is ``O(N)`` and happens at most
once per ``N`` stale-producing operations, i.e. amortised ``O(1)``.

This module is pure Python: no trio, no tractor, no I/O, so it can be tested and benchmarked on
its own and is only ever touched from the one scan task that owns it (it is not thread-safe and
needs no locking under trio).
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = [
    'ACTIONS',
    'TICK_FILTERS',
    'DarkBook',
    'Entry',
    'release_price',
]

#: The actions a dark book entry can carry.
ACTIONS: tuple[str, ...] = ('buy', 'sell', 'alert')

#: Which actions each tick type is allowed to fire (SPEC 5.4): a buy executes against the ask,
#: so it watches ``ask``; a sell executes against the bid, so it watches ``bid``; all of them
#: watch prints (``last``/``trade``); alerts are about traded prices only. Any other tick type
#: (sizes, volume, ...) fires nothing.
TICK_FILTERS: dict[str, tuple[str, ...]] = {
    'ask': ('buy',),
    'bid': ('sell',),
    'last': ('buy', 'sell', 'alert'),
    'trade': ('buy', 'sell', 'alert'),
}

# Below this many stale heap items never bother compacting: rebuilding tiny heaps is pointless.
_COMPACT_MIN_STALE = 64


@dataclass(slots=True)
class Entry:
    """One resting dark order or alert.

    It exists so the scan task gets back everything it needs to act on a fire without a second
    lookup: the ``oid`` to route the status to its owner, the ``action`` to decide between a
    ``BrokerdOrder`` and an ``alert_triggered``, the ``trigger``/``direction`` for reporting, and
    an opaque ``payload`` (typically the originating ``Order`` message) chosen by the caller.

    ``seq`` is the book-wide arm sequence number: it makes stale heap items detectable after a
    disarm or modify and gives fires a deterministic tie-break (earlier arm first).
    """

    oid: str
    action: str
    trigger: float
    direction: str
    payload: Any = None
    seq: int = 0

    def crossed_by(self, price: float) -> bool:
        """Whether a tick at ``price`` crosses this entry's trigger (ignoring tick-type filters).

        Kept on the entry so callers and tests can reason about a single entry without the book.
        """
        if self.direction == 'above':
            return price >= self.trigger
        return price <= self.trigger


def _check_price(name: str, value: Any) -> float:
    """Coerce ``value`` to a finite float or raise ``ValueError`` naming ``name``."""
    if value is None:
        raise ValueError(f'{name} is required (got None)')
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must be a number, got {value!r}') from None
    if not math.isfinite(f):
        raise ValueError(f'{name} must be finite, got {value!r}')
    return f


class DarkBook:
    """Resting dark orders and alerts for ONE (broker, symbol), indexed by trigger price.

    It exists so emsd's per-(broker, symbol) scan task can match every incoming tick against all
    resting triggers in time independent of how many are resting, and so that each entry fires
    exactly once: a fired entry is removed from the book before it is returned.

    Fire order: the entries fired by one tick are returned sorted by *decreasing* distance
    ``abs(price - trigger)`` and then by increasing arm sequence. The deepest-crossed trigger
    comes first, i.e. the order in which a continuous price path from the previous tick would
    have crossed them; equal triggers fire in arm (FIFO) order.
    """

    __slots__ = ('_live', '_above', '_below', '_heap_items', '_seq')

    def __init__(self) -> None:
        #: oid -> live Entry; the single source of truth (heaps are only an index into it).
        self._live: dict[str, Entry] = {}
        #: action -> min-heap of (trigger, seq, oid) for 'above' entries.
        self._above: dict[str, list[tuple[float, int, str]]] = {a: [] for a in ACTIONS}
        #: action -> min-heap of (-trigger, seq, oid) for 'below' entries (a max-heap on trigger).
        self._below: dict[str, list[tuple[float, int, str]]] = {a: [] for a in ACTIONS}
        #: total number of items in all heaps, live and stale.
        self._heap_items = 0
        self._seq = 0

    # ------------------------------------------------------------------ mutation

    def arm(
        self,
        oid: str,
        action: str,
        trigger: float,
        last: float | None,
        payload: Any = None,
        direction: str | None = None,
    ) -> Entry:
        """Add (or modify) a resting entry and return it.

        The direction is chosen here, once, from ``last`` (the last known price): a trigger at or
        above ``last`` fires when a tick price ``>= trigger``; a trigger below ``last`` fires when
        a tick price ``<= trigger``. ``last`` is mandatory because emsd always has a first quote
        before accepting dark orders; a missing one is a caller bug, so it raises ``ValueError``.

        Arming an oid that is already resting replaces it (the modify path): the old trigger can
        never fire again, and the direction is re-chosen from the ``last`` given now.

        ``direction`` (``'above'`` / ``'below'``) forces the direction instead: a restarted emsd
        re-arms each order with the direction chosen when it was placed, so a market that
        crossed the trigger during the restart gap fires it once, on the first tick.
        """
        if action not in ACTIONS:
            raise ValueError(f'action must be one of {ACTIONS}, got {action!r}')
        trig = _check_price('trigger', trigger)
        if direction is not None:
            if direction not in ('above', 'below'):
                raise ValueError(f"direction must be 'above' or 'below', got {direction!r}")
            ref = trig if direction == 'above' else math.nextafter(trig, math.inf)
        else:
            ref = _check_price('last', last)

        old = self._live.pop(oid, None)  # its heap item becomes stale
        self._seq += 1
        seq = self._seq
        if trig >= ref:
            entry = Entry(oid, action, trig, 'above', payload, seq)
            heapq.heappush(self._above[action], (trig, seq, oid))
        else:
            entry = Entry(oid, action, trig, 'below', payload, seq)
            heapq.heappush(self._below[action], (-trig, seq, oid))
        self._heap_items += 1
        self._live[oid] = entry
        if old is not None:
            self._maybe_compact()
        return entry

    def disarm(self, oid: str) -> Entry | None:
        """Remove a resting entry so it never fires; return it, or ``None`` if it wasn't resting.

        Exists for the ``Cancel`` command path. ``None`` (rather than raising) lets emsd treat a
        cancel racing a fire, or a duplicate cancel, as a no-op.
        """
        entry = self._live.pop(oid, None)
        if entry is not None:
            self._maybe_compact()
        return entry

    def clear(self) -> list[Entry]:
        """Remove every entry and return them in arm order (e.g. on feed teardown)."""
        entries = self.entries()
        self._live.clear()
        for heaps in (self._above, self._below):
            for h in heaps.values():
                h.clear()
        self._heap_items = 0
        return entries

    # ------------------------------------------------------------------ the scan

    def on_tick(self, tick_type: str, price: float) -> list[Entry]:
        """Match one tick against the book; return the entries it fired, removed from the book.

        Only actions allowed by :data:`TICK_FILTERS` for ``tick_type`` are looked at, and for
        each only the tops of its two heaps, so a tick that fires nothing costs a handful of
        peeks whatever the book size. A non-finite price (e.g. a NaN placeholder) fires nothing.
        Because fired entries are removed before returning, a later crossing tick cannot fire
        them again. See the class docstring for the order of the returned list.
        """
        actions = TICK_FILTERS.get(tick_type)
        if not actions or self._heap_items == 0:
            return []
        if not math.isfinite(price):
            return []

        live = self._live
        fired: list[Entry] = []
        pop = heapq.heappop
        for action in actions:
            heap = self._above[action]
            while heap:
                key, seq, oid = heap[0]
                entry = live.get(oid)
                if entry is None or entry.seq != seq:
                    pop(heap)  # stale: disarmed or re-armed since
                    self._heap_items -= 1
                    continue
                if key > price:
                    break
                pop(heap)
                self._heap_items -= 1
                del live[oid]
                fired.append(entry)

            heap = self._below[action]
            neg = -price
            while heap:
                key, seq, oid = heap[0]
                entry = live.get(oid)
                if entry is None or entry.seq != seq:
                    pop(heap)
                    self._heap_items -= 1
                    continue
                if key > neg:  # i.e. trigger < price
                    break
                pop(heap)
                self._heap_items -= 1
                del live[oid]
                fired.append(entry)

        if fired:
            if len(fired) > 1:
                fired.sort(key=lambda e: (-abs(price - e.trigger), e.seq))
            # fires shrink the live set, which can leave stale items outnumbering live ones
            self._maybe_compact()
        return fired

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        """Number of live (armed, not yet fired or disarmed) entries."""
        return len(self._live)

    def __contains__(self, oid: object) -> bool:
        """Whether ``oid`` is currently resting (used to route a Cancel to the dark book)."""
        return oid in self._live

    def __iter__(self) -> Iterator[Entry]:
        """Iterate over a snapshot of the live entries in arm order (for client snapshots).

        A snapshot, so the book may be mutated while iterating.
        """
        return iter(self.entries())

    def get(self, oid: str) -> Entry | None:
        """Return the live entry for ``oid`` or ``None``; used to build status replies."""
        return self._live.get(oid)

    def entries(self) -> list[Entry]:
        """A list of the live entries in arm (sequence) order, e.g. to journal or snapshot."""
        # dict order is arm order: a re-arm pops the oid before re-inserting it.
        return list(self._live.values())

    @property
    def heap_items(self) -> int:
        """Total heap items including stale ones; exposed for tests and metrics (memory bound)."""
        return self._heap_items

    def __repr__(self) -> str:
        return f'<DarkBook live={len(self._live)} heap_items={self._heap_items}>'

    # ------------------------------------------------------------------ internals

    def _maybe_compact(self) -> None:
        """Rebuild the heaps from live entries once stale items outnumber live ones.

        Called after anything that adds stale items or removes live ones (disarm, modify, fire),
        so after every public operation ``stale <= max(64, live)``: memory stays ``O(live)``
        under churn. Each stale item is dropped at most once, so this is amortised O(1).
        """
        stale = self._heap_items - len(self._live)
        if stale <= _COMPACT_MIN_STALE or stale <= len(self._live):
            return
        self._compact()

    def _compact(self) -> None:
        """Drop every stale heap item by rebuilding all heaps from the live dict."""
        above: dict[str, list[tuple[float, int, str]]] = {a: [] for a in ACTIONS}
        below: dict[str, list[tuple[float, int, str]]] = {a: [] for a in ACTIONS}
        for e in self._live.values():
            if e.direction == 'above':
                above[e.action].append((e.trigger, e.seq, e.oid))
            else:
                below[e.action].append((-e.trigger, e.seq, e.oid))
        for heaps in (above, below):
            for h in heaps.values():
                heapq.heapify(h)
        self._above = above
        self._below = below
        self._heap_items = len(self._live)


def _decimals(tick_size: float) -> int:
    """Number of decimal places in ``tick_size`` as written (0.25 -> 2, 1e-05 -> 5, 5 -> 0)."""
    exp = Decimal(repr(float(tick_size))).normalize().as_tuple().exponent
    return max(0, -int(exp))


def release_price(
    action: str,
    tick_price: float,
    tick_size: float,
    ticks_through: int = 5,
) -> float:
    """The limit price a fired dark buy/sell is sent to the broker at.

    A dark order fires on a quote, but by the time the ``BrokerdOrder`` reaches the market the
    price may have moved; sending the limit ``ticks_through`` ticks *through* the triggering
    tick's price (up for buys, down for sells) makes it marketable while still capping slippage
    (SPEC 5.4). The result is rounded to the nearest multiple of ``tick_size`` and then to the
    number of decimals of ``tick_size``, so it carries no float noise (100.08, not
    100.08000000000001) and brokers accept it.
    """
    if action == 'buy':
        sign = 1
    elif action == 'sell':
        sign = -1
    else:
        raise ValueError(f"release_price needs action 'buy' or 'sell', got {action!r}")
    price = _check_price('tick_price', tick_price)
    tick = _check_price('tick_size', tick_size)
    if tick <= 0:
        raise ValueError(f'tick_size must be > 0, got {tick_size!r}')

    raw = price + sign * ticks_through * tick
    return round(round(raw / tick) * tick, _decimals(tick))
