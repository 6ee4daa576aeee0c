"""Cleaning and corrupt-text removal (Phi-4 §2.3): n-gram statistics, repeated lines, compression-ratio outliers,
boilerplate.

Phi-4 names the signals, not the thresholds. Ours follow Gopher's published rules (Rae et al. 2021, App. A: the
share of characters in duplicated lines and in the most frequent word n-grams) and C4/RefinedWeb-style boilerplate
lines, plus a compression test: zlib's ratio is low for text that repeats itself and near 1 for binary junk or
base64, and a page far from its feed's median ratio is an outlier whatever its absolute value.

Prose and code are judged differently: code repeats lines (`return None`, `}`) and has few "words", so only the
byte-level tests (control characters, compression, line length) apply to it.
"""

from __future__ import annotations

import math
import re
import statistics
import zlib
from collections import Counter
from dataclasses import dataclass

BOILERPLATE = re.compile(
    r"(cookie|privacy policy|terms of (use|service)|all rights reserved|subscribe to|sign up for|log ?in to|"
    r"click here|javascript|lorem ipsum|follow us|share this|powered by|back to top|skip to (main )?content|"
    r"this (page|site) uses|accept all)",
    re.I,
)
WORD = re.compile(r"\w+", re.UNICODE)
_ALNUM = re.compile(r"[^\W_]")
BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")


@dataclass(frozen=True)
class FilterConfig:
    min_chars: int = 200
    max_bad_char_fraction: float = 0.001  # control characters and U+FFFD: decoding went wrong
    max_dup_line_chars: float = 0.20  # Gopher: characters in lines that occur more than once
    max_top_ngram_chars: tuple[float, float, float] = (0.20, 0.18, 0.16)  # Gopher: most frequent 2-, 3-, 4-gram
    # Gopher drops pages with more than 15% of characters in repeated 5-grams; reference pages and READMEs repeat
    # API names and example lines, and 0.15 dropped half of the installed package pages, most of them sound
    max_dup_5gram_chars: float = 0.30
    min_alpha_words: float = 0.6  # share of words with a letter (Gopher asks 0.8 of web pages; READMEs hold code)
    max_boilerplate_lines: float = 0.3  # share of non-empty lines that are boilerplate, after removing them
    compression: tuple[float, float] = (0.12, 0.85)  # zlib ratio outside this is repetition or binary
    max_compression_z: float = 4.0  # robust z-score of log ratio against the feed's median
    max_line_chars: int = 2000  # minified or binary: one giant line


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8", "replace")
    return len(zlib.compress(raw, 6)) / max(1, len(raw))


def dup_line_fraction(lines: list[str]) -> float:
    """Characters in lines that repeat, over all characters in lines; only lines with a letter or digit count, so
    blank lines and heading underlines are not repetition."""
    stripped = [ln.strip() for ln in lines if _ALNUM.search(ln)]
    counts = Counter(stripped)
    total = sum(map(len, stripped))
    return sum(len(ln) for ln in stripped if counts[ln] > 1) / max(1, total)


def top_ngram_fraction(words: list[str], n: int) -> float:
    """Characters covered by the most frequent word n-gram, over all word characters (Gopher's definition)."""
    if len(words) < n + 1:
        return 0.0
    grams = Counter(zip(*(words[i:] for i in range(n))))
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    return count * sum(map(len, gram)) / max(1, sum(map(len, words)))


def dup_ngram_fraction(words: list[str], n: int) -> float:
    """Characters of words inside an n-gram that occurs more than once."""
    if len(words) < n * 2:
        return 0.0
    grams = list(zip(*(words[i:] for i in range(n))))
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            for j in range(i, i + n):
                covered[j] = True
    return sum(len(w) for w, c in zip(words, covered) if c) / max(1, sum(map(len, words)))


def strip_boilerplate(text: str) -> tuple[str, float]:
    """The text without its short boilerplate lines, and the share of non-empty lines that were boilerplate. Only
    short lines go: a paragraph that mentions cookies is content, a 40-character 'Accept all cookies' is not."""
    lines = text.split("\n")
    nonempty = sum(1 for ln in lines if ln.strip())
    kept, dropped = [], 0
    for ln in lines:
        if ln.strip() and len(ln) < 120 and BOILERPLATE.search(ln):
            dropped += 1
        else:
            kept.append(ln)
    return "\n".join(kept), dropped / max(1, nonempty)


def check(text: str, kind: str, cfg: FilterConfig = FilterConfig()) -> tuple[str | None, str]:
    """(reason the page is corrupt or None, the cleaned text). `kind` is "code" or "prose". The compression-outlier
    test needs the whole feed and is `compression_outliers`."""
    if len(text) < cfg.min_chars:
        return "too_short", text
    if len(BAD_CHARS.findall(text)) > cfg.max_bad_char_fraction * len(text):
        return "bad_characters", text
    ratio = compression_ratio(text)
    if not cfg.compression[0] <= ratio <= cfg.compression[1]:
        return "compression_ratio", text
    lines = text.split("\n")
    if max(map(len, lines)) > cfg.max_line_chars:
        return "long_line", text
    if kind == "code":
        return None, text
    text, boiler = strip_boilerplate(text)
    if boiler > cfg.max_boilerplate_lines:
        return "boilerplate", text
    if len(text) < cfg.min_chars:
        return "too_short", text
    if dup_line_fraction(text.split("\n")) > cfg.max_dup_line_chars:
        return "repeated_lines", text
    words = WORD.findall(text.lower())
    if sum(1 for w in words if not w.isdigit() and not w.startswith("_")) < cfg.min_alpha_words * len(words):
        return "few_words", text
    for n, limit in zip((2, 3, 4), cfg.max_top_ngram_chars):
        if top_ngram_fraction(words, n) > limit:
            return f"top_{n}gram", text
    if dup_ngram_fraction(words, 5) > cfg.max_dup_5gram_chars:
        return "repeated_5grams", text
    return None, text


def compression_outliers(texts: list[str], max_z: float) -> list[bool]:
    """Which texts' log compression ratio lies more than `max_z` robust standard deviations (1.4826 MAD) from the
    median of the batch. Fewer than 20 texts give no reliable spread, so none is an outlier."""
    if len(texts) < 20:
        return [False] * len(texts)
    logs = [math.log(compression_ratio(t)) for t in texts]
    med = statistics.median(logs)
    mad = statistics.median(abs(x - med) for x in logs) * 1.4826
    if mad == 0:
        return [False] * len(texts)
    return [abs(x - med) / mad > max_z for x in logs]
