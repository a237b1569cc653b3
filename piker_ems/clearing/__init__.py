# piker_ems: execution management system for traders
# SPDX-License-Identifier: AGPL-3.0-or-later
"""
Clearing: the EMS daemon (emsd), its typed message protocol, the paper
clearing engine and the client API.
"""
