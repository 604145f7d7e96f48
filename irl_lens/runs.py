"""Run folders: configs, weights, checkpoints, metrics and summaries.

A run folder looks like::

    RUN/
      config.json            {"kind": "base_model", "version": 1, "model": {...}, ...}
      model.safetensors      final weights
      metrics.jsonl          one JSON object per log step (namespaced keys: train/, eval/ ...)
      summary.json           final numbers (flat keys)
      checkpoints/
        step_00001000/
          model.safetensors
          trainer_state.pt   optimizer state, step, data position, RNG (loaded weights_only)
          meta.json          {"step": 1000}

Weights live in safetensors and configs in JSON, so loading never unpickles code.
Every write goes to a temporary name first and is renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

RUN_VERSION = 1


class RunError(ValueError):
    """A run folder or checkpoint is missing, corrupt or of the wrong kind."""


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path, what: str = "file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{what} {str(path)!r} does not exist")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise RunError(f"{path}: expected a JSON object")
    return obj


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """Save a module's state dict as safetensors, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(tmp))
    os.replace(tmp, path)


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into ``module``, naming any mismatch."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"weights file {str(path)!r} does not exist")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"{path}: cannot be read as safetensors ({e})") from None
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise RunError(
            f"{path}: weights do not match the config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise RunError(
                f"{path}: '{k}' has shape {tuple(v.shape)}, the config builds "
                f"{tuple(expected[k].shape)}"
            )
    module.load_state_dict(state)


def append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def checkpoint_dirs(run: Path) -> list[Path]:
    """Checkpoint folders of a run, oldest first (only complete ones)."""
    root = Path(run) / "checkpoints"
    if not root.is_dir():
        return []
    dirs = [d for d in root.iterdir() if d.name.startswith("step_") and (d / "meta.json").is_file()]
    return sorted(dirs, key=checkpoint_step)


def checkpoint_step(ckpt: str | Path) -> int:
    """The optimizer step of a checkpoint folder (``step_00000800`` -> 800)."""
    return int(Path(ckpt).name.split("_")[1])


def checkpoint_at(run: Path, step: int) -> Path:
    """The complete checkpoint of ``run`` saved at optimizer step ``step``."""
    found = {checkpoint_step(d): d for d in checkpoint_dirs(run)}
    if step not in found:
        have = ", ".join(str(s) for s in sorted(found)) or "none"
        raise RunError(f"{run} has no checkpoint at step {step} (it has: {have})")
    return found[step]


def save_checkpoint(run: Path, step: int, model: torch.nn.Module, trainer_state: dict) -> Path:
    """Write ``checkpoints/step_N`` atomically (temp folder, then rename)."""
    root = Path(run) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        save_weights(model, tmp / "model.safetensors")
        torch.save(trainer_state, tmp / "trainer_state.pt")
        write_json(tmp / "meta.json", {"step": step})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_trainer_state(ckpt: Path) -> dict:
    path = Path(ckpt) / "trainer_state.pt"
    if not path.is_file():
        raise RunError(f"checkpoint {str(ckpt)!r} has no trainer_state.pt")
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # pickle/zip errors
        raise RunError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
