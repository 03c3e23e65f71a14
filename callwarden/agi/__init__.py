"""Asterisk: the FastAGI server (panoramisk ``Application``) and the AMI listener (``Manager``).

No SQL here: every store access goes through ``callwarden.service.enforcer.Enforcer``, run off
the event loop by :class:`~callwarden.agi.store_gate.StoreGate`. Layout:

* ``wire`` / ``session`` / ``server``: the hardened FastAGI protocol and server;
* ``routes/``: one module per AGI route (``outbound``, ``inbound``, ``optout``), by name;
* ``ami/``: the AMI connection, event tracker (CDRs, caller-ID), reconciliation;
* ``adapter``: assembly, and :func:`serve_asterisk` for ``callwarden serve``.
"""

from callwarden.agi.adapter import AsteriskAdapter, serve_asterisk

__all__ = ["AsteriskAdapter", "serve_asterisk"]
