"""FreeSWITCH adapter: outbound Event Socket server and inbound event listener (greenswitch).

Runs in its own process (``python -m callwarden.esl``) because gevent monkey-patches the
standard library, which must not happen in the asyncio (Asterisk) process; see
``callwarden.esl.process`` and docs/freeswitch.md. Nothing here imports gevent at package import
time, so ``import callwarden.esl`` stays harmless. No SQL here: every store access goes through
``callwarden.service.enforcer.Enforcer``.
"""
