"""The per-call log event both PBX adapters write: one line per call, numbers masked."""

from __future__ import annotations

from dataclasses import dataclass, field

from callwarden.numbers import mask_raw


@dataclass(slots=True)
class CallReport:
    """The fields every adapter reports of a call, filled in as the call goes; an adapter
    subclasses it for its own (how the call left it)."""

    route: str | None = None
    pbx_call_id: str | None = None
    tenant: str | None = None
    caller: str | None = None
    callee: str | None = None
    decision: str | None = None
    reasons: tuple[str, ...] = ()
    call_id: str | None = None
    let_through: bool | None = None
    decision_ms: float | None = None
    recording: str | None = None  # started | failed | not needed
    notes: list[str] = field(default_factory=list)

    def fields(self) -> dict[str, object]:
        """The fields, with phone numbers masked (they are personal data)."""
        return {
            "route": self.route, "pbx_call_id": self.pbx_call_id, "tenant": self.tenant,
            "caller": mask_raw(self.caller) if self.caller else None,
            "callee": mask_raw(self.callee) if self.callee else None,
            "decision": self.decision, "reasons": list(self.reasons), "call_id": self.call_id,
            "let_through": self.let_through, "decision_ms": self.decision_ms,
            "recording": self.recording, "notes": self.notes or None,
        }
