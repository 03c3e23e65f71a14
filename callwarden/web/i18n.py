"""The console's words in Chinese (default) and English; ``t(key)`` in every template."""

from __future__ import annotations

LANGUAGES = ("zh", "en")

# key: (zh, en)
_TEXT: dict[str, tuple[str, str]] = {
    "app": ("callwarden 合规控制台", "callwarden compliance console"),
    "login": ("登录", "Sign in"),
    "logout": ("退出", "Sign out"),
    "username": ("用户名", "Username"),
    "password": ("密码", "Password"),
    "login_failed": ("用户名或密码错误", "Wrong username or password"),
    "login_limited": ("登录失败次数过多,请稍后再试", "Too many failed sign-ins; try again later"),
    "session_expired": ("会话已超时,请重新登录", "Your session timed out; please sign in again"),
    "calls": ("通话查询", "Call search"),
    "report": ("合规报告", "Compliance report"),
    "risk": ("租户风险", "Tenant risk"),
    "registry": ("登记信息", "Registry"),
    "search": ("查询", "Search"),
    "tenant": ("租户", "Tenant"),
    "caller": ("主叫", "Caller"),
    "callee": ("被叫", "Callee"),
    "from": ("起始", "From"),
    "to": ("截止", "To"),
    "direction": ("方向", "Direction"),
    "decision": ("判定", "Decision"),
    "reason": ("原因", "Reason"),
    "reasons": ("原因", "Reasons"),
    "campaign": ("外呼任务", "Campaign"),
    "trunk": ("中继", "Trunk"),
    "call_id": ("呼叫编号", "Call ID"),
    "recording": ("录音", "Recording"),
    "any": ("全部", "any"),
    "yes": ("有", "yes"),
    "no": ("无", "no"),
    "outbound": ("呼出", "outbound"),
    "inbound": ("呼入", "inbound"),
    "allow": ("放行", "allow"),
    "deny": ("拒绝", "deny"),
    "attempted_at": ("呼叫时间", "Attempted"),
    "answered_at": ("接通时间", "Answered"),
    "ended_at": ("结束时间", "Ended"),
    "billsec": ("通话时长(秒)", "Billsec"),
    "disposition": ("结果", "Disposition"),
    "show_full": ("显示完整号码(将记入审计日志)", "Show numbers in full (audit-logged)"),
    "show_masked": ("隐藏号码", "Mask numbers"),
    "full_shown": ("完整号码已显示,本次查看已记入审计日志", "Numbers shown in full; this view is in the audit log"),
    "prev": ("上一页", "Previous"),
    "next": ("下一页", "Next"),
    "no_calls": ("没有符合条件的通话", "No calls match"),
    "export": ("导出证据包(当前条件)", "Export evidence bundle (current filter)"),
    "export_note": ("证据包包含完整号码,导出将记入审计日志;可用 callwarden audit verify 离线校验。",
                    "The bundle holds full numbers; the export is audit-logged; check it offline with "
                    "callwarden audit verify."),
    "call": ("通话", "Call"),
    "clause": ("条款", "Clause"),
    "message_zh": ("说明(中文)", "Message (Chinese)"),
    "message_en": ("说明(英文)", "Message (English)"),
    "no_reasons": ("无拒绝原因", "No denial reasons"),
    "consent": ("用户同意凭证", "Consent evidence"),
    "no_consent": ("本通话未引用同意凭证", "This call used no consent record"),
    "basis": ("依据", "Basis"),
    "scopes": ("范围", "Scopes"),
    "obtained_at": ("取得时间", "Obtained"),
    "expires_at": ("到期时间", "Expires"),
    "revoked_at": ("撤回时间", "Revoked"),
    "evidence": ("凭证", "Evidence"),
    "timeline": ("通话时间线", "CDR timeline"),
    "no_recording": ("本通话没有已存储的录音", "This call has no stored recording"),
    "download": ("下载录音", "Download recording"),
    "play_note": ("播放和下载均记入审计日志", "Playback and download are audit-logged"),
    "enforced": ("强制执行", "Enforced"),
    "purpose": ("用途", "Purpose"),
    "hangup_cause": ("挂断原因", "Hangup cause"),
    "period": ("期间", "Period"),
    "format": ("格式", "Format"),
    "show_report": ("生成报告", "Show report"),
    "score": ("风险分", "Score"),
    "level": ("级别", "Level"),
    "status": ("状态", "Status"),
    "attempts": ("呼叫次数", "Attempts"),
    "figures": ("计分依据", "Figures behind the score"),
    "feature": ("指标", "Figure"),
    "value": ("数值", "Value"),
    "sample": ("样本", "Sample"),
    "weight": ("权重", "Weight"),
    "points": ("得分", "Points"),
    "note": ("备注", "Note"),
    "thresholds": ("阈值", "Thresholds"),
    "alerts": ("告警", "Alerts"),
    "findings": ("登记问题", "Findings"),
    "raised_at": ("时间", "Raised"),
    "kind": ("类型", "Kind"),
    "suspend": ("暂停外呼", "Suspend outbound"),
    "resume": ("恢复外呼", "Resume outbound"),
    "reason_required": ("原因(必填,记入审计日志)", "Reason (required, audit-logged)"),
    "reason_missing": ("必须填写原因", "A reason is required"),
    "status_changed": ("租户状态已更新", "Tenant status changed"),
    "edit_registry": ("编辑登记信息(与 registry import 相同的格式和校验)",
                      "Edit the registry (same format and validation as registry import)"),
    "dry_run": ("仅校验,不保存", "Validate only, save nothing"),
    "apply": ("提交", "Apply"),
    "registry_saved": ("已保存", "Saved"),
    "registry_checked": ("校验通过,未保存", "Valid; nothing saved"),
    "nothing_changed": ("未做任何更改", "nothing was changed"),
    "not_found": ("未找到", "Not found"),
    "forbidden": ("禁止访问", "Forbidden"),
    "role": ("角色", "Role"),
    "language": ("English", "中文"),
    "as_of": ("截至", "As of"),
    "none": ("无", "none"),
}


def translator(lang: str):  # type: ignore[no-untyped-def]
    """``t(key)`` for one language; an unknown key shows itself (easy to spot, never fails)."""
    i = 1 if lang == "en" else 0

    def t(key: str) -> str:
        pair = _TEXT.get(key)
        return pair[i] if pair else key

    return t


def keys() -> set[str]:
    return set(_TEXT)
