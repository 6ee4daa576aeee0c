"""The educational-value filter (Phi-4 §2.3): a teacher labels a sample of pages, a small linear model learns the
labels, and the model scores every page.

Phi-4 trains small non-LLM classifiers on about 10^6 LLM annotations because an LLM cannot read the whole web; the
classifier is the cheap student of an expensive labeller. Here the labeller asks a `Teacher` (phiforge/lm/teachers.py)
to rate each page 0-5. By default that teacher is `HeuristicRater`, a programmatic rater of explanation and example
density that runs offline; with `organic.teacher` it is any OpenAI-compatible LLM server.

The student is logistic regression on hashed word 1-2-grams (log term frequency, L2-normalised), trained by full-batch
Adam in numpy. Written here rather than taken from scikit-learn: it is fifty lines, the features are the point, and
phiforge does not otherwise need scipy/scikit-learn.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

from phiforge.errors import PhiforgeError
from phiforge.lm.completions import ChatRequest, Completion, Teacher

PROMPT = (
    "Rate how useful the following page would be for teaching a student, from 0 (no educational value: navigation, "
    "licences, changelogs, adverts, lists of links) to 5 (a clear explanation with definitions and worked examples). "
    "Reply with 'Score: N' and nothing else.\n\n<page>\n{page}\n</page>"
)
SCORE = re.compile(r"score\s*[:=]?\s*([0-5])", re.I)
PAGE = re.compile(r"<page>\n(.*)\n</page>", re.S)
MAX_PAGE_CHARS = 4000  # what a labeller sees of a page: enough to judge, cheap to send

_TEACHING = re.compile(
    r"\b(for example|e\.g\.|such as|is defined|is called|means|returns?|because|therefore|note that|in other words|"
    r"this is|which is|you can|we can|example|consider|suppose|the result|instead of|used to|allows?)\b", re.I)
_JUNK = re.compile(
    r"(licen[cs]e|copyright|warrant|changelog|release notes|version \d|bug ?fix|deprecat|pull request|badge|"
    r"https?://|pip install|sponsor|donate|\[!\[|\bv\d+\.\d+)", re.I)


_SENTENCE = re.compile(r"[A-Z][^.!?]{20,400}[.!?](?=\s)")


def heuristic_score(text: str) -> int:
    """0-5 from the density of teaching phrases and of complete sentences against licence/changelog/link noise."""
    words = max(1, len(text.split()))
    teach = len(_TEACHING.findall(text)) / words * 100  # per 100 words
    junk = len(_JUNK.findall(text)) / words * 100
    sentences = _SENTENCE.findall(text)
    prose = sum(map(len, sentences)) / max(1, len(text))
    score = 1.0 + min(2.0, teach) + min(2.0, prose * 4) - min(3.0, junk / 3)
    return int(max(0, min(5, round(score))))


class HeuristicRater:
    """A `Teacher` that answers `PROMPT` with `heuristic_score` of the page in it: the offline labeller."""

    name = "heuristic-edu"

    def complete(self, requests: list[ChatRequest]) -> list[Completion]:
        out = []
        for r in requests:
            m = PAGE.search(r.messages[-1]["content"])
            if m is None:
                raise PhiforgeError("HeuristicRater only answers educational-value rating prompts (no <page> found)")
            out.append(Completion(f"Score: {heuristic_score(m.group(1))}", "stop", 0, 3))
        return out


def label(teacher: Teacher, texts: list[str], threshold: int) -> tuple[list[int | None], list[int | None]]:
    """(scores 0-5, binary labels score >= threshold) per text; None where the teacher's reply had no score."""
    requests = [ChatRequest.user(PROMPT.format(page=t[:MAX_PAGE_CHARS]), max_tokens=8) for t in texts]
    scores: list[int | None] = []
    for c in teacher.complete(requests):
        m = SCORE.search(c.text)
        scores.append(int(m.group(1)) if m else None)
    return scores, [None if s is None else int(s >= threshold) for s in scores]


# -- features -------------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z]+|\d+|[^\sa-z\d]", re.I)


def _hash(s: str, dim: int) -> int:
    # crc32, not hash(): Python salts str hashes per process, and a model must mean the same thing in every process
    return zlib.crc32(s.encode("utf-8")) % dim


def featurize(texts: list[str], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (indptr, indices, values) of hashed unigrams and bigrams, log(1 + count), each row L2-normalised."""
    indptr, indices, values = [0], [], []
    cache: dict[str, int] = {}
    for t in texts:
        toks = [w.lower() for w in _TOKEN.findall(t[:20000])]
        keys = toks + [a + " " + b for a, b in zip(toks, toks[1:])]
        ids = np.fromiter((cache[k] if k in cache else cache.setdefault(k, _hash(k, dim)) for k in keys),
                          dtype=np.int64, count=len(keys))
        uniq, counts = np.unique(ids, return_counts=True)
        v = np.log1p(counts.astype(np.float64))
        v /= max(1e-12, float(np.linalg.norm(v)))
        indices.append(uniq)
        values.append(v)
        indptr.append(indptr[-1] + len(uniq))
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    return np.asarray(indptr, np.int64), cat(indices, np.int64), cat(values, np.float64)


@dataclass
class EduClassifier:
    weights: np.ndarray
    bias: float
    dim: int

    @classmethod
    def fit(cls, texts: list[str], labels: list[int], dim: int = 1 << 18, l2: float = 1e-4, steps: int = 300,
            lr: float = 0.05) -> EduClassifier:
        """Logistic regression by full-batch Adam, classes weighted to balance (the labels are often skewed)."""
        if len(set(labels)) < 2:
            raise PhiforgeError(f"the educational-value labels are all {labels[0] if labels else 'missing'}: "
                                "a classifier needs both classes (label more pages or change organic.edu_threshold)")
        indptr, idx, val = featurize(texts, dim)
        y = np.asarray(labels, np.float64)
        pos = y.mean()
        sw = np.where(y == 1, 0.5 / pos, 0.5 / (1 - pos)) / len(y)
        row = np.repeat(np.arange(len(y)), np.diff(indptr))
        w, b = np.zeros(dim), 0.0
        m, v, mb, vb = np.zeros(dim), np.zeros(dim), 0.0, 0.0
        for t in range(1, steps + 1):
            z = np.bincount(row, weights=w[idx] * val, minlength=len(y)) + b
            r = (1 / (1 + np.exp(-z)) - y) * sw
            g = np.bincount(idx, weights=val * r[row], minlength=dim) + l2 * w
            gb = float(r.sum())
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            mb, vb = 0.9 * mb + 0.1 * gb, 0.999 * vb + 0.001 * gb * gb
            c1, c2 = 1 - 0.9**t, 1 - 0.999**t
            w -= lr * (m / c1) / (np.sqrt(v / c2) + 1e-8)
            b -= lr * (mb / c1) / (np.sqrt(vb / c2) + 1e-8)
        return cls(w, b, dim)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        indptr, idx, val = featurize(texts, self.dim)
        row = np.repeat(np.arange(len(texts)), np.diff(indptr))
        z = np.bincount(row, weights=self.weights[idx] * val, minlength=len(texts)) + self.bias
        return 1 / (1 + np.exp(-z))


def binary_metrics(pred: list[int] | np.ndarray, gold: list[int] | np.ndarray) -> dict:
    p, g = np.asarray(pred, bool), np.asarray(gold, bool)
    tp, fp, fn = int((p & g).sum()), int((p & ~g).sum()), int((~p & g).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"n": int(len(g)), "accuracy": round(float((p == g).mean()) if len(g) else 0.0, 4),
            "precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4)}


def evaluate(clf: EduClassifier, texts: list[str], gold: list[int]) -> dict:
    """The classifier against two trivial baselines on held-out labels: the majority class, and 'keep everything'
    (recall 1, precision = the share of good pages), which is what no filter does."""
    pred = (clf.predict_proba(texts) >= 0.5).astype(int)
    majority = int(np.mean(gold) >= 0.5)
    return {"classifier": binary_metrics(pred, gold),
            "majority_class": binary_metrics([majority] * len(gold), gold),
            "keep_all": binary_metrics([1] * len(gold), gold)}
