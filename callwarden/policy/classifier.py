"""Does a campaign's text read as marketing? A transparent keyword scorer, Chinese and English.

Held, not refused: a hit sends the campaign to human review, so a false positive costs a
reviewer's minute while a false negative could cost the licence. Every verdict lists the terms
that produced it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Terms that on their own mark sales intent (weight 2) or that need company (weight 1).
_STRONG = (
    "营销", "推销", "促销", "推广", "电销", "广告", "销售线索", "拓客", "获客", "拉新",
    "marketing", "telemarketing", "promotion", "promotional", "promo", "advertis", "cold call",
    "cold-call", "upsell", "up-sell", "cross-sell", "lead generation", "sales pitch", "sales call",
)
_WEAK = (
    "优惠", "折扣", "特价", "限时", "抢购", "办卡", "贷款", "信用卡", "理财", "投资", "开户",
    "额度", "免费领", "礼品", "赠送", "新品", "会员招募", "套餐升级", "分期", "返现", "秒杀",
    "discount", "special offer", "offer", "deal", "sale", "free gift", "limited time", "loan",
    "credit card", "invest", "new product", "sign up", "subscribe", "coupon", "cashback",
    "upgrade your plan", "exclusive",
)
_THRESHOLD = 2


@dataclass(frozen=True, slots=True)
class Verdict:
    marketing: bool
    score: int
    matches: tuple[str, ...]


def _find(term: str, text: str) -> bool:
    if term.isascii():
        return re.search(r"\b" + re.escape(term), text) is not None
    return term in text


def classify_text(*texts: str | None) -> Verdict:
    """Score the joined ``texts``; ``marketing`` when the score reaches the threshold."""
    text = " ".join(t for t in texts if t).lower()
    strong = tuple(t for t in _STRONG if _find(t, text))
    weak = tuple(t for t in _WEAK if _find(t, text))
    score = 2 * len(strong) + len(weak)
    return Verdict(score >= _THRESHOLD, score, strong + weak)
