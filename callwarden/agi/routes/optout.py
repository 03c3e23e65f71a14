"""``agi://host:port/optout``: the callee asked not to be called again (an IVR keypress).

Dialplan: ``AGI(agi://127.0.0.1:4573/optout[,<callee>])`` with CALLWARDEN_TENANT set. The callee
is the first AGI argument when given (an outbound call's IVR knows the number it dialled),
else CALLERID(num) (the callee rang in). The refusal is stored for the tenant (``*``: every
tenant) and audit-logged by the enforcer. Sets CALLWARDEN_OPTOUT to ``ok`` (stored, or
already listed), ``rejected`` (no tenant, or not a usable number) or, from the failure path,
``failed`` (not stored: the dialplan must not confirm it).
"""

from __future__ import annotations

from callwarden.agi.routes.common import publish, read_variables
from callwarden.agi.routes.registry import CallReport, RouteContext, register
from callwarden.agi.session import AgiSession

SOURCE = "asterisk-ivr"


@register("optout", failure_variables=(("CALLWARDEN_OPTOUT", "failed"),))
async def optout(session: AgiSession, ctx: RouteContext, report: CallReport) -> None:
    values = await read_variables(session, "CALLWARDEN_TENANT", "CALLERID(num)")
    report.tenant = values["CALLWARDEN_TENANT"]
    report.callee = session.arg(1) or values["CALLERID(num)"]
    stored = await ctx.gate.call(ctx.gate.enforcer.opt_out, report.tenant, report.callee, SOURCE,
                                 f"pbx:{ctx.pbx}", timeout=ctx.store_timeout_s)
    report.decision = "ok" if stored else "rejected"
    await publish(session, [("CALLWARDEN_OPTOUT", report.decision)])
