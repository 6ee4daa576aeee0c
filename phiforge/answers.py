"""Final-answer extraction from model output and answer equivalence, shared by evaluation and verification.

Equivalence is exact on purpose: gold answers from the teacher are exact (integers, fractions in lowest
terms), so "0.333" does not equal "1/3". What counts as equal:
  * identical strings after normalisation (spaces, `$`, trailing punctuation, thousands commas);
  * the same rational number written as an integer, decimal, `a/b` or `\\frac{a}{b}`;
  * percent: a gold "P%" matches "P%", "P" and P/100 ("50%" ~ "50" ~ "0.5" ~ "1/2"); a percent sign on
    the prediction alone is read like a unit ("50%" ~ gold "50"), never as P/100;
  * a number followed by a simple unit ("12 cm", "12cm", "5 apples", "3 m/s") matches the bare number,
    and two numbers with units match only when the units are the same;
  * a leading single-variable assignment is dropped ("x = 5" ~ "5");
  * a truth value: "yes" ~ "true" and "no" ~ "false", in any case (a yes/no question answered either way);
  * otherwise both sides are parsed with sympy (whitelisted characters and names only, length-limited,
    floats made rational) and are equal when their difference simplifies to 0.
Anything that fails to parse is simply not equal; these functions never raise on odd model output.
"""

from __future__ import annotations

import re
from fractions import Fraction

_MAX_SYMBOLIC_CHARS = 200

_NUMBER = r"(?<![\w.])(?:-(?=\d))?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?![\w])"
_TRAILING = " \t\n.,;:!?"


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the brace group opening at text[start] == "{", and the index after it; None if unclosed."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    return None


def _clean(s: str) -> str:
    s = s.replace("\\$", "").replace("$", "").strip().rstrip(_TRAILING).strip()
    m = re.match(r"^([-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?)(?![\d,])(.*)$", s)
    if m:
        s = m.group(1).replace(",", "") + m.group(2)
    return s


def extract_answer(text: str) -> str | None:
    """The final answer in `text`: last \\boxed{}, else `#### X`, else "The answer is X", else the last number."""
    if not text:
        return None
    # Walk boxed answers from the end so a truncated last \boxed{ falls back to an earlier complete one.
    for m in reversed(list(re.finditer(r"\\boxed\s*\{", text))):
        group = _braced(text, m.end() - 1)
        if group and _clean(group[0]):
            return _clean(group[0])
    hashes = re.findall(r"####[ \t]*([^\n]*)", text)
    if hashes and _clean(hashes[-1]):
        return _clean(hashes[-1])
    said = re.findall(r"(?i)the (?:final )?answer is[ \t]*:?[ \t]*([^\n]*)", text)
    if said:
        # Cut at the end of the sentence or clause, but not inside 3.5 or 1,234.
        value = _clean(re.split(r"\.(?=\s|$)|,\s", said[-1], maxsplit=1)[0])
        if value:
            return value
    numbers = re.findall(_NUMBER, text)
    return _clean(numbers[-1]) if numbers else None


# --- normalisation ---------------------------------------------------------------------------

def _unfrac(s: str) -> str:
    """Rewrite \\frac{a}{b} (nested too) as (a)/(b) so the numeric and sympy paths can read it."""
    while True:
        i = s.find("\\frac")
        if i < 0:
            return s
        j = i + len("\\frac")
        while j < len(s) and s[j] == " ":
            j += 1
        num = _braced(s, j) if j < len(s) and s[j] == "{" else None
        den = _braced(s, num[1]) if num and num[1] < len(s) and s[num[1]] == "{" else None
        if not den:
            return s  # malformed: the leftover backslash makes every later parse fail, as it should
        s = f"{s[:i]}({_unfrac(num[0])})/({_unfrac(den[0])}){s[den[1]:]}"


def _normalize(s: str) -> str:
    s = _clean(s)
    for latex in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "^\\circ", "^{\\circ}", "\u00b0"):
        s = s.replace(latex, " " if latex == "\\ " else "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}", r" \1", s)
    s = _unfrac(s)
    s = re.sub(r"\\sqrt\s*\{([^{}]*)\}", r"sqrt(\1)", s)
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\pi", "pi")
    s = s.replace("{", "(").replace("}", ")")
    s = " ".join(s.split())
    s = re.sub(r"^[A-Za-z]\s*=\s*", "", s)  # "x = 5" states the value 5
    return _clean(s)


def _number(s: str) -> Fraction | None:
    s = re.sub(r"\(\s*([-+]?\d+(?:\.\d+)?)\s*\)", r"\1", s.replace(" ", ""))
    m = re.fullmatch(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))(?:/([-+]?(?:\d+(?:\.\d*)?|\.\d+)))?", s)
    if not m:
        return None
    value = Fraction(m.group(1))
    if m.group(2) is not None:
        den = Fraction(m.group(2))
        if den == 0:
            return None
        value /= den
    return value


_UNIT_WORDS = {"m", "cm", "mm", "km", "g", "kg", "mg", "s", "h", "l", "ml", "in", "ft", "yd", "mi", "lb",
               "oz", "min", "sec", "hr", "mph", "deg"}
_MATH_NAMES = {"sqrt", "sin", "cos", "tan", "log", "ln", "exp", "pi", "abs"}
_UNIT_RE = re.compile(r"^(.*?\d)\s*([A-Za-z]+(?:\^?[23])?(?:\s*/\s*[A-Za-z]+(?:\^?[23])?)?|%)$")


def _split_unit(s: str) -> tuple[str, str]:
    """("12", "cm") for "12 cm"; (s, "") when there is no recognisable unit after a number."""
    m = _UNIT_RE.match(s)
    if not m or _number(m.group(1)) is None:
        return s, ""
    unit = m.group(2).replace(" ", "")
    word = re.match(r"[A-Za-z]+", unit)
    if unit == "%" or (word and (word.group(0).lower() in _UNIT_WORDS
                                 or (len(word.group(0)) >= 3 and word.group(0).lower() not in _MATH_NAMES))):
        return m.group(1).strip(), unit
    return s, ""  # "2x": a single unknown letter is a variable, not a unit


# --- symbolic fallback -----------------------------------------------------------------------

def _sympy_parse(s: str):
    """A sympy expression for a short, whitelisted string, else None. parse_expr evaluates Python code,
    so only digits, operators, parentheses, single-letter symbols and a few math names may reach it."""
    if len(s) > _MAX_SYMBOLIC_CHARS or not re.fullmatch(r"[0-9A-Za-z\s+\-*/^().]*", s):
        return None
    if re.search(r"[A-Za-z)]\s*\.|\.\s*[A-Za-z(]", s):
        return None  # no attribute access, only decimals
    if any(len(name) > 1 and name not in _MATH_NAMES for name in re.findall(r"[A-Za-z]+", s)):
        return None
    import sympy
    from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application, parse_expr, rationalize,
                                            standard_transformations)

    names = {c: sympy.Symbol(c) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"}
    names.update(sqrt=sympy.sqrt, sin=sympy.sin, cos=sympy.cos, tan=sympy.tan, log=sympy.log,
                 ln=sympy.log, exp=sympy.exp, pi=sympy.pi, abs=sympy.Abs)
    allowed = {"__builtins__": {}, "Integer": sympy.Integer, "Float": sympy.Float,
               "Rational": sympy.Rational, "Symbol": sympy.Symbol, "Function": sympy.Function}
    transformations = standard_transformations + (implicit_multiplication_application, convert_xor,
                                                  rationalize)
    expr = parse_expr(s, local_dict=names, global_dict=allowed, transformations=transformations)
    return expr if isinstance(expr, sympy.Expr) else None


def _symbolic_equal(a: str, b: str) -> bool:
    import sympy

    x, y = _sympy_parse(a), _sympy_parse(b)
    if x is None or y is None:
        return False
    diff = x - y
    return bool(diff == 0 or sympy.expand(diff) == 0 or sympy.simplify(diff) == 0)


# --- equivalence -----------------------------------------------------------------------------

_TRUTH = {"yes": True, "true": True, "no": False, "false": False}


def _equal(pred: str, gold: str) -> bool:
    p, g = _normalize(pred), _normalize(gold)
    if not p or not g:
        return False
    if p == g:
        return True
    p_truth, g_truth = _TRUTH.get(p.lower()), _TRUTH.get(g.lower())
    if p_truth is not None or g_truth is not None:
        return p_truth == g_truth
    p_value, p_unit = _split_unit(p)
    g_value, g_unit = _split_unit(g)
    if g_unit == "%":
        gv, pv = _number(g_value), _number(p_value)
        if gv is None or pv is None or p_unit not in ("", "%"):
            return False
        return pv == gv or (p_unit == "" and pv == gv / 100)
    if p_unit and g_unit and p_unit.lower() != g_unit.lower():
        return False
    pv, gv = _number(p_value), _number(g_value)
    if pv is not None and gv is not None:
        return pv == gv
    if p_unit or g_unit:
        return False  # a unit was stripped but one side is not a plain number: no symbolic guessing
    return _symbolic_equal(p, g)


def answers_equal(pred: str | None, gold: str) -> bool:
    """Whether a predicted answer means the same as the gold one (rules in the module docstring)."""
    if pred is None or gold is None:
        return False
    try:
        return _equal(str(pred), str(gold))
    except Exception:  # noqa: BLE001 - arbitrary model output must score as wrong, not crash evaluation
        return False
