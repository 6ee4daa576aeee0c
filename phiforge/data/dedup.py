"""Exact and near-duplicate removal across sources: a hash of the normalised text, then MinHash LSH.

MinHash (Broder 1997) estimates the Jaccard similarity of two pages' word 5-gram sets by how many of `num_perm`
min-hashes agree; LSH cuts each signature into `bands` of `rows` and calls two pages candidates when any band is
identical, which happens with probability 1 - (1 - s^rows)^bands for similarity s. Candidates are then checked on
their full signatures, so the threshold is the estimated Jaccard, not the banding's S-curve.

Written in numpy rather than taken from `datasketch`: `datasketch.MinHash` hashes one document at a time, while here
all shingles of a batch of pages go through each of the `num_perm` permutations in one vectorised pass, and the
minimum per page is one `np.minimum.reduceat`. bench/organic_throughput.py measures both on the same pages.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def exact_key(text: str) -> bytes:
    return hashlib.sha1(normalize(text).encode("utf-8")).digest()


def shingles(text: str, n: int = 5, vocab: dict[str, int] | None = None) -> np.ndarray:
    """The page's distinct word n-grams as 64-bit hashes (FNV-style over per-word ids, then mixed)."""
    vocab = {} if vocab is None else vocab
    words = _WORD.findall(text.lower())
    if not words:
        return np.zeros(0, np.uint64)
    # a word's id is a stable 32-bit hash of it, cached because most words repeat
    ids = np.fromiter((vocab[w] if w in vocab else vocab.setdefault(
        w, int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(), "little")) for w in words),
        dtype=np.uint64, count=len(words))
    if len(ids) < n:
        ids = np.concatenate([ids, np.zeros(n - len(ids), np.uint64)])
    h = np.full(len(ids) - n + 1, 1469598103934665603 & 0xFFFFFFFF, np.uint64)
    for k in range(n):
        h = ((h ^ ids[k: len(ids) - n + 1 + k]) * np.uint64(16777619)) & np.uint64(0xFFFFFFFF)
    return np.unique(_mix64(h))


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: spreads the FNV values over 64 bits, so multiply-shift sees no structure in them
    (without it the estimates came out about 0.01 low on average)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass
class MinHasher:
    num_perm: int = 128
    seed: int = 1
    n: int = 5

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        # Multiply-shift hashing (Dietzfelbinger et al. 1997): the high 32 bits of (a x + b) mod 2^64 with a odd,
        # which uint64 arithmetic computes as is. `(a x + b) mod (2^61 - 1)` with 32-bit a would barely wrap, so each
        # "permutation" would keep nearly the order of x and the estimates would be biased (we measured 0.18 for a
        # true Jaccard of 0.34).
        self.a = rng.integers(0, 1 << 63, self.num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 1 << 63, self.num_perm, dtype=np.uint64)
        self.vocab: dict[str, int] = {}

    def signatures(self, texts: list[str], chunk: int = 1 << 18) -> np.ndarray:
        """(len(texts), num_perm) uint64 signatures; a page without words gets all-max (it matches nothing)."""
        sh = [shingles(t, self.n, self.vocab) for t in texts]
        sig = np.full((len(texts), self.num_perm), np.iinfo(np.uint64).max, np.uint64)
        start = 0
        while start < len(sh):
            # a batch of pages with about `chunk` shingles between them: bounded memory, one pass through numpy
            stop, size = start, 0
            while stop < len(sh) and (size == 0 or size + len(sh[stop]) <= chunk):
                size += len(sh[stop])
                stop += 1
            lens = np.array([len(s) for s in sh[start:stop]])
            nonempty = np.flatnonzero(lens)
            if len(nonempty):
                x = np.concatenate([sh[start + i] for i in nonempty])
                offsets = np.concatenate([[0], np.cumsum(lens[nonempty])[:-1]])
                # One permutation at a time over 1-D arrays, in place: one (shingles x num_perm) matrix, whose
                # minimum.reduceat along axis 0 is slow, was much slower (bench/README.md).
                h, rows = np.empty_like(x), start + nonempty
                for i in range(self.num_perm):
                    np.multiply(x, self.a[i], out=h)
                    h += self.b[i]
                    h >>= np.uint64(32)
                    sig[rows, i] = np.minimum.reduceat(h, offsets)
            start = stop
        return sig


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising false positives + false negatives around the
    threshold, integrated over the S-curve (as datasketch chooses them)."""
    best, best_err = (1, num_perm), float("inf")
    xs = np.linspace(0, 1, 201)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        p = 1 - (1 - xs**rows) ** bands
        fp = np.where(xs < threshold, p, 0).mean()
        fn = np.where(xs >= threshold, 1 - p, 0).mean()
        if fp + fn < best_err:
            best, best_err = (bands, rows), fp + fn
    return best


def near_duplicates(sig: np.ndarray, threshold: float) -> list[int]:
    """For each page the index of the page it duplicates (its cluster's first member), or itself. Earlier pages win,
    so a caller orders pages by preference."""
    n, num_perm = sig.shape
    bands, rows = lsh_params(threshold, num_perm)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    checked: set[tuple[int, int]] = set()
    empty = np.all(sig == np.iinfo(np.uint64).max, axis=1)
    for b in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        band = np.ascontiguousarray(sig[:, b * rows:(b + 1) * rows])
        for i in range(n):
            if not empty[i]:
                buckets[band[i].tobytes()].append(i)
        for members in buckets.values():
            first = members[0]
            for j in members[1:]:
                if (first, j) in checked:
                    continue
                checked.add((first, j))
                if float(np.mean(sig[first] == sig[j])) >= threshold:
                    ri, rj = find(first), find(j)
                    if ri != rj:
                        parent[max(ri, rj)] = min(ri, rj)
    return [find(i) for i in range(n)]


@dataclass
class DedupResult:
    keep: list[bool]
    duplicate_of: list[int | None]  # the kept page a dropped page duplicates
    exact: int
    near: int


def deduplicate(texts: list[str], threshold: float = 0.8, num_perm: int = 128, seed: int = 1) -> DedupResult:
    """Exact duplicates (same normalised text) first, then near-duplicates among the rest; in each group the first
    page is kept."""
    first_of: dict[bytes, int] = {}
    dup_of: list[int | None] = [None] * len(texts)
    for i, t in enumerate(texts):
        k = exact_key(t)
        if k in first_of:
            dup_of[i] = first_of[k]
        else:
            first_of[k] = i
    exact = sum(d is not None for d in dup_of)
    rest = [i for i in range(len(texts)) if dup_of[i] is None]
    sig = MinHasher(num_perm=num_perm, seed=seed).signatures([texts[i] for i in rest])
    roots = near_duplicates(sig, threshold)
    near = 0
    for k, r in enumerate(roots):
        if r != k:
            dup_of[rest[k]] = rest[r]
            near += 1
    return DedupResult([d is None for d in dup_of], dup_of, exact, near)
