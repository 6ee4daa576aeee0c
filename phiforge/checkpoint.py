"""Checkpoints: a Hugging Face model folder, plus the training state beside it when training is to resume.

    step-000500/ config.json model.safetensors generation_config.json tokenizer.json ...   (transformers loads it)
                 optimizer.pt rng.pt state.json                                             (phiforge resumes it)

A checkpoint folder is assembled under a temporary name and renamed into place, so a kill -9 leaves either the
whole checkpoint or none of it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from phiforge.errors import PhiforgeError
from phiforge.model import ModelConfig, Phi3, load_pretrained, save_pretrained
from phiforge.rundir import atomic_path, atomic_write_json
from phiforge.tokenizer import ChatTokenizer


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


def save_training_state(
    directory: Path, model_sd: dict, optim_sd: dict, cfg: ModelConfig, tok: ChatTokenizer, state: dict
) -> None:
    """Write a resumable checkpoint from full (unsharded) state dicts; in a torchrun world only rank 0 calls it."""
    with atomic_path(Path(directory)) as tmp:
        tmp.mkdir(parents=True)
        save_pretrained(None, cfg, tmp, bos_id=tok.endoftext_id, eos_id=tok.im_end_id, pad_id=tok.pad_id,
                        state_dict=model_sd)
        tok.save(tmp)
        torch.save(optim_sd, tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        atomic_write_json(tmp / "state.json", state)


def load_training_state(directory: Path) -> tuple[dict, dict, dict]:
    """(model state dict, optimiser state dict, state.json) of a checkpoint; restores the RNG."""
    directory = Path(directory)
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
    return loaded.state_dict(), optim_sd, read_state(directory)


def read_state(directory: Path) -> dict:
    try:
        return json.loads((Path(directory) / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise PhiforgeError(f"checkpoint {directory}: state.json is missing or corrupt") from None


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save start with a dot)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def prune_checkpoints(root: Path, keep: int) -> None:
    for p in list_checkpoints(root)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
