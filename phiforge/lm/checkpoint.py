"""Checkpoints: a Hugging Face model folder, plus the training state beside it when training is to resume.

    step-000500/ config.json model.safetensors generation_config.json tokenizer.json ...   (transformers loads it)
                 optimizer.pt rng.pt state.json                                             (phiforge resumes it)

A checkpoint folder is assembled under a temporary name and renamed into place, so a kill -9 leaves either the
whole checkpoint or none of it. state.json, written last, holds the sha256 of the weights and the training state,
so a checkpoint damaged afterwards (a truncated copy, a flipped byte safetensors would load without complaint) is
found at resume time, and training resumes from the newest intact one instead.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Callable

import torch

from phiforge.errors import PhiforgeError
from phiforge.lm.model import ModelConfig, Phi3, load_pretrained, save_pretrained
from phiforge.lm.tokenizer import ChatTokenizer
from phiforge.rundir import atomic_path, atomic_write_json, file_sha256

HASHED = ("model.safetensors", "optimizer.pt", "rng.pt")  # what resuming reads, checked against state.json


def export_model(model: Phi3 | None, cfg: ModelConfig, tok: ChatTokenizer, directory: Path,
                 state_dict: dict | None = None) -> None:
    """Write a self-contained HF folder (weights, config, tokenizer) atomically, from a model or its state dict."""
    with atomic_path(Path(directory)) as tmp:
        tmp.mkdir(parents=True)
        save_pretrained(model, cfg, tmp, bos_id=tok.endoftext_id, eos_id=tok.im_end_id, pad_id=tok.pad_id,
                        state_dict=state_dict)
        tok.save(tmp)


def load_model(directory: Path) -> tuple[Phi3, ModelConfig, ChatTokenizer]:
    model, cfg = load_pretrained(Path(directory))
    return model, cfg, ChatTokenizer.load(Path(directory))


class _HashingWriter:
    """The file torch.save writes through: hashes the bytes on their way and keeps a failed write's OSError, which
    torch itself reports only as `unexpected pos` or `basic_ios::clear: iostream error`, naming no file or cause."""

    def __init__(self, f):
        self.f, self.sha, self.error = f, hashlib.sha256(), None

    def write(self, data) -> int:
        try:
            n = self.f.write(data)
        except OSError as e:
            self.error = e
            raise
        self.sha.update(data)
        return n

    def flush(self) -> None:
        self.f.flush()


def _torch_save(obj, path: Path) -> str:
    """torch.save `obj` to `path`; returns the file's sha256."""
    with open(path, "wb") as f:
        w = _HashingWriter(f)
        try:
            torch.save(obj, w)
        except RuntimeError:
            if w.error is None:
                raise
            raise OSError(w.error.errno, w.error.strerror, str(path)) from None
    return w.sha.hexdigest()


def save_training_state(
    directory: Path, model_sd: dict, optim_sd: dict, cfg: ModelConfig, tok: ChatTokenizer, state: dict
) -> None:
    """Write a resumable checkpoint from full (unsharded) state dicts; in a torchrun world only rank 0 calls it."""
    with atomic_path(Path(directory)) as tmp:
        tmp.mkdir(parents=True)
        save_pretrained(None, cfg, tmp, bos_id=tok.endoftext_id, eos_id=tok.im_end_id, pad_id=tok.pad_id,
                        state_dict=model_sd)
        tok.save(tmp)
        files = {"model.safetensors": file_sha256(tmp / "model.safetensors"),
                 "optimizer.pt": _torch_save(optim_sd, tmp / "optimizer.pt"),
                 "rng.pt": _torch_save({"torch": torch.get_rng_state()}, tmp / "rng.pt")}
        atomic_write_json(tmp / "state.json", {**state, "files": files})


def _check_hashes(directory: Path, state: dict) -> None:
    for name, want in state.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            raise PhiforgeError(f"checkpoint {directory} is incomplete: {name} is missing")
        if file_sha256(path) != want:
            raise PhiforgeError(f"checkpoint {directory}: {name} is damaged (its sha256 differs from state.json)")


def load_training_state(directory: Path) -> tuple[dict, dict, dict]:
    """(model state dict, optimiser state dict, state.json) of a checkpoint; restores the RNG."""
    directory = Path(directory)
    state = read_state(directory)
    _check_hashes(directory, state)
    loaded, _ = load_pretrained(directory)
    for name in ("optimizer.pt", "rng.pt"):
        if not (directory / name).is_file():
            raise PhiforgeError(f"checkpoint {directory} is incomplete: {name} is missing")
    try:
        optim_sd = torch.load(directory / "optimizer.pt", weights_only=True)
        rng = torch.load(directory / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
    except Exception as e:  # torch.load raises several unrelated types on a damaged file
        raise PhiforgeError(f"checkpoint {directory}: optimizer.pt or rng.pt is corrupt ({type(e).__name__})") from None
    return loaded.state_dict(), optim_sd, state


def read_state(directory: Path) -> dict:
    try:
        state = json.loads((Path(directory) / "state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        state = None
    if not isinstance(state, dict):
        raise PhiforgeError(f"checkpoint {directory}: state.json is missing or corrupt")
    return state


def newest_intact(root: Path, fingerprint: str, warn: Callable[[str], None]) -> tuple[dict, dict, dict, str] | None:
    """(model state dict, optimiser state dict, state, name) of the newest checkpoint under `root` that loads and
    matches its hashes, restoring its RNG; a damaged one is passed over with a warning naming it. None when there is
    none, or when the newest readable one was made under another fingerprint (another recipe or other data: every
    checkpoint there is stale)."""
    for ckpt in reversed(list_checkpoints(root)):
        try:
            if read_state(ckpt).get("fingerprint") != fingerprint:
                return None
            return (*load_training_state(ckpt), ckpt.name)
        except PhiforgeError as e:
            warn(f"{e}; passing over it for the checkpoint before it")
    return None


def warn(message: str) -> None:
    print(f"[phiforge] warning: {message}", file=sys.stderr, flush=True)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save start with a dot)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def prune_checkpoints(root: Path, keep: int) -> None:
    for p in list_checkpoints(root)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
