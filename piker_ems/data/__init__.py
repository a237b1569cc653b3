"""Market data: live quote feeds shared across actors (``open_feed``) and OHLC aggregation."""
from .feed import Feed, FeedLost, History, QuoteStream, fetch_history, open_feed

__all__ = ['Feed', 'FeedLost', 'History', 'QuoteStream', 'fetch_history', 'open_feed']
