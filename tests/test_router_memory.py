"""emsd must not remember every finished order forever (it runs for weeks)."""
from _router_fakes import Rig

from piker_ems.clearing import _router
from piker_ems.clearing._messages import Cancel, Order


def _alert(rig, conn, oid):
    rig.send(conn, Order(action='alert', oid=oid, symbol='btcusd.sim', price=150.0))


def test_finished_orders_are_bounded(monkeypatch):
    monkeypatch.setattr(_router, 'MAX_DONE_ORDERS', 3)
    rig = Rig()
    conn = rig.client('a')
    for i in range(6):
        _alert(rig, conn, f'o{i}')
        rig.send(conn, Cancel(oid=f'o{i}', symbol='btcusd.sim'))
    assert sorted(rig.router.orders) == ['o3', 'o4', 'o5']
    assert conn.resps().count('dark_cancelled') == 6  # every status was still delivered


def test_finished_orders_unseen_by_their_owner_are_kept_and_reported_once(monkeypatch):
    monkeypatch.setattr(_router, 'MAX_DONE_ORDERS', 3)
    rig = Rig()
    conn = rig.client('a')
    for i in range(6):
        _alert(rig, conn, f'o{i}')
    rig.router.drop_client(conn)
    rig.scans.get('btcusd.sim').tick('trade', 150.0)  # all six fire while the owner is away
    assert sorted(rig.router.orders) == [f'o{i}' for i in range(6)]
    snap = rig.router.open_orders(owner='a')
    assert {s['oid'] for s in snap} == {f'o{i}' for i in range(6)}
    assert {s['resp'] for s in snap} == {'alert_triggered'}
    assert rig.router.open_orders(owner='a') == []  # reported once
    assert len(rig.router.orders) == 3  # and once seen, they fall under the normal bound


def test_one_unseen_order_does_not_disable_the_bound(monkeypatch):
    """Regression: the oldest finished order being unseen used to stop all forgetting."""
    monkeypatch.setattr(_router, 'MAX_DONE_ORDERS', 3)
    rig = Rig()
    ghost = rig.client('ghost')
    _alert(rig, ghost, 'lost-owner')
    rig.router.drop_client(ghost)  # never comes back
    rig.scans.get('btcusd.sim').tick('trade', 150.0)
    conn = rig.client('a')
    for i in range(50):
        _alert(rig, conn, f'o{i}')
        rig.send(conn, Cancel(oid=f'o{i}', symbol='btcusd.sim'))
    assert sorted(rig.router.orders) == ['lost-owner', 'o47', 'o48', 'o49']


def test_unseen_orders_have_their_own_bound(monkeypatch):
    monkeypatch.setattr(_router, 'MAX_UNSEEN_ORDERS', 2)
    rig = Rig()
    conn = rig.client('a')
    for i in range(5):
        _alert(rig, conn, f'o{i}')
    rig.router.drop_client(conn)
    rig.scans.get('btcusd.sim').tick('trade', 150.0)
    assert sorted(rig.router.orders) == ['o3', 'o4']
