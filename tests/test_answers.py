import pytest

from phiforge.answers import answers_equal, extract_answer


@pytest.mark.parametrize("text,expected", [
    ("So the answer is The answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("first \\boxed{3} then \\boxed{x^{2}+1}", "x^{2}+1"),
    ("\\boxed{12} and a truncated \\boxed{3", "12"),
    ("work\n#### 42\n", "42"),
    ("work\n#### 1,234,567", "1234567"),
    ("Thus x = 2. The answer is -3.", "-3"),
    ("The answer is 3.5.", "3.5"),
    ("The final answer is: 7/12", "7/12"),
    ("We get 5, then 10 and finally -3/4.", "-3/4"),
    ("The total is $1,234.", "1234"),
    ("The total is 12.50 dollars", "12.50"),
    ("no digits here", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_boxed_beats_other_markers():
    assert extract_answer("#### 5\nThe answer is 6. \\boxed{7} and 8") == "7"
    assert extract_answer("#### 5\nThe answer is 6. then 8") == "5"
    assert extract_answer("The answer is 6. then 8") == "6"


@pytest.mark.parametrize("pred,gold", [
    ("0.5", "1/2"),
    ("\\frac{1}{2}", "1/2"),
    ("\\dfrac{-3}{4}", "-3/4"),
    ("2x+1", "1+2*x"),
    ("x^2 - 1", "(x-1)(x+1)"),
    ("12 cm", "12"),
    ("12", "12 cm"),
    ("5 apples", "5"),
    ("x = 5", "5"),
    ("1,234", "1234"),
    ("+7", "7"),
    ("7.0", "7"),
    ("0.5", "50%"),
    ("50", "50%"),
    ("50%", "50%"),
    ("sqrt(4)", "2"),
    ("$7$", "7"),
    ("yes", "True"),        # a yes/no question answered in words or as a truth value
    ("False", "no"),
    ("TRUE", "true"),
])
def test_equal(pred, gold):
    assert answers_equal(pred, gold)


@pytest.mark.parametrize("pred,gold", [
    ("7", "8"),
    ("garbage", "7"),
    ("", "7"),
    (None, "7"),
    ("0.333", "1/3"),       # exact comparison, no tolerance
    ("50%", "0.5"),         # a percent is P/100 only when the gold answer is a percent
    ("12 cm", "12 m"),
    ("2x", "2"),            # a lone letter is a variable, not a unit
    ("1/0", "1"),
    ("__import__('os').system('true')", "0"),
    ("x.__class__", "x"),
    ("(" * 500, "1"),
    ("1" * 300, "1"),
    ("\\frac{1}", "1"),
    ("yes", "False"),
    ("no", "0"),            # a truth word is never a number
    ("1", "True"),
])
def test_not_equal(pred, gold):
    assert not answers_equal(pred, gold)


def test_corrupted_answers_rejected():
    for gold in ["141", "-3", "7/12", "-1/4", "0"]:
        from fractions import Fraction
        assert answers_equal(gold, gold)
        assert not answers_equal(str(Fraction(gold) + 1), gold)
