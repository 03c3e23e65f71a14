import pytest

from callwarden.numbers import InvalidNumber, NumberKind, mask, mask_raw, normalize, try_normalize


@pytest.mark.parametrize(("raw", "digits", "kind"), [
    ("13800138000", "13800138000", NumberKind.MOBILE),
    ("+8613800138000", "13800138000", NumberKind.MOBILE),
    ("+86 138-0013-8000", "13800138000", NumberKind.MOBILE),
    ("008613800138000", "13800138000", NumberKind.MOBILE),
    ("8613800138000", "13800138000", NumberKind.MOBILE),
    ("tel:+86-138-0013-8000", "13800138000", NumberKind.MOBILE),
    ("01012345678", "01012345678", NumberKind.FIXED),
    ("+861012345678", "01012345678", NumberKind.FIXED),  # +86 drops the trunk 0 of area code 10
    ("0086 10 1234 5678", "01012345678", NumberKind.FIXED),
    ("(021) 1234-5678", "02112345678", NumberKind.FIXED),
    ("075512345678", "075512345678", NumberKind.FIXED),
    ("+86 755 1234 5678", "075512345678", NumberKind.FIXED),
    ("95512", "95512", NumberKind.SERVICE_95),
    ("+8695512", "95512", NumberKind.SERVICE_95),
    ("955888", "955888", NumberKind.SERVICE_95),
    ("96166", "96166", NumberKind.SERVICE_96),
    ("0571-96166", "057196166", NumberKind.SERVICE_96),
    ("400-123-4567", "4001234567", NumberKind.SERVICE_400),
    ("8001234567", "8001234567", NumberKind.SERVICE_800),
    ("10086", "10086", NumberKind.CARRIER_SHORT),
    ("+1 415 555 0100", "+14155550100", NumberKind.FOREIGN),
])
def test_normalize(raw, digits, kind):
    n = normalize(raw)
    assert (n.digits, n.kind) == (digits, kind)


def test_forms_of_one_number_compare_equal():
    forms = ["13800138000", "+8613800138000", "008613800138000", "+86 138 0013 8000"]
    assert len({normalize(f) for f in forms}) == 1


def test_appended_digits_make_a_different_number():
    assert normalize("955121234").digits != normalize("95512").digits
    assert normalize("955121234").kind is NumberKind.SERVICE_95 or normalize("955121234").digits.startswith("95512")


@pytest.mark.parametrize("raw", ["abc", "123x", "+", "1" * 21, "++86123"])
def test_invalid_numbers_raise_without_echoing_the_input(raw):
    with pytest.raises(InvalidNumber) as e:
        normalize(raw)
    if raw.strip("+"):
        assert raw not in str(e.value)


def test_hidden_and_garbage_are_none():
    assert try_normalize(None) is None and try_normalize("anonymous") is None and try_normalize("x!") is None


def test_masking_hides_personal_numbers_but_not_service_numbers():
    assert mask("13800138000") == "138****8000"
    assert mask("01012345678") == "010****5678"
    assert mask("95512") == "95512" and mask("4001234567") == "4001234567"
    assert mask_raw("+86 138 0013 8000") == "138****8000"
    assert "0013" not in mask_raw("13800138000")
