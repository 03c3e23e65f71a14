"""Reason codes: the stable public contract of every denial (SPEC.md, "Outbound decision").

Each code names the clause of MIIT notice 2020 No. 81 it enforces, carries a message in Chinese
and English, and the hangup cause (Q.850 number and name) a PBX should use when it is the
deciding reason. Order matters: the first failing code in this table picks the hangup cause.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reason:
    """One failed rule."""

    code: str
    clause: str
    message_zh: str
    message_en: str
    cause_code: int  # Q.850 cause for Asterisk's Hangup()
    cause_name: str  # the same cause as FreeSWITCH names it

    def as_dict(self) -> dict[str, str]:
        return {
            "code": self.code,
            "clause": self.clause,
            "message_zh": self.message_zh,
            "message_en": self.message_en,
        }


_BARRED = (52, "OUTGOING_CALL_BARRED")
_REJECTED = (21, "CALL_REJECTED")
_TEMPFAIL = (41, "NORMAL_TEMPORARY_FAILURE")
_CONGESTION = (34, "NORMAL_CIRCUIT_CONGESTION")


def _r(code: str, clause: str, zh: str, en: str, cause: tuple[int, str]) -> Reason:
    return Reason(code, clause, zh, en, cause[0], cause[1])


REASONS: dict[str, Reason] = {
    r.code: r
    for r in (
        _r("POLICY_UNAVAILABLE", "§4(1)", "合规策略服务不可用,外呼一律拒绝",
           "the policy store could not be reached in time; outbound calls fail closed", _TEMPFAIL),
        _r("TENANT_UNKNOWN", "§5(1)", "呼叫未携带租户或租户未登记",
           "the call carries no tenant or an unknown one", _BARRED),
        _r("TENANT_SUSPENDED", "§5(1)3, §6(3)", "租户外呼已被暂停或终止",
           "the tenant's outbound calling is suspended or terminated", _BARRED),
        _r("NO_OUTBOUND_COMMITMENT", "§2(1)", "租户未提交不违规呼出承诺书",
           "the tenant has no outbound commitment letter on file", _BARRED),
        _r("CID_HIDDEN", "§3(3), §4(4)", "主叫号码为空、匿名或被隐藏",
           "the caller ID is empty, anonymous or presentation-restricted", _REJECTED),
        _r("CID_USER_NUMBER", "§3(1)3", "主叫号码为用户号码(手机或普通固话),不是登记的接入号码",
           "the caller ID is a subscriber number, not a registered access number", _REJECTED),
        _r("CID_NOT_REGISTERED", "§2(3)", "主叫号码不是已登记的接入号码",
           "the caller ID is not a registered access number", _REJECTED),
        _r("CID_OTHER_TENANT", "§2(3), §3(1)3", "主叫号码登记在其他租户名下(出租或转让)",
           "the caller ID is registered to another tenant (lease or transfer)", _REJECTED),
        _r("NUMBER_LENGTH_ALTERED", "§2(3)", "主叫号码擅自改变码号位长(增加或删除位数)",
           "the caller ID is a registered number with digits added or removed", _REJECTED),
        _r("NUMBER_INBOUND_ONLY", "§2(1)", "该接入号码未开通呼出功能",
           "the access number is not enabled for outbound calls", _BARRED),
        _r("NUMBER_NOT_FILED", "§2(2)", "该接入号码未备案或已停用",
           "the access number has no filing on record, or is inactive", _BARRED),
        _r("TRUNK_UNVERIFIED", "§4(3), §5(1)1", "语音中继线路未登记、属于其他租户或缺少合法证明",
           "the trunk is unknown, belongs to another tenant, or has no verified proof", _BARRED),
        _r("CAMPAIGN_MARKETING", "§1(2), §3(1)5", "商业营销类呼出不被允许",
           "the call belongs to a marketing campaign", _REJECTED),
        _r("CAMPAIGN_NOT_APPROVED", "§1(2)", "外呼任务未登记或未获批准",
           "the campaign is unknown or not approved", _REJECTED),
        _r("CALLEE_REFUSED", "§1(2)", "被叫用户已谢绝来电",
           "the callee is on the tenant's or the global do-not-call list", _REJECTED),
        _r("NO_CONSENT", "§1(2), §3(2)", "没有与呼叫用途相符的有效用户同意凭证",
           "no valid consent of a scope that fits the call's purpose", _REJECTED),
        _r("QUIET_HOURS", "§4(2)", "被叫当地时间不在允许呼出的时段内",
           "the callee's local time is outside the allowed calling window", _REJECTED),
        _r("FREQUENCY_EXCEEDED", "§3(2)", "对该被叫的呼出次数已达上限",
           "the per-callee attempt limit is reached", _CONGESTION),
        _r("RECORDING_UNAVAILABLE", "§4(2)", "无法启动通话录音,禁止无录音外呼",
           "the recording could not be started; no unrecorded outbound calls", _TEMPFAIL),
        _r("CID_ALTERED", "§4(4)", "通话中主叫号码被更改,通话已拆除",
           "the caller ID changed after the decision; the call was torn down", _REJECTED),
    )
}

_ORDER = {code: i for i, code in enumerate(REASONS)}


def reason(code: str) -> Reason:
    """The Reason for ``code`` (KeyError for codes outside the contract)."""
    return REASONS[code]


def ordered(codes: list[str] | tuple[str, ...]) -> list[Reason]:
    """Reasons for ``codes`` in contract order, without duplicates."""
    return [REASONS[c] for c in sorted(set(codes), key=_ORDER.__getitem__)]
