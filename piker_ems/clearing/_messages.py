# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
The EMS message protocol (SPEC section 4).

Every message is a pydantic v2 model with a ``Literal`` tag field, so a dict
received off the wire parses into exactly one type. Messages travel as plain
dicts made by :func:`to_wire`; the receiver validates with one of the
``parse_*`` functions, one per direction:

- :func:`parse_client_msg`: emsd, for client requests (tag ``action``);
- :func:`parse_ems_msg`: a client, for emsd replies (tag ``name``);
- :func:`parse_broker_request`: a brokerd or paper engine, for emsd
  requests (tag ``name``);
- :func:`parse_brokerd_msg`: emsd, for broker events (tag ``name``).

Every parse failure (bad field, unknown tag, not a dict at all) raises one
exception type, :class:`MsgError`, so a receive loop needs a single
``except`` to answer or log the bad message and carry on.

Strictness: *requests* (client -> emsd and emsd -> broker) forbid unknown
fields, since a misspelled field silently changes meaning (a misspelled
``reqid`` turns a modify into a new order). *Replies and events* (broker ->
emsd, emsd -> client) ignore unknown fields so a backend or a newer emsd may
add detail without breaking older receivers.
"""
import math
import time
import zlib
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
import msgspec
from pydantic_core import PydanticCustomError

from ..symbols import FqsnError, parse_fqsn
from . import _statuses

__all__ = [
    'BROKER_RESP_PREFIX',
    'EMS_RESPS',
    'BrokerdCancel',
    'BrokerdError',
    'BrokerdFill',
    'BrokerdOrderInfo',
    'BrokerdOrder',
    'BrokerdOrderAck',
    'BrokerdPosition',
    'BrokerdStatus',
    'Cancel',
    'MsgError',
    'Order',
    'Status',
    'TradingState',
    'VenueSnapshot',
    'parse_broker_request',
    'parse_brokerd_msg',
    'parse_client_msg',
    'parse_ems_msg',
    'parse_venue_snapshot',
    'fast_order_wire',
    'order_wire',
    'pack_snapshot',
    'to_wire',
    'unbatch',
    'unpack_snapshot',
]


# ---------------------------------------------------------------------------
# shared field types

#: Our order id: made by the client (a uuid string), the idempotency key.
Oid = Annotated[str, Field(min_length=1)]

#: The broker's order id: whatever type the backend uses.
ReqId = Union[int, str]

#: Hard caps on any request's price and size, whatever the symbol: finite, and small enough
#: that price * size keeps cent precision in a float (2**53 ~ 9e15). emsd checks the tighter,
#: per-symbol bounds (size in lots, notional) once it knows the symbol; see ``_router``.
MAX_PRICE = 1e12
MAX_SIZE = 1e12

#: A finite, strictly positive float (prices and sizes of requests).
PosFloat = Annotated[float, Field(gt=0, le=MAX_PRICE, allow_inf_nan=False)]
SizeFloat = Annotated[float, Field(gt=0, le=MAX_SIZE, allow_inf_nan=False)]

#: Any finite float (broker reported prices/sizes: may be 0 or negative).
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

_STRICT = ConfigDict(extra='forbid')
_LENIENT = ConfigDict(extra='ignore')



#: Valid fqsns seen: every message of a symbol names the same few strings, so checking each
#: once is enough (invalid ones are never cached: each is checked, and refused, every time).
_parse_fqsn_cached = lru_cache(maxsize=4096)(parse_fqsn)


def _check_fqsn(v: str) -> str:
    """Validator: a client symbol must be an fqsn, ``<symbol>.<broker>``."""
    try:
        _parse_fqsn_cached(v)
    except FqsnError as err:
        raise PydanticCustomError('fqsn', str(err)) from None
    return v


# ---------------------------------------------------------------------------
# client -> emsd

class Order(BaseModel):
    """
    A client's request to place (or, resent with a known ``oid``, modify)
    a buy/sell order or a price alert.
    """

    model_config = _STRICT

    # NB: field order matters: validators below read earlier fields.
    action: Literal['buy', 'sell', 'alert']
    oid: Oid
    symbol: str
    price: PosFloat
    size: float = Field(0.0, le=MAX_SIZE, allow_inf_nan=False, validate_default=True)
    brokers: list[str] = Field(default_factory=list)
    exec_mode: Literal['dark', 'live', 'paper'] = 'dark'
    account: str = 'paper'
    # filled in by emsd: the name of the client that created the order
    owner: str | None = None
    # only accepted (and, if dark, only released) while it shrinks the account's position
    reduce_only: bool = False

    _check_fqsn = field_validator('symbol')(_check_fqsn)

    @field_validator('size')
    @classmethod
    def _check_size(cls, v: float, info: ValidationInfo) -> float:
        if info.data.get('action') in ('buy', 'sell'):
            if v <= 0:
                raise PydanticCustomError(
                    'size', 'must be > 0 for buy/sell, got {size}',
                    {'size': v},
                )
        elif v < 0:
            raise PydanticCustomError(
                'size', 'must be >= 0, got {size}', {'size': v},
            )
        return v

    @model_validator(mode='after')
    def _default_brokers(self) -> 'Order':
        if not self.brokers:
            self.brokers = [_parse_fqsn_cached(self.symbol)[1]]
        return self


class Cancel(BaseModel):
    """A client's request to cancel one of its orders or alerts by ``oid``."""

    model_config = _STRICT

    action: Literal['cancel'] = 'cancel'
    oid: Oid
    symbol: str

    _check_fqsn = field_validator('symbol')(_check_fqsn)


# ---------------------------------------------------------------------------
# emsd <-> brokerd / paper engine

class BrokerdOrder(BaseModel):
    """
    emsd asks a broker to place a limit order (``reqid=None``) or to modify
    the order it already knows as ``reqid``.
    """

    model_config = _STRICT

    name: Literal['order'] = 'order'
    action: Literal['buy', 'sell']
    oid: Oid
    account: str = 'paper'
    time_ns: int = Field(default_factory=time.time_ns)
    reqid: ReqId | None = None
    # the broker-local symbol key (``btcusd``), not an fqsn
    symbol: str = Field(min_length=1)
    price: PosFloat
    size: SizeFloat


class BrokerdCancel(BaseModel):
    """emsd asks a broker to cancel the order it knows as ``reqid``."""

    model_config = _STRICT

    name: Literal['cancel'] = 'cancel'
    oid: Oid
    account: str = 'paper'
    time_ns: int = Field(default_factory=time.time_ns)
    reqid: ReqId | None = None
    symbol: str | None = None


class BrokerdOrderAck(BaseModel):
    """
    A broker binds its id (``reqid``) to our ``oid``; it must follow every new
    order so later events (which only carry ``reqid``) can be routed.
    """

    model_config = _LENIENT

    name: Literal['ack'] = 'ack'
    oid: Oid
    reqid: ReqId
    account: str = 'paper'


class BrokerdStatus(BaseModel):
    """
    A broker reports an order state change (submitted, cancelled, filled,
    inactive ...); emsd relays it as ``broker_<status>``.
    """

    model_config = _LENIENT

    name: Literal['status'] = 'status'
    reqid: ReqId
    time_ns: int = Field(default_factory=time.time_ns)
    status: str = Field(min_length=1)
    account: str = 'paper'
    filled: FiniteFloat = 0.0
    remaining: FiniteFloat = 0.0
    reason: str = ''
    broker_details: dict[str, Any] = Field(default_factory=dict)


class BrokerdFill(BaseModel):
    """A broker reports one execution (possibly partial) of an order.

    ``fill_id`` is the venue's unique id of the execution (its trade id): a fill seen twice
    (replayed after a reconnect) is applied once. ``oid`` is ours when the venue knows it (as
    its client order id).
    """

    model_config = _LENIENT

    name: Literal['fill'] = 'fill'
    reqid: ReqId
    oid: str | None = None
    fill_id: str | None = None
    time_ns: int = Field(default_factory=time.time_ns)
    action: Literal['buy', 'sell']
    size: FiniteFloat
    price: FiniteFloat
    fee: FiniteFloat = 0.0
    # the broker's own timestamp of the execution, epoch seconds
    broker_time: FiniteFloat = Field(default_factory=time.time)
    broker_details: dict[str, Any] = Field(default_factory=dict)


class BrokerdError(BaseModel):
    """A broker refused or failed a request; emsd relays it as ``broker_errored``."""

    model_config = _LENIENT

    name: Literal['error'] = 'error'
    oid: str | None = None
    reqid: ReqId | None = None
    symbol: str | None = None
    reason: str
    broker_details: dict[str, Any] = Field(default_factory=dict)


class BrokerdPosition(BaseModel):
    """
    A broker's (or the paper engine's) position for one account and symbol;
    emsd forwards it to clients unchanged.
    """

    model_config = _LENIENT

    name: Literal['position'] = 'position'
    broker: str
    account: str = 'paper'
    symbol: str
    currency: str = ''
    size: FiniteFloat
    avg_price: FiniteFloat
    realized_pnl: FiniteFloat = 0.0
    fees: FiniteFloat = 0.0


class TradingState(BaseModel):
    """emsd -> client: the trading state that now applies to the client's account (issue 14).

    Pushed on every client's order dialogue when ``piker halt/reduce/resume`` changes it (the
    state at connect is in the start state), so a chart shows it without asking. ``state`` is
    the stricter of the account's and the cluster's; ``scope`` is what changed (an account, or
    ``*`` for the cluster).
    """

    model_config = _LENIENT

    name: Literal['trading_state'] = 'trading_state'
    account: str
    state: Literal['active', 'reducing', 'halted']
    scope: str = '*'
    time_ns: int = 0


class BrokerdOrderInfo(BaseModel):
    """One order as the venue knows it, for reconciliation (part of :class:`VenueSnapshot`).

    ``status`` is the venue's word (``open``, ``cancelled``, ``filled``, ``rejected`` ...);
    ``oid`` is ours when the venue knows it (backends pass it as the client order id).
    """

    model_config = _LENIENT

    name: Literal['order_info'] = 'order_info'
    reqid: ReqId
    oid: str | None = None
    account: str = 'paper'
    symbol: str
    action: Literal['buy', 'sell']
    price: FiniteFloat
    size: FiniteFloat
    filled: FiniteFloat = 0.0
    status: str = 'open'
    time_ns: int = 0


class VenueSnapshot(BaseModel):
    """What every ``trades_dialogue`` reports in ``started()`` (SPEC §10), so emsd can reconcile
    on every (re)connect: the venue is the truth for live orders.

    ``orders``: every open order, plus those that ended since ``since_ns`` (the dialogue's
    argument); ``fills``: every execution since ``since_ns``; ``positions``: all of them.
    """

    model_config = _LENIENT

    name: Literal['snapshot'] = 'snapshot'
    positions: list[BrokerdPosition] = Field(default_factory=list)
    orders: list[BrokerdOrderInfo] = Field(default_factory=list)
    fills: list[BrokerdFill] = Field(default_factory=list)
    since_ns: int | None = None


def parse_venue_snapshot(obj: Any) -> VenueSnapshot:
    """A dialogue's ``started()`` value: a :class:`VenueSnapshot`, or (older backends) a plain
    list of positions. Raises :class:`MsgError` for anything else."""
    if isinstance(obj, (list, tuple)):
        obj = {'positions': list(obj)}
    if not isinstance(obj, Mapping):
        raise MsgError(f'invalid venue snapshot: expected a dict, got {type(obj).__name__}', msg=obj)
    try:
        return VenueSnapshot.model_validate(obj)
    except ValidationError as err:
        raise MsgError(f'invalid venue snapshot: {err.errors(include_url=False)[0]["msg"]}',
                       errors=err.errors(include_url=False), msg=obj) from None


# ---------------------------------------------------------------------------
# emsd -> client

#: ``Status.resp`` values with a meaning of their own (see :mod:`._statuses`); any
#: well-formed ``broker_<status>`` is also valid (an open set coming from the backend).
EMS_RESPS: frozenset[str] = _statuses.KNOWN_RESPS
BROKER_RESP_PREFIX = _statuses.BROKER_PREFIX


class Status(BaseModel):
    """
    emsd tells a client (owner or watcher) what happened to an order; it
    carries the originating ``req`` so any client can draw an order it did
    not place.
    """

    model_config = _LENIENT

    name: Literal['status'] = 'status'
    oid: Oid
    time_ns: int = Field(default_factory=time.time_ns)
    resp: str
    trigger_price: float | None = None
    broker_reqid: ReqId | None = None
    # the broker message this status came from, if any
    brokerd_msg: dict[str, Any] = Field(default_factory=dict)
    req: Order | None = None
    reason: str | None = None
    owner: str | None = None

    @field_validator('resp')
    @classmethod
    def _check_resp(cls, v: str) -> str:
        if _statuses.is_valid_resp(v):
            return v
        raise PydanticCustomError(
            'resp',
            "unknown resp '{resp}': expected a dark_/alert_ status, "
            "'error' or 'broker_<status>'",
            {'resp': v},
        )


# ---------------------------------------------------------------------------
# parsing

class MsgError(ValueError):
    """
    A received message is not valid for its direction. ``str(err)`` is short
    and human readable (fit for an ``error`` status or a log line); the
    pydantic error details, if any, are kept on ``.errors``.
    """

    def __init__(
        self,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        msg: Any = None,
    ) -> None:
        super().__init__(message)
        self.errors: list[dict[str, Any]] = errors or []
        # the offending input, so a receiver can e.g. echo the ``oid`` back
        self.msg = msg


class _Parser:
    """One direction of the protocol: a discriminated union built once."""

    def __init__(
        self,
        what: str,
        tag: str,
        *models: type[BaseModel],
    ) -> None:
        self.what = what
        self.tag = tag
        self.models = models
        union = Union[models] if len(models) > 1 else models[0]  # type: ignore[valid-type]
        self.adapter: TypeAdapter[Any] = TypeAdapter(
            Annotated[union, Field(discriminator=tag)]
        )
        # tag value -> model name, for readable error messages
        self.names: dict[str, str] = {}
        for model in models:
            for value in get_args(model.model_fields[tag].annotation):
                self.names[value] = model.__name__
        self.expected = ', '.join(self.names)

    def __call__(self, obj: Any) -> Any:
        if isinstance(obj, self.models):
            return obj
        if not isinstance(obj, Mapping):
            raise MsgError(
                f'invalid {self.what}: expected a message dict, '
                f'got {type(obj).__name__}',
                msg=obj,
            )
        try:
            return self.adapter.validate_python(obj)
        except ValidationError as err:
            raise self._error(err, obj) from None

    def _error(self, err: ValidationError, obj: Any) -> MsgError:
        errors = err.errors(include_url=False)
        first = errors[0]
        etype = first['type']
        if etype == 'union_tag_not_found':
            text = (
                f'invalid {self.what}: missing {self.tag!r} field; '
                f'expected one of: {self.expected}'
            )
        elif etype == 'union_tag_invalid':
            text = (
                f'invalid {self.what}: unknown {self.tag} '
                f'{obj.get(self.tag)!r}; expected one of: {self.expected}'
            )
        else:
            # loc is (tag value, field, ...): name the model, then the fields
            model = self.names.get(first['loc'][0], self.what) if first['loc'] else self.what
            parts = []
            for e in errors:
                field = '.'.join(str(p) for p in e['loc'][1:])
                parts.append(f'{field}: {e["msg"]}' if field else e['msg'])
            text = f'invalid {model}: ' + '; '.join(parts)
        return MsgError(text, errors=errors, msg=obj)


_parse_client = _Parser('client message', 'action', Order, Cancel)
_parse_ems = _Parser('ems message', 'name', Status, BrokerdPosition, TradingState)
_parse_request = _Parser(
    'broker request', 'name', BrokerdOrder, BrokerdCancel,
)
_parse_brokerd = _Parser(
    'brokerd message', 'name',
    BrokerdOrderAck, BrokerdStatus, BrokerdFill, BrokerdError, BrokerdPosition,
)


def parse_client_msg(obj: Any) -> Order | Cancel:
    """What emsd receives from a client: an ``Order`` or a ``Cancel``.

    Raises :class:`MsgError` for anything else.
    """
    return _parse_client(obj)


def parse_ems_msg(obj: Any) -> Status | BrokerdPosition | TradingState:
    """What a client receives from emsd: a ``Status``, a ``BrokerdPosition`` or a
    ``TradingState``.

    Raises :class:`MsgError` for anything else.
    """
    return _parse_ems(obj)


def parse_broker_request(obj: Any) -> BrokerdOrder | BrokerdCancel:
    """What a brokerd or paper engine receives from emsd.

    Raises :class:`MsgError` for anything else.
    """
    return _parse_request(obj)


def parse_brokerd_msg(
    obj: Any,
) -> BrokerdOrderAck | BrokerdStatus | BrokerdFill | BrokerdError | BrokerdPosition:
    """What emsd receives from a brokerd or paper engine.

    Raises :class:`MsgError` for anything else.
    """
    return _parse_brokerd(obj)


def to_wire(model: BaseModel) -> dict[str, Any]:
    """A message as the plain, JSON/msgpack-safe dict that travels between actors.

    (``model_dump(mode='json')`` without its Python-level argument handling: the same dict.)
    """
    return model.__pydantic_serializer__.to_python(model, mode='json')


def order_wire(order: Order) -> dict[str, Any]:
    """:func:`to_wire` of an :class:`Order`, made by copying its (already validated,
    JSON-safe) fields: the client's ``send`` path, where every microsecond is the caller's.

    Equal to ``to_wire(order)`` (tests pin it), as long as every field of :class:`Order` is a
    plain JSON type.
    """
    wire = dict(order.__dict__)
    wire['brokers'] = list(order.brokers)
    return wire


_ACTIONS = frozenset(('buy', 'sell', 'alert'))
_EXEC_MODES = frozenset(('dark', 'live', 'paper'))


def fast_order_wire(
    action: Any, oid: Any, symbol: Any, price: Any, size: Any, exec_mode: Any, account: Any,
) -> dict[str, Any] | None:
    """The wire dict of a new :class:`Order` whose fields are plainly valid, or ``None``.

    The client's ``send`` path: checking a new order's few fields by hand costs a fraction of
    building the model. It only accepts what :class:`Order` accepts, with the same result
    (``order_wire(Order(...))``, tests pin it); for anything else (a wrong type, a value out of
    bounds, an unknown symbol form, an ``int`` subclass ...) it returns ``None`` and the caller
    lets pydantic decide, so refusals keep pydantic's exceptions and wording.
    """
    if (type(action) is not str or action not in _ACTIONS or type(oid) is not str or not oid
            or type(symbol) is not str or type(exec_mode) is not str
            or exec_mode not in _EXEC_MODES or type(account) is not str):
        return None
    tp = type(price)
    if tp is not float:
        if tp is not int:
            return None
        price = float(price) if 0 < price <= MAX_PRICE else math.nan
    ts = type(size)
    if ts is not float:
        if ts is not int:
            return None
        size = float(size) if 0 <= size <= MAX_SIZE else math.nan
    # NaN fails every comparison, inf the upper bound
    if not (0.0 < price <= MAX_PRICE) or not (0.0 <= size <= MAX_SIZE):
        return None
    if size == 0.0 and action != 'alert':
        return None
    try:
        broker = _parse_fqsn_cached(symbol)[1]
    except FqsnError:
        return None
    return {
        'action': action, 'oid': oid, 'symbol': symbol, 'price': price, 'size': size,
        'brokers': [broker], 'exec_mode': exec_mode, 'account': account, 'owner': None,
        'reduce_only': False,
    }


# ---------------------------------------------------------------------------
# bulk forms (see docs/protocol.md)

#: ``started()`` of emsd's client dialogue carries the snapshot of open orders as one msgpack
#: blob (a list of Status wire dicts) rather than a list of dicts: tractor 0.1.0a5 formats
#: every message it sends and receives into debug strings whatever the log level, and a
#: thousand nested dicts cost it ~10 ms to format where one bytes blob costs ~1 ms.
_SNAPSHOT_ENCODER = msgspec.msgpack.Encoder()
_SNAPSHOT_DECODER = msgspec.msgpack.Decoder(list)
#: A decompressed snapshot larger than this is refused (a zip bomb from a hostile peer).
_SNAPSHOT_MAX_BYTES = 512 << 20


#: Snapshots from this many statuses on are zlib-compressed (level 1: ~10x smaller for the
#: repetitive status dicts; 1000 statuses: 318 -> 29 kB, 1.4 ms to compress, 0.4 ms to
#: decompress, against ~1 ms of tractor's ``repr`` per copy of the raw blob, four copies).
SNAPSHOT_COMPRESS_FROM = 64
_ZLIB_LEVEL = 1


def pack_snapshot(statuses: list[dict[str, Any]]) -> bytes:
    """A list of Status wire dicts as one msgpack blob (emsd's start-up snapshot),
    zlib-compressed from :data:`SNAPSHOT_COMPRESS_FROM` statuses on."""
    blob = _SNAPSHOT_ENCODER.encode(statuses)
    return zlib.compress(blob, _ZLIB_LEVEL) if len(statuses) >= SNAPSHOT_COMPRESS_FROM else blob


def unpack_snapshot(blob: Any) -> list[dict[str, Any]]:
    """The Status wire dicts of a snapshot: a packed blob, or (older emsd) a plain list.

    Raises :class:`MsgError` for anything else; the dicts are still to be validated, one
    by one, with :func:`parse_ems_msg`.
    """
    if isinstance(blob, (list, tuple)):
        return list(blob)
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise MsgError(f'invalid snapshot: expected a packed blob, got {type(blob).__name__}', msg=blob)
    try:
        if blob[:1] == b'\x78':  # a zlib stream (a msgpack list starts 0x9_ or 0xdc/0xdd)
            blob = zlib.decompressobj().decompress(blob, _SNAPSHOT_MAX_BYTES)
        out = _SNAPSHOT_DECODER.decode(blob)
    except (msgspec.DecodeError, zlib.error) as err:
        raise MsgError(f'invalid snapshot: {err}') from None
    return out


def unbatch(raw: Any) -> list[Any]:
    """The messages of one received item: a batch (a list of message dicts, sent when the
    sender had a backlog) or a single message."""
    return raw if isinstance(raw, list) else [raw]
