"""piker_ems: an execution management system for traders, built as a tree of tractor actors.

``pikerd`` is the root daemon and registry; it owns ``brokerd.<broker>`` (quote feeds and live
order endpoints) and ``emsd`` (the clearing daemon) which in turn owns ``paperboi.<broker>``
paper engines. Clients (the Qt chart, the CLI, bots) find these services by name.
"""
__version__ = '0.1.0'
