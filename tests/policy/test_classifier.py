from callwarden.policy import classify_text


def test_marketing_wording_in_chinese_and_english_is_caught():
    for text in ("春季促销活动,信用卡办理优惠", "Spring promotion with a discount offer", "电销拓客",
                 "telemarketing leads for new product", "限时抢购 新品 折扣"):
        v = classify_text(text)
        assert v.marketing, text
        assert v.matches


def test_service_wording_passes():
    for text in ("Remind existing customers that their service contract expires",
                 "回访客户报修工单处理结果", "Delivery appointment confirmation", "账单到期提醒"):
        v = classify_text(text)
        assert not v.marketing, (text, v.matches)


def test_one_weak_term_alone_is_not_enough():
    assert not classify_text("confirm your loan repayment date").marketing
    assert classify_text("loan offer").marketing
