"""Benchmark decontamination of training text: the hybrid 13-gram / 7-gram test of Phi-4 App. B.1 (after Phi-3).

Per training document, on normalised words (see `normalize`):

* CONTAMINATED ("13gram") if any 13-gram of the document is a 13-gram of some benchmark item and is not allow-listed;
* otherwise ratio = max over items of |7g(doc) & 7g(item)| / min(|7g(doc)|, |7g(item)|) over distinct 7-grams:
  ratio > info_threshold flags the document, CONTAMINATED if ratio >= contaminated_threshold else PARTIAL.
  Allow-listed 7-grams never count as shared: otherwise a short multiple-choice item whose 13 words of boilerplate
  are allow-listed would still flag, through the boilerplate's seven 7-grams, every document quoting it.

`BenchmarkIndex` does this on 64-bit n-gram hashes in sorted numpy arrays, many documents per numpy call;
`NaiveIndex` is the definition in plain Python, the tests' oracle and the bench's baseline. Ties go to the lowest
item (input order) and the reported n-gram is the first shared one in document order, so both give equal Verdicts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import unicodedata
import zipfile
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from phiforge.errors import PhiforgeError

CLEAN, PARTIAL, CONTAMINATED = "CLEAN", "PARTIAL", "CONTAMINATED"
LONG, SHORT = 13, 7

# Neither report publishes thresholds. The ratio is the share of the smaller side's 7-word windows copied verbatim.
# An item with one word changed every k words keeps (k - 7) / k of its 7-grams and no 13-gram once k <= 13: k = 9
# gives 0.22, k = 13 gives 0.46. So 0.2 still catches a paraphrase touching every ninth word, while unrelated text
# practically never shares a fifth of an item's 7-word windows (bench/decontam_throughput.py measures the false-
# positive rate). 0.5 = half the item in verbatim runs, which regular edits reach only when 13-grams survive too:
# CONTAMINATED-by-7gram means clustered edits or an item too short for 13-grams, i.e. a copy, not a neighbour.
INFO_THRESHOLD = 0.2
CONTAMINATED_THRESHOLD = 0.5
# An n-gram in >= 10 distinct items is the benchmark's template ("a i only b ii only c iii only d ii and iii"), not
# one item's content. 2 would also allow-list near-duplicate items (one stem, other numbers), whose stems are exactly
# what leaks; real boilerplate recurs in hundreds of items, far above 10.
ALLOW_MIN_ITEMS = 10
_FORMAT = 1
_META = ("benchmarks", "item_ids", "item_benchmark")
_PARTS = ("keys", "ptr", "items", "allow")

_WORD = re.compile(r"[^\W_]+")
# Lower-cases A-Z and blanks every other non-alphanumeric byte: for ASCII text, where NFKC is the identity and
# casefold is lower(), translate + split yields exactly normalize()'s words, several times faster than the regex.
_ASCII = bytes(c + 32 if 65 <= c <= 90 else c if 48 <= c <= 57 or 97 <= c <= 122 else 32 for c in range(256))
# Odd, so multiplying by it is a bijection mod 2**64: no word's contribution to a window hash is ever lost.
_MULT = np.uint64(0x9E3779B97F4A7C15)
# Simple tabulation hashing of words: the sum mod 2**64 of one fixed random value per (offset in word mod 64, byte).
# Vectorised over a chunk's bytes it beats a Python dict of per-word hashes (bench/decontam_throughput.py); SHAKE-256
# makes the table, so a saved index stays valid in any process, platform or numpy version.
# The seed names the module as it was first called: changing it would change every hash.
_TABLE = np.frombuffer(hashlib.shake_256(b"phiforge.decontam words v1").digest(64 * 256 * 8), "<u8")


def normalize(text: str) -> list[str]:
    """The words n-grams are made of: NFKC, casefold, then maximal runs of Unicode letters and digits.

    NFKC folds compatibility variants (fullwidth "Ｘ", ligature "ﬁ", superscript "²", no-break spaces) to plain
    forms and casefold lower-cases beyond ASCII ("Straße" == "STRASSE"), so a benchmark copied through another
    renderer or keyboard still matches. Everything that is not a letter or digit (punctuation, maths symbols,
    underscores, whitespace of any kind and length) only separates words, so re-punctuated or re-spaced copies
    match too. Numbers stay, digit for digit, as words: many maths items differ from each other only in their
    numbers, so dropping them would merge distinct items. Separators inside numbers split them ("3.5" -> "3", "5";
    "1,000" -> "1", "000") and symbols vanish ("x + 5" == "x - 5"): such merges can only add matches, and in
    decontamination a spurious match costs one training document while a missed one inflates a reported score.
    """
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def _encode(text: str) -> bytes:
    """normalize(text)'s words as UTF-8 between spaces; ASCII text takes one translate() instead of the regex."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII)
    return " ".join(normalize(text)).encode("utf-8", "surrogatepass")


def _hash_words(encoded: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """The hash of every word of the encoded documents, in order, and where each document's words end."""
    buf = np.frombuffer(b" ".join(encoded) + b" ", np.uint8)
    inword = buf != 32
    edge = np.diff(inword.view(np.int8), prepend=np.int8(0))
    starts = np.flatnonzero(edge == 1)
    lens = np.flatnonzero(edge == -1) - starts
    at = np.flatnonzero(inword)
    total = np.cumsum(_TABLE[((at - np.repeat(starts, lens)) & 63) << 8 | buf[at]])
    last = np.cumsum(lens) - 1
    words = total[last]
    words[1:] -= total[last[:-1]]
    doc_ends = np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)) + 1) - 1  # the separating spaces
    return words, np.searchsorted(starts, doc_ends)


def _ngram_hashes(words: np.ndarray, n: int) -> np.ndarray:
    """Hash of every n-word window, sum_j words[i + j] * M**(n-1-j) mod 2**64, vectorised over positions."""
    m = len(words) - n + 1
    if m <= 0:
        return np.empty(0, np.uint64)
    h = words[:m].copy()
    for j in range(1, n):
        h *= _MULT
        h += words[j:j + m]
    return h


def _postings(hashes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted unique keys, CSR offsets, item ids ascending within each key) from per-item unique hash arrays."""
    h, i = np.concatenate(hashes), np.repeat(np.arange(len(hashes), dtype=np.int32), [len(g) for g in hashes])
    order = np.lexsort((i, h))
    h, i = h[order], i[order]
    keys, starts = np.unique(h, return_index=True)
    return keys, np.append(starts, len(h)).astype(np.int64), i


@dataclass(frozen=True)
class Verdict:
    status: str  # CLEAN | PARTIAL | CONTAMINATED
    reason: str | None = None  # "13gram" | "7gram"; None when CLEAN
    benchmark: str | None = None
    item_id: str | None = None
    ratio: float = 0.0  # 7-gram ratio with the reported item; for CLEAN the best ratio of any item
    ngram: str | None = None  # first shared n-gram in document order, as normalised words


class _Index:
    """Index(items, info_threshold=0.2, contaminated_threshold=0.5, allow_min_items=10, allow_list=()).

    items: (benchmark, item_id, text) triples. Allow-listed n-grams never match: those in >= allow_min_items
    distinct items (None: none), those of the allow_list phrases (>= 13 words each), and what allow_*() add later."""

    def __init__(self, items: Iterable[tuple[str, str, str]], *, info_threshold: float = INFO_THRESHOLD,
                 contaminated_threshold: float = CONTAMINATED_THRESHOLD, allow_min_items: int | None = ALLOW_MIN_ITEMS,
                 allow_list: Iterable[str] = ()):
        items = list(items)
        for n, item in enumerate(items):
            if not (isinstance(item, (tuple, list)) and len(item) == 3 and all(isinstance(x, str) for x in item)):
                raise PhiforgeError(f"benchmark item #{n} must be a (benchmark, item_id, text) triple of strings, "
                                    f"got {item!r:.80}")
        for (bench, item_id), count in Counter((b, i) for b, i, _ in items).most_common(1):
            if count > 1:
                raise PhiforgeError(f"benchmark item {bench}/{item_id} appears {count} times: ids must be unique")
        if not items:
            raise PhiforgeError("no benchmark items to decontaminate against")
        names, self.item_ids, texts = (list(column) for column in zip(*items))
        self.benchmarks = sorted(set(names))
        code = {b: i for i, b in enumerate(self.benchmarks)}
        self.item_benchmark = [code[b] for b in names]
        self.set_thresholds(info_threshold, contaminated_threshold)
        if allow_min_items is not None and (not isinstance(allow_min_items, int) or allow_min_items < 2):
            raise PhiforgeError(f"allow_min_items must be an integer >= 2 or None, got {allow_min_items!r}")
        self.allow_min_items = allow_min_items
        self._build(texts)
        self.allow_phrases(allow_list)

    def set_thresholds(self, info_threshold: float, contaminated_threshold: float) -> None:
        if not 0.0 <= info_threshold < contaminated_threshold <= 1.0:
            raise PhiforgeError(f"need 0 <= info_threshold < contaminated_threshold <= 1, got {info_threshold}, "
                                f"{contaminated_threshold}")
        self.info_threshold, self.contaminated_threshold = float(info_threshold), float(contaminated_threshold)

    def _verdict(self, reason: str | None, item: int, ratio: float, ngram: str | None) -> Verdict:
        if reason is None and ratio <= self.info_threshold:
            return Verdict(CLEAN, ratio=ratio)
        status = CONTAMINATED if reason or ratio >= self.contaminated_threshold else PARTIAL
        return Verdict(status, reason or "7gram", self.benchmarks[self.item_benchmark[item]], self.item_ids[item],
                       ratio, ngram)

    @staticmethod
    def _phrase_words(phrases: Iterable[str]) -> Iterator[list[str]]:
        for phrase in [phrases] if isinstance(phrases, str) else phrases:
            words = normalize(phrase)
            if len(words) < LONG:
                raise PhiforgeError(f"allow-list phrase {phrase!r:.80} has {len(words)} words, under one {LONG}-gram")
            yield words

    @staticmethod
    def _check_min_docs(min_docs: int) -> None:
        if not isinstance(min_docs, int) or min_docs < 2:
            raise PhiforgeError(f"min_docs must be an integer >= 2, got {min_docs!r}: 1 allow-lists all contamination")

    def check(self, text: str) -> Verdict:
        return self.check_many([text])[0]

    def check_many(self, texts: Iterable[str]) -> list[Verdict]:
        return list(self.iter_check(texts))

    def iter_check(self, texts: Iterable[str]) -> Iterator[Verdict]:
        return map(self.check, texts)


class BenchmarkIndex(_Index):
    """Benchmark n-gram hashes for n = 13 and 7: sorted uint64 keys, each with its items (CSR postings)."""

    def _build(self, texts: list[str]) -> None:
        grams: dict[int, list] = {LONG: [], SHORT: []}
        for chunk in _chunks(texts):
            words, ends = _hash_words([_encode(t) for t in chunk])
            for lo, hi in zip([0, *ends[:-1].tolist()], ends.tolist()):
                for n in grams:
                    grams[n].append(np.unique(_ngram_hashes(words[lo:hi], n)))
        self._n7 = np.array([len(g) for g in grams[SHORT]], np.int64)
        self._keys, self._ptr, self._items, self._allow = {}, {}, {}, {}
        for n, per_item in grams.items():
            self._keys[n], self._ptr[n], self._items[n] = _postings(per_item)
            self._allow[n] = np.diff(self._ptr[n]) >= (self.allow_min_items or len(texts) + 1)
        self._filters()

    def _filters(self) -> None:
        # One-hash Bloom tables on the top bits: ~1.5% of clean positions go on to the binary search instead of all.
        self._tables = {}
        for n, keys in self._keys.items():
            bits = int(np.clip(np.ceil(np.log2(max(len(keys), 1) * 64)), 16, 26))
            table, shift = np.zeros(1 << bits, bool), np.uint64(64 - bits)
            table[keys >> shift] = True
            self._tables[n] = table, shift

    @property
    def allowed(self) -> dict[int, int]:
        """How many benchmark 13-grams and 7-grams are allow-listed, i.e. never count as a match."""
        return {n: int(a.sum()) for n, a in self._allow.items()}

    @property
    def undetectable(self) -> list[tuple[str, str]]:  # items under 7 words: no document can ever match them
        return [(self.benchmarks[self.item_benchmark[k]], self.item_ids[k]) for k in np.flatnonzero(self._n7 == 0)]

    def allow_phrases(self, phrases: Iterable[str]) -> None:
        for words in self._phrase_words(phrases):
            for n in (LONG, SHORT):
                self._allow[n] |= np.isin(self._keys[n], _ngram_hashes(_hash_words([_encode(" ".join(words))])[0], n))

    def allow_common_train_ngrams(self, texts: Iterable[str], min_docs: int) -> None:
        """Allow-list benchmark n-grams in >= min_docs distinct training documents (licences, quotations...). Keep
        min_docs far above how often one leaked item may be copied, or widely copied items get allow-listed too."""
        self._check_min_docs(min_docs)
        counts = {n: np.zeros(len(keys), np.int64) for n, keys in self._keys.items()}
        for chunk in _chunks(texts):
            words, ends = _hash_words([_encode(t) for t in chunk])
            for n, c in counts.items():
                _, _, key, doc = self._find(words, ends, n)
                c += np.bincount(np.unique(doc * len(c) + key) % max(len(c), 1), minlength=len(c))
        for n, c in counts.items():
            self._allow[n] |= c >= min_docs

    def _find(self, words: np.ndarray, ends: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
        """The chunk's n-gram hashes, and for those in the index, not allow-listed and inside one document (windows
        of the joined chunk also straddle documents): positions (ascending), keys and documents."""
        h, keys, (table, shift) = _ngram_hashes(words, n), self._keys[n], self._tables[n]
        pos = np.flatnonzero(table[h >> shift])  # empty when keys is: its table is all False
        at = np.minimum(np.searchsorted(keys, h[pos]), len(keys) - 1)
        found = keys[at] == h[pos]
        pos, at = pos[found], at[found]
        doc = np.searchsorted(ends, pos, side="right")
        keep = (pos + n <= ends[np.minimum(doc, len(ends) - 1)]) & ~self._allow[n][at]
        return h, pos[keep], at[keep], doc[keep]

    def iter_check(self, texts: Iterable[str]) -> Iterator[Verdict]:
        """Verdicts in input order, ~1 MB of text per batch so numpy's per-call cost is amortised."""
        for chunk in _chunks(texts):
            yield from self._check_chunk([_encode(t) for t in chunk])

    def _check_chunk(self, docs: list[bytes]) -> list[Verdict]:
        words, ends = _hash_words(docs)
        starts = np.concatenate(([0], ends[:-1]))
        _, pos, key, doc = self._find(words, ends, LONG)
        doc13, first = np.unique(doc, return_index=True)  # positions ascend: each doc's first hit
        hit13 = zip(doc13.tolist(), pos[first].tolist(), key[first].tolist())
        h7, pos7, key7, doc7 = self._find(words, ends, SHORT)
        ptr, items, n_items = self._ptr[SHORT], self._items[SHORT], len(self._n7)
        pair_keys, shared, n_doc7, best = np.empty(0, np.int64), None, {}, {}
        if pos7.size:
            pairs = np.unique(doc7 * len(ptr) + key7)  # distinct (doc, 7-gram)
            pdoc, pkey = np.divmod(pairs, len(ptr))
            lo, cnt = ptr[pkey], np.diff(ptr)[pkey]
            offsets = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt) + np.arange(cnt.sum())
            pair_keys, shared = np.unique(np.repeat(pdoc, cnt) * n_items + items[offsets], return_counts=True)
            pair_doc, pair_item = np.divmod(pair_keys, n_items)
            n_doc7 = {d: len(np.unique(h7[starts[d]:ends[d] - SHORT + 1])) for d in np.unique(pair_doc).tolist()}
            ratio = shared / np.minimum([n_doc7[d] for d in pair_doc.tolist()], self._n7[pair_item])
            order = np.lexsort((pair_item, -ratio, pair_doc))  # per doc: best ratio, then lowest item
            top = order[np.unique(pair_doc[order], return_index=True)[1]]
            best = dict(zip(pair_doc[top].tolist(), zip(pair_item[top].tolist(), ratio[top].tolist())))

        out: list = [Verdict(CLEAN)] * len(docs)
        for d, (item, r) in best.items():
            ngram = None
            if r > self.info_threshold:
                lo, hi = np.searchsorted(doc7, [d, d + 1])
                for p, k in zip(pos7[lo:hi].tolist(), key7[lo:hi].tolist()):
                    if item in items[ptr[k]:ptr[k + 1]]:
                        ngram = self._join(docs[d], p - int(starts[d]), SHORT)
                        break
            out[d] = self._verdict(None, item, r, ngram)
        for d, p, k in hit13:
            item = int(self._items[LONG][self._ptr[LONG][k]])  # postings ascend, so this is the lowest item
            at = np.searchsorted(pair_keys, d * n_items + item)
            found = at < len(pair_keys) and pair_keys[at] == d * n_items + item
            r = int(shared[at]) / min(n_doc7[d], int(self._n7[item])) if found else 0.0
            out[d] = self._verdict("13gram", item, r, self._join(docs[d], p - int(starts[d]), LONG))
        return out

    @staticmethod
    def _join(encoded: bytes, at: int, n: int) -> str:
        return b" ".join(encoded.split()[at:at + n]).decode("utf-8", "surrogatepass")

    def save(self, path: str | Path) -> None:
        """One .npz, written to a temporary file beside `path` and renamed, so readers never see half an index."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": _FORMAT, "info_threshold": self.info_threshold, "allow_min_items": self.allow_min_items,
                "contaminated_threshold": self.contaminated_threshold}
        arrays = {f"{part}{n}": getattr(self, f"_{part}")[n] for part in _PARTS for n in (LONG, SHORT)}
        arrays.update({k: np.array(getattr(self, k)) for k in _META}, meta=np.array(json.dumps(meta)), n7=self._n7)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> BenchmarkIndex:
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            meta = json.loads(str(data["meta"]))
            self = cls.__new__(cls)
            for part in _PARTS:
                setattr(self, f"_{part}", {n: data[f"{part}{n}"] for n in (LONG, SHORT)})
            self.benchmarks, self.item_ids, self.item_benchmark = (data[k].tolist() for k in _META)
            self._n7 = data["n7"]
        except FileNotFoundError:
            raise PhiforgeError(f"decontamination index {path} does not exist: build and save one first") from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise PhiforgeError(f"{path} is not a phiforge decontamination index ({e!r:.200})") from None
        if meta.get("format") != _FORMAT:
            raise PhiforgeError(f"{path} has index format {meta.get('format')}, this phiforge reads {_FORMAT}: rebuild")
        self.set_thresholds(meta["info_threshold"], meta["contaminated_threshold"])
        self.allow_min_items = meta["allow_min_items"]
        self._filters()
        return self


def _chunks(texts: Iterable[str], max_chars: int = 1_000_000, max_docs: int = 20_000) -> Iterator[list[str]]:
    chunk, size = [], 0
    for n, text in enumerate(texts):
        if not isinstance(text, str):
            raise PhiforgeError(f"training document #{n} is a {type(text).__name__}, expected text (str)")
        chunk.append(text)
        size += len(text)
        if size >= max_chars or len(chunk) >= max_docs:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _grams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


class NaiveIndex(_Index):
    """The definition in plain Python: word tuples in sets and dicts, one document at a time. Oracle and baseline."""

    def _build(self, texts: list[str]) -> None:
        self._post: dict[int, dict[tuple, set[int]]] = {LONG: defaultdict(set), SHORT: defaultdict(set)}
        self._item7: list[set[tuple]] = []
        for k, text in enumerate(texts):
            words = normalize(text)
            self._item7.append(set(_grams(words, SHORT)))
            for n, post in self._post.items():
                for g in _grams(words, n):
                    post[g].add(k)
        least = self.allow_min_items or len(texts) + 1
        self._allowed = {g for post in self._post.values() for g, its in post.items() if len(its) >= least}

    def allow_phrases(self, phrases: Iterable[str]) -> None:
        for words in self._phrase_words(phrases):
            self._allowed.update(g for n in (LONG, SHORT) for g in _grams(words, n) if g in self._post[n])

    def allow_common_train_ngrams(self, texts: Iterable[str], min_docs: int) -> None:
        self._check_min_docs(min_docs)
        docs = Counter(g for t in texts for n in self._post for g in set(_grams(normalize(t), n)) if g in self._post[n])
        self._allowed.update(g for g, count in docs.items() if count >= min_docs)

    def check(self, text: str) -> Verdict:
        words = normalize(text)
        doc7 = set(_grams(words, SHORT))
        shared = Counter(k for g in doc7 if g not in self._allowed for k in self._post[SHORT].get(g, ()))
        ratio = {k: c / min(len(doc7), len(self._item7[k])) for k, c in shared.items()}
        for g in _grams(words, LONG):
            if g in self._post[LONG] and g not in self._allowed:
                item = min(self._post[LONG][g])
                return self._verdict("13gram", item, ratio.get(item, 0.0), " ".join(g))
        best_item, best = -1, 0.0
        for k in sorted(ratio):
            if ratio[k] > best:
                best_item, best = k, ratio[k]
        if best <= self.info_threshold:
            return Verdict(CLEAN, ratio=best)
        counted = self._item7[best_item] - self._allowed
        ngram = next(" ".join(g) for g in _grams(words, SHORT) if g in counted)
        return self._verdict(None, best_item, best, ngram)


def decontaminate(docs: Iterable[dict], index: _Index, text_key: str = "text", *, rank: int = 0,
                  world_size: int = 1, drop_partial: bool = True) -> tuple[list[dict], list, dict]:
    """This rank's documents split into kept and (document, Verdict) flagged, and counts for the report. Document i
    belongs to rank i % world_size, so world_size processes reading one stream cover it exactly once. PARTIAL
    documents are dropped unless drop_partial=False: they carry a fifth or more of an item verbatim."""
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise PhiforgeError(f"need 0 <= rank < world_size, got rank={rank!r} world_size={world_size!r}")
    pending: deque[dict] = deque()  # read but not yet judged: at most one chunk

    def texts() -> Iterator[str]:
        for i, doc in enumerate(docs):
            if i % world_size != rank:
                continue
            if not isinstance(doc, dict) or not isinstance(doc.get(text_key), str):
                raise PhiforgeError(f"training document #{i} has no text field {text_key!r} "
                                    f"(has: {list(doc)[:10] if isinstance(doc, dict) else type(doc).__name__})")
            pending.append(doc)
            yield doc[text_key]

    kept, flagged = [], []
    stats: dict = {"status": {CLEAN: 0, PARTIAL: 0, CONTAMINATED: 0}, "reason": {"13gram": 0, "7gram": 0},
                   "benchmark": {}}
    for verdict in index.iter_check(texts()):
        doc = pending.popleft()
        stats["status"][verdict.status] += 1
        if verdict.status != CLEAN:
            stats["reason"][verdict.reason] += 1
            stats["benchmark"].setdefault(verdict.benchmark, {PARTIAL: 0, CONTAMINATED: 0})[verdict.status] += 1
        if verdict.status == CONTAMINATED or (verdict.status == PARTIAL and drop_partial):
            flagged.append((doc, verdict))
        else:
            kept.append(doc)
    stats.update(docs=len(kept) + len(flagged), kept=len(kept), flagged=len(flagged))
    return kept, flagged, stats


# -- the pipeline stage -------------------------------------------------------------------------------------


def training_text(kind: str, row: dict) -> str:
    """What a model trains on from one synth sample: the document, every turn of the conversation, or the question
    (PTS questions reach training as DPO prompts)."""
    if kind == "sft":
        messages = row["messages"]
        messages = json.loads(messages) if isinstance(messages, str) else messages
        return "\n".join(m["content"] for m in messages)
    return row["text"] if kind == "pretrain" else row["question"]
