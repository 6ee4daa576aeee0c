"""Ingestion: real text that is on every machine, or that the user points at, as pages of one schema.

Phi-4 keeps organic data next to its synthetic data (web 15%, code 20%, acquired books and papers 10%; Table 5).
Without a hub, the organic text every Python machine has is:

- `stdlib_code`: the CPython standard library's `.py` files (code);
- `stdlib_docs`: each standard-library module's docstrings gathered into one page (web-like reference pages);
- `package_pages`: the long description of every installed distribution, the page PyPI shows for it (web pages:
  READMEs with badges, licences, changelogs and duplicates, the mess a web filter exists for); not in the default
  feeds, because it changes with whatever is installed;
- `pydoc_topics`: `pydoc_data.topics`, the language reference's chapters (book-like);
- a local folder of `.txt`/`.md`, `.jsonl` or `.parquet` files (`organic.local`), as any source.

Each feed yields `Page`s in a fixed order, so a capped feed is the same sample on every run; the cap takes files in
the order of a hash of their path, so a small cap still spreads over the whole library instead of its first letters.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from phiforge.errors import PhiforgeError

SOURCES = ("web", "code", "acquired")  # Table 5's organic categories a feed can be filed under


@dataclass(frozen=True)
class Page:
    id: str  # stable: the feed and where the text came from
    text: str
    source: str  # web | code | acquired
    feed: str  # which feed produced it
    uri: str  # where it came from (file path, distribution, topic): the provenance of everything made from it
    meta: dict = field(default_factory=dict, compare=False)


def page_id(feed: str, uri: str) -> str:
    return f"{feed}-{hashlib.sha256(uri.encode()).hexdigest()[:16]}"


def _spread(paths: list[Path], root: Path) -> list[Path]:
    return sorted(paths, key=lambda p: hashlib.sha256(str(p.relative_to(root)).encode()).digest())


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=1)
def _stdlib_files() -> tuple[Path, list[Path]]:
    root = stdlib_root()
    skip = {"site-packages", "dist-packages", "__pycache__", "idlelib", "lib2to3"}
    files = []
    for d, dirs, names in os.walk(root):  # os.walk prunes skipped folders; Path.rglob would enter them
        dirs[:] = sorted(x for x in dirs if x not in skip)
        files += [Path(d, n) for n in names if n.endswith(".py")]
    return root, _spread(files, root)


def _capped(pages: Iterator[Page], max_bytes: int) -> Iterator[Page]:
    """Pages until `max_bytes` of text (UTF-8) have been given; 0 means no cap."""
    total = 0
    for p in pages:
        if max_bytes and total >= max_bytes:
            return
        total += len(p.text.encode("utf-8"))
        yield p


def stdlib_code(max_bytes: int = 0) -> Iterator[Page]:
    root, files = _stdlib_files()

    def pages() -> Iterator[Page]:
        for path in files:
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # a few test fixtures are deliberately not UTF-8
            rel = str(path.relative_to(root))
            yield Page(page_id("stdlib_code", rel), text, "code", "stdlib_code", f"stdlib:{rel}")

    return _capped(pages(), max_bytes)


def module_docs(source: str, title: str) -> str:
    """A module's docstrings as one reference page: the module's, then each class's and function's under a heading
    with its signature. Empty when the module documents nothing."""
    tree = ast.parse(source)
    parts = []
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(f"{title}\n{'=' * len(title)}\n\n{doc}")
    # module-level definitions and methods, not nested helpers: what a reference page documents
    nodes = [n for top in tree.body for n in ([top, *top.body] if isinstance(top, ast.ClassDef) else [top])]
    for node in nodes:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            d = ast.get_docstring(node)
            if not d:
                continue
            if isinstance(node, ast.ClassDef):
                head = f"class {node.name}"
            else:
                head = f"{node.name}({', '.join(a.arg for a in node.args.args)})"
            parts.append(f"{head}\n{'-' * len(head)}\n\n{d}")
    return "\n\n".join(parts) if doc or len(parts) > 1 else ""


def stdlib_docs(max_bytes: int = 0) -> Iterator[Page]:
    root, files = _stdlib_files()

    def pages() -> Iterator[Page]:
        for path in files:
            rel = path.relative_to(root)
            name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            try:
                text = module_docs(path.read_text(encoding="utf-8"), name)
            except (UnicodeDecodeError, SyntaxError, ValueError, OSError):
                continue  # bad_coding*.py and friends exist to fail
            if text:
                yield Page(page_id("stdlib_docs", str(rel)), text, "web", "stdlib_docs", f"stdlib-doc:{rel}")

    return _capped(pages(), max_bytes)


def package_pages(max_bytes: int = 0) -> Iterator[Page]:
    from importlib import metadata

    def pages() -> Iterator[Page]:
        entries = []
        for dist in metadata.distributions():
            md = dist.metadata
            body = md.get_payload() or md.get("Description") or ""
            name = md.get("Name") or "unknown"
            if body.strip():
                entries.append((f"pypi:{name}=={md.get('Version')}", f"{name}\n\n{md.get('Summary') or ''}\n\n{body}"))
        for uri, text in sorted(entries, key=lambda e: hashlib.sha256(e[0].encode()).digest()):
            yield Page(page_id("package_pages", uri), text, "web", "package_pages", uri)

    return _capped(pages(), max_bytes)


def pydoc_topics(max_bytes: int = 0) -> Iterator[Page]:
    from pydoc_data.topics import topics

    return _capped((Page(page_id("pydoc_topics", k), v, "acquired", "pydoc_topics", f"pydoc-topic:{k}")
                    for k, v in sorted(topics.items())), max_bytes)


def local_folder(path: str | Path, source: str, text_field: str = "text", max_bytes: int = 0) -> Iterator[Page]:
    """Every `.txt`/`.md` file (one page each), `.jsonl` line and `.parquet` row under `path`, in path order. A JSONL
    line or row without a string `text_field` is an error naming the file, line and field."""
    root = Path(path)
    if not root.is_dir():
        raise PhiforgeError(f"organic.local: {root} is not a folder")
    if source not in SOURCES:
        raise PhiforgeError(f"organic.local: source {source!r} for {root} must be one of {', '.join(SOURCES)}")
    feed = f"local:{root.name}"

    def pages() -> Iterator[Page]:
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = str(f.relative_to(root))
            if f.suffix in (".txt", ".md"):
                try:
                    text = f.read_text(encoding="utf-8")
                except UnicodeDecodeError as e:
                    raise PhiforgeError(f"{f}: not UTF-8 text (byte {e.start})") from None
                yield Page(page_id(feed, rel), text, source, feed, f"file:{f}")
            elif f.suffix == ".jsonl":
                with open(f, encoding="utf-8") as fh:
                    for n, line in enumerate(fh, 1):
                        if not line.strip():
                            continue
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise PhiforgeError(f"{f}:{n}: not valid JSON ({e.msg})") from None
                        text = row.get(text_field) if isinstance(row, dict) else None
                        if not isinstance(text, str):
                            raise PhiforgeError(f"{f}:{n}: field {text_field!r} is missing or not a string")
                        yield Page(page_id(feed, f"{rel}:{n}"), text, source, feed, f"file:{f}:{n}")
            elif f.suffix == ".parquet":
                import pyarrow.parquet as pq

                table = pq.read_table(f)
                if text_field not in table.column_names:
                    raise PhiforgeError(f"{f}: no column {text_field!r} (columns: {', '.join(table.column_names)})")
                for n, text in enumerate(table.column(text_field).to_pylist()):
                    if not isinstance(text, str):
                        raise PhiforgeError(f"{f}: row {n}: field {text_field!r} is not a string")
                    yield Page(page_id(feed, f"{rel}:{n}"), text, source, feed, f"file:{f}#row={n}")

    return _capped(pages(), max_bytes)


FEEDS: dict[str, Callable[[int], Iterator[Page]]] = {
    "stdlib_code": stdlib_code,
    "stdlib_docs": stdlib_docs,
    "package_pages": package_pages,
    "pydoc_topics": pydoc_topics,
}
