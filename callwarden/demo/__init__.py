"""``callwarden demo``: a first run on a fresh checkout.

It starts the real servers (FastAGI in this process, the outbound Event Socket server in a
gevent child process) on a temporary SQLite store seeded with one tenant, and plays the PBX's
side of a handful of calls over real sockets: the small clients here speak FastAGI as Asterisk
does and the outbound Event Socket as FreeSWITCH does. Each decision is printed.

Nothing in this package is imported by the servers; keep this module free of imports
(``python -m callwarden.demo.freeswitch_child`` must be able to patch gevent first).
"""
