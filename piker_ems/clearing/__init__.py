"""Clearing: the message protocol, emsd (the Router), the paper engine and the client API."""
from ._client import EmsLost, OrderBook, TradesStream, open_ems, open_ems_watching
from ._messages import (
    BrokerdCancel, BrokerdError, BrokerdFill, BrokerdOrder, BrokerdOrderAck, BrokerdPosition,
    BrokerdStatus, Cancel, MsgError, Order, Status, TradingState,
)

__all__ = [
    'BrokerdCancel', 'BrokerdError', 'BrokerdFill', 'BrokerdOrder', 'BrokerdOrderAck',
    'BrokerdPosition', 'BrokerdStatus', 'Cancel', 'EmsLost', 'MsgError', 'Order', 'OrderBook',
    'Status', 'TradesStream', 'TradingState', 'open_ems', 'open_ems_watching',
]
