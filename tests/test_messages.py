# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""The typed message protocol (SPEC section 4): parsing, routing by tag, errors."""
import pytest

from piker_ems.clearing._messages import (
    BrokerdCancel,
    BrokerdError,
    BrokerdFill,
    BrokerdOrder,
    BrokerdOrderAck,
    BrokerdPosition,
    BrokerdStatus,
    Cancel,
    MsgError,
    Order,
    Status,
    parse_broker_request,
    parse_brokerd_msg,
    parse_client_msg,
    parse_ems_msg,
    to_wire,
)


def order(**kw) -> dict:
    msg = {
        'action': 'buy',
        'oid': 'f1e2d3c4',
        'symbol': 'btcusd.sim',
        'price': 100.5,
        'size': 2.0,
    }
    msg.update(kw)
    return msg


ORDER = Order(**order(exec_mode='live', owner='chart'))

# (model instance, parse function that must accept it)
SAMPLES = [
    (ORDER, parse_client_msg),
    (Order(**order(action='alert', size=0)), parse_client_msg),
    (Cancel(oid='f1e2d3c4', symbol='btcusd.sim'), parse_client_msg),
    (Status(oid='f1e2d3c4', resp='dark_triggered', trigger_price=101.0,
            broker_reqid=7, brokerd_msg={'name': 'ack', 'reqid': 7},
            req=ORDER, owner='chart'), parse_ems_msg),
    (BrokerdPosition(broker='sim', symbol='btcusd', size=-2, avg_price=99.5),
     parse_ems_msg),
    (BrokerdOrder(action='sell', oid='o1', symbol='btcusd', price=99.0, size=1,
                  reqid='abc'), parse_broker_request),
    (BrokerdCancel(oid='o1', reqid=3, symbol='btcusd'), parse_broker_request),
    (BrokerdOrderAck(oid='o1', reqid='ib-12'), parse_brokerd_msg),
    (BrokerdStatus(reqid=3, status='filled', filled=1, remaining=0,
                   broker_details={'x': [1, 2]}), parse_brokerd_msg),
    (BrokerdFill(reqid=3, action='buy', size=1, price=100.0, broker_time=1.5),
     parse_brokerd_msg),
    (BrokerdError(oid='o1', reqid=3, symbol='btcusd', reason='unknown order'),
     parse_brokerd_msg),
    (BrokerdPosition(broker='sim', symbol='btcusd', size=1, avg_price=100.0),
     parse_brokerd_msg),
]


@pytest.mark.parametrize(
    'model,parse', SAMPLES, ids=[type(m).__name__ for m, _ in SAMPLES],
)
def test_round_trip(model, parse):
    wire = to_wire(model)
    assert type(wire) is dict
    back = parse(wire)
    assert type(back) is type(model)
    assert back == model


@pytest.mark.parametrize('parse,msg,expected', [
    (parse_client_msg, order(action='sell'), Order),
    (parse_client_msg, {'action': 'cancel', 'oid': 'x', 'symbol': 'es.sim'}, Cancel),
    (parse_ems_msg, {'name': 'status', 'oid': 'x', 'resp': 'error'}, Status),
    (parse_ems_msg, {'name': 'position', 'broker': 'sim', 'symbol': 'es',
                     'size': 1, 'avg_price': 1}, BrokerdPosition),
    (parse_broker_request, {'name': 'order', 'action': 'buy', 'oid': 'x',
                            'symbol': 'es', 'price': 1, 'size': 1}, BrokerdOrder),
    (parse_broker_request, {'name': 'cancel', 'oid': 'x', 'reqid': 1}, BrokerdCancel),
    (parse_brokerd_msg, {'name': 'ack', 'oid': 'x', 'reqid': 1}, BrokerdOrderAck),
    (parse_brokerd_msg, {'name': 'status', 'reqid': 1, 'status': 'submitted'},
     BrokerdStatus),
    (parse_brokerd_msg, {'name': 'fill', 'reqid': 1, 'action': 'sell', 'size': 1,
                         'price': 2, 'broker_time': 3.0}, BrokerdFill),
    (parse_brokerd_msg, {'name': 'error', 'reqid': 1, 'reason': 'no'}, BrokerdError),
])
def test_routes_tag_to_type(parse, msg, expected):
    assert type(parse(msg)) is expected


def test_same_tag_means_different_types_per_direction():
    # 'status' is a Status to a client but a BrokerdStatus to emsd, and a
    # broker-side message is not accepted where a client message is expected
    with pytest.raises(MsgError, match="unknown name 'status'"):
        parse_broker_request({'name': 'status', 'reqid': 1, 'status': 'filled'})
    with pytest.raises(MsgError, match='missing .action.'):
        parse_client_msg(to_wire(BrokerdCancel(oid='x', reqid=1)))


def test_alert_size_zero_is_valid_and_default():
    alert = parse_client_msg(order(action='alert', size=0))
    assert alert.size == 0
    no_size = order(action='alert')
    del no_size['size']
    assert parse_client_msg(no_size).size == 0


def test_brokers_default_from_fqsn_suffix():
    assert parse_client_msg(order(symbol='es.cme.ib')).brokers == ['ib']
    assert parse_client_msg(order(brokers=['kraken'])).brokers == ['kraken']


@pytest.mark.parametrize('msg,needle', [
    ({k: v for k, v in order().items() if k != 'oid'}, 'oid: Field required'),
    (order(size=-1), 'size: must be > 0 for buy/sell'),
    (order(size=0), 'size: must be > 0 for buy/sell'),
    (order(action='alert', size=-1), 'size: must be >= 0'),
    (order(price=0), 'price: '),
    (order(price=float('inf')), 'price: '),
    (order(oid=''), 'oid: '),
    (order(symbol='btcusd'), 'symbol: '),
    (order(symbol='btcusd.'), 'symbol: '),
    (order(exec_mode='shadow'), 'exec_mode: '),
    (order(sizee=3), 'sizee: Extra inputs are not permitted'),
])
def test_invalid_order(msg, needle):
    with pytest.raises(MsgError) as info:
        parse_client_msg(msg)
    err = info.value
    assert str(err).startswith('invalid Order: ')
    assert needle in str(err)
    assert err.errors  # the pydantic details are kept
    assert err.msg is msg


def test_unknown_or_missing_tag_names_allowed_tags():
    with pytest.raises(MsgError, match="unknown action 'short'") as info:
        parse_client_msg(order(action='short'))
    assert 'buy, sell, alert, cancel' in str(info.value)
    with pytest.raises(MsgError, match="missing 'name' field") as info:
        parse_brokerd_msg({'reqid': 1})
    assert 'ack' in str(info.value) and 'position' in str(info.value)


@pytest.mark.parametrize('obj', ['buy', ['action', 'buy'], None, 3, b'{}'])
@pytest.mark.parametrize('parse', [
    parse_client_msg, parse_ems_msg, parse_broker_request, parse_brokerd_msg,
])
def test_non_dict_input(parse, obj):
    with pytest.raises(MsgError, match=f'expected a message dict, got {type(obj).__name__}'):
        parse(obj)


def test_status_resp_values():
    ok = parse_ems_msg({'name': 'status', 'oid': 'x', 'resp': 'broker_inactive'})
    assert ok.resp == 'broker_inactive'
    for bad in ('bogus', 'broker_', ''):
        with pytest.raises(MsgError, match='invalid Status: resp: '):
            parse_ems_msg({'name': 'status', 'oid': 'x', 'resp': bad})


def test_nested_req_error_names_the_path():
    with pytest.raises(MsgError, match=r'req\.size: must be > 0'):
        parse_ems_msg({'name': 'status', 'oid': 'x', 'resp': 'error',
                       'req': order(size=0)})


def test_extra_fields_policy():
    # broker -> emsd: backends may add fields; they are dropped, not fatal
    ack = parse_brokerd_msg({'name': 'ack', 'oid': 'x', 'reqid': 5, 'perm_id': 9})
    assert ack == BrokerdOrderAck(oid='x', reqid=5)
    # emsd -> broker: a misspelled reqid would turn a modify into a new order
    with pytest.raises(MsgError, match='reqd: Extra inputs'):
        parse_broker_request({'name': 'cancel', 'oid': 'x', 'reqd': 5})
    with pytest.raises(MsgError, match='invalid Cancel: oid: Field required'):
        parse_client_msg({'action': 'cancel', 'symbol': 'es.sim'})


def test_reqid_type_is_preserved():
    assert parse_brokerd_msg({'name': 'ack', 'oid': 'x', 'reqid': '5'}).reqid == '5'
    assert parse_brokerd_msg({'name': 'ack', 'oid': 'x', 'reqid': 5}).reqid == 5


def test_model_instances_pass_through_but_wrong_models_do_not():
    assert parse_client_msg(ORDER) is ORDER
    with pytest.raises(MsgError, match='expected a message dict, got BrokerdOrder'):
        parse_client_msg(BrokerdOrder(action='buy', oid='x', symbol='es',
                                      price=1, size=1))
