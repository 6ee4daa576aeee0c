"""Web rewrites (Phi-4 §2.3, Table 5's 15% "web rewrites"): the best pages turned into textbook-style passages with
exercises, each recorded with the page it came from.

With a `Teacher` (an LLM behind `organic.teacher`) the page is rewritten by the model. Offline, `restructure`
does what can be done without one, deterministically: it strips markup the page was published in (badges, links,
reST directives, HTML), keeps the prose and the first code example, lists the page's defining sentences as key
ideas, and turns each into a fill-in-the-blank exercise whose answer is the defined term, with an answer key. It
invents nothing: every statement in the passage is a sentence of the page.
"""

from __future__ import annotations

import re

from phiforge.lm.completions import ChatRequest, Teacher

PROMPT = (
    "Rewrite the following web page as a short, self-contained textbook section for a student: a title, a clear "
    "explanation in full sentences that keeps every fact and code example of the page and adds none, then 2-3 "
    "exercises and their answers. Use Markdown.\n\n<page>\n{page}\n</page>"
)
MAX_PAGE_CHARS = 6000

_MARKUP_LINE = re.compile(r"^\s*(\.\. [\w:-]+::.*|:[\w-]+:.*|\[!\[.*|<[^>]+>\s*|[=\-~^*#`+]{3,}\s*)$")
_TAG = re.compile(r"<[^>\n]+>")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]+\)|<https?://[^>]+>|https?://\S+")
_ROLE = re.compile(r":[\w:]+:`([^`<]+)(?:<[^>]*>)?`")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"'(])")
_DEFINES = re.compile(r"^(?P<term>[A-Za-z_`][\w .`'()/-]{1,60}?) (?P<verb>is|are|returns|means|represents|provides) "
                      r"(?P<rest>.{10,240})$")


def _clean_lines(text: str) -> list[str]:
    out = []
    for ln in text.split("\n"):
        if _MARKUP_LINE.match(ln):
            continue
        ln = _ROLE.sub(r"\1", _LINK.sub(lambda m: m.group(1) or "", _TAG.sub("", ln)))
        ln = re.sub(r"^(\s*>\s?)+|\[!\w+\]\s*", "", ln)  # quote markers and GitHub admonitions
        out.append(ln.rstrip() if ln.strip() else "")
    return out


def _blocks(lines: list[str]) -> list[str]:
    blocks, cur = [], []
    for ln in lines + [""]:
        if ln.strip():
            cur.append(ln)
        elif cur:
            blocks.append("\n".join(cur))
            cur = []
    return blocks


def _is_code(block: str) -> bool:
    lines = block.split("\n")
    return block.lstrip().startswith((">>>", "```", "$ ")) or all(ln.startswith(("    ", "\t")) for ln in lines)


def restructure(page: str, title_hint: str = "") -> str:
    """The deterministic rewrite of one page (see the module docstring); "" when the page has no prose to keep."""
    blocks = _blocks(_clean_lines(page))
    if not blocks:
        return ""
    title = title_hint or blocks[0].split("\n")[0].strip("#*` ")
    prose = [" ".join(b.split()) for b in blocks if not _is_code(b) and len(b.split()) >= 8]
    code = next((b for b in blocks if _is_code(b)), None)
    if not prose:
        return ""
    sentences = [s.strip() for p in prose for s in _SENTENCE.split(p) if len(s.split()) >= 5]
    defining = []
    for s in sentences:
        m = _DEFINES.match(s)
        if m and not m.group("term").lower().startswith(("this", "it", "there", "that", "here", "the following")):
            defining.append(m)
    parts = [f"# {title}", "\n\n".join(prose[:4])]
    if defining:
        parts.append("## Key ideas\n\n" + "\n".join(f"- {m.group(0)}" for m in defining[:5]))
    if code:
        lines = [ln[4:] if ln.startswith("    ") else ln for ln in code.split("\n")]
        body = "\n".join(ln for ln in lines if not ln.strip().startswith("```"))
        parts.append("## Example\n\n```\n" + body + "\n```")
    exercises = defining[:3]
    if exercises:
        parts.append("## Exercises\n\n" + "\n".join(
            f"{k}. Fill in the blank: ____ {m.group('verb')} {m.group('rest')}" for k, m in enumerate(exercises, 1)))
        parts.append("## Answers\n\n" + "\n".join(
            f"{k}. {m.group('term').strip('`')}" for k, m in enumerate(exercises, 1)))
    else:
        parts.append(f"## Exercise\n\n1. In two or three sentences, explain what this section says about {title}.")
    return "\n\n".join(parts) + "\n"


def rewrite(pages: list[tuple[str, str, str]], teacher: Teacher | None = None) -> list[dict]:
    """[(page id, uri, text)] -> one row per page that yielded a passage: {text, method, parent, uri}. An LLM reply
    cut off by its token limit is not a finished passage, so that page falls back to `restructure`."""
    replies = [None] * len(pages)
    if teacher is not None and pages:
        requests = [ChatRequest.user(PROMPT.format(page=t[:MAX_PAGE_CHARS]), max_tokens=1024) for _, _, t in pages]
        replies = teacher.complete(requests)
    rows = []
    for (pid, uri, text), reply in zip(pages, replies):
        if reply is not None and reply.finish_reason != "length" and reply.text.strip():
            body, method = reply.text.strip() + "\n", teacher.name
        else:
            body, method = restructure(text), "restructure"
        if body:
            rows.append({"text": body, "method": method, "parent": pid, "uri": uri})
    return rows
