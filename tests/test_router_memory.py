"""emsd must not remember every finished order forever (it runs for weeks)."""
from piker_ems.clearing import _router
from piker_ems.clearing._messages import Order
from piker_ems.clearing._orders import ClientConn, OrderState
from piker_ems.clearing._router import Router


def _finish(router: Router, oid: str, owner_conn) -> OrderState:
    st = OrderState(
        req=Order(action='alert', oid=oid, symbol='x.sim', price=1.0), owner='a',
        venue=('sim', 'paper'), owner_conn=owner_conn, phase='done', reqid=f'r-{oid}',
    )
    router.orders[oid] = st
    router.by_reqid[(st.venue, st.reqid)] = oid
    router.route(st, st.status('alert_triggered'))
    return st


def test_finished_orders_are_bounded(monkeypatch):
    monkeypatch.setattr(_router, 'MAX_DONE_ORDERS', 3)
    router = Router(None, None)
    conn = ClientConn('a', 'x.sim', 'sim', 'paper')
    for i in range(6):
        _finish(router, f'o{i}', conn)
    assert sorted(router.orders) == ['o3', 'o4', 'o5']
    assert len(router.by_reqid) == 3
    assert conn.sent == 6  # every status was still delivered


def test_finished_orders_unseen_by_their_owner_are_kept(monkeypatch):
    monkeypatch.setattr(_router, 'MAX_DONE_ORDERS', 3)
    router = Router(None, None)
    for i in range(6):
        _finish(router, f'o{i}', None)  # owner away: it must learn of these on reconnect
    assert sorted(router.orders) == [f'o{i}' for i in range(6)]
    snap = router.open_orders(owner='a')
    assert {s['oid'] for s in snap} == {f'o{i}' for i in range(6)}
    assert router.open_orders(owner='a') == []  # reported once
