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

Output policy (one place for every command: :func:`check_output`). An output folder must
not be ``''``, ``.``, the working folder or an ancestor of it, an input or an ancestor of
one, a file, or a path under a file. An existing non-empty folder is accepted only when it
is one of our runs of the same kind (its ``config.json`` names the kind, or its
``meta.json`` says it is a dataset), and only to ``--resume`` it or, where a command has
``--overwrite``, to replace it after the new one is complete (:func:`staged`). Nothing
here ever removes a folder that irl-lens did not create.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

RUN_VERSION = 1
DATASET_KIND = "dataset"
"""The kind :func:`output_kind` gives a dataset folder (``meta.json``, ``arrays.npz``)."""
TEMP_PREFIX = ".tmp-"
"""Temporary folders start with this (or ``.NAME.tmp-``): never a run, a checkpoint or data."""


class RunError(ValueError):
    """A run folder or checkpoint is missing, corrupt or of the wrong kind."""


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Write strict JSON atomically (NaN and infinities become ``null``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(finite_json(obj), indent=2, sort_keys=True, allow_nan=False))
    os.replace(tmp, path)


def check_finite_fields(config: Any) -> None:
    """Raise ``ValueError`` naming the first float field of a config dataclass that is NaN
    or infinite (``--lr inf`` would otherwise train into NaN weights)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{type(config).__name__}.{f.name}={value!r}: give a finite number")


# ---- the output policy -------------------------------------------------------------------
def output_kind(path: Path) -> str | None:
    """The kind of irl-lens output a folder holds (``base_model``, ``dataset`` ...) or
    ``None`` when it is not one of ours (or cannot be read)."""
    path = Path(path)
    for name, key in (("config.json", "kind"), ("meta.json", "format")):
        f = path / name
        if not f.is_file():
            continue
        try:
            obj = json.loads(f.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        value = obj.get(key) if isinstance(obj, dict) else None
        if key == "format":
            return DATASET_KIND if value == "irl_lens.trajectories" else None
        return value if isinstance(value, str) else None
    return None


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_output(
    out: str | Path,
    kind: str,
    *,
    inputs: Sequence[str | Path | None] = (),
    resume: bool = False,
    overwrite: bool = False,
    option: str = "--out",
    exists_hint: str | None = None,
) -> Path:
    """Apply the output policy (module docstring) to ``out``; return it resolved.

    Raises :class:`RunError` (one line naming the path and what is allowed) when ``out``
    may not be written. Nothing is created or changed here.
    """
    if str(out).strip() in ("", "."):
        raise RunError(f"{option} {str(out)!r}: name a new folder (not the working folder)")
    path = Path(out).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if _is_within(cwd, path):
        raise RunError(
            f"{option} {str(out)!r} is the working folder or contains it; name a new folder"
        )
    for given in inputs:
        if given is None:
            continue
        src = Path(given).expanduser().resolve()
        if _is_within(src, path) or _is_within(path, src):
            raise RunError(
                f"{option} {str(out)!r} overlaps the input {str(given)!r}; "
                "write to a folder outside it"
            )
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"is under the file {str(parent)!r}"
            raise RunError(f"{option} {str(out)!r} {where}; name a folder")
    if not path.is_dir() or not any(path.iterdir()):
        if resume and not path.is_dir():
            raise RunError(f"--resume: {str(out)!r} does not exist; nothing to continue")
        return path
    found = output_kind(path)
    if found is None:
        raise RunError(
            f"{option} {str(out)!r} holds files irl-lens did not write; "
            "choose a new folder (nothing was changed)"
        )
    if found != kind:
        raise RunError(
            f"{option} {str(out)!r} holds a run of kind {found}, not {kind}; choose a new folder"
        )
    if not (resume or overwrite):
        how = exists_hint or (
            "pass --overwrite to replace it, or choose a new folder"
            if kind == DATASET_KIND
            else "pass --resume to continue it (or --overwrite, where offered, to replace it), "
            "or choose a new folder"
        )
        raise RunError(f"{option} {str(out)!r} already holds a run of kind {kind}; {how}")
    return path


@contextlib.contextmanager
def staged(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield the folder to write ``out`` into: a fresh temporary sibling, renamed into
    place when the block ends without an error or a signal. The temporary folder is
    removed on failure. An existing ``out`` (checked by :func:`check_output` to be one of
    our outputs of the same kind) is replaced only with ``overwrite`` and only after the
    new one is complete.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{TEMP_PREFIX}", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours: made just above
        raise
    old = None
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RunError(f"{out} appeared while writing; nothing was replaced")
        old = out.with_name(f".{out.name}{TEMP_PREFIX}old-{os.getpid()}")
        os.replace(out, old)
    elif out.is_dir():
        out.rmdir()  # empty: os.replace cannot rename onto a folder
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old)  # one of our outputs of the same kind (check_output said so)


def remove_temp(folder: Path) -> None:
    """Delete temporary folders and files we left in ``folder`` (an interrupted write)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name.startswith(TEMP_PREFIX) or (p.name.startswith(".") and ".tmp" in p.name):
            logger.info("removing %s (left by an interrupted write)", p)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def config_diff(saved: Any, requested: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like configs (sorted)."""
    if isinstance(saved, dict) and isinstance(requested, dict):
        diffs: list[str] = []
        for k in sorted(set(saved) | set(requested)):
            diffs += config_diff(saved.get(k), requested.get(k), f"{prefix}{k}.")
        return diffs
    requested = json.loads(json.dumps(finite_json(requested)))
    return [] if saved == requested else [prefix.rstrip(".")]


def start_run(
    out: Path,
    config: dict,
    *,
    resume: bool,
    compare: Sequence[str] | None = None,
    upgrade: Callable[[dict], dict] | None = None,
) -> Path | None:
    """Create run folder ``out`` with ``config`` or, with ``resume``, check it was started
    with the same settings; return the checkpoint to continue from (``None``: step 0).

    ``compare``: the config's top-level keys that must match to resume (default: all).
    ``upgrade``: maps the saved config to this version's schema before the comparison (a
    setting added since the run started takes its default, which it had then in effect).
    A resumable folder without a complete checkpoint (the run died before its first one)
    starts over at step 0 in place: every file in it was written by this kind of run.
    """
    out = Path(out)
    check_output(out, config["kind"], resume=resume)
    if resume and (out / "config.json").is_file():
        saved = read_json(out / "config.json", "run config")
        saved = saved if upgrade is None else upgrade(saved)
        keys = list(config) if compare is None else list(compare)
        diff = config_diff({k: saved.get(k) for k in keys}, {k: config.get(k) for k in keys})
        if diff:
            raise RunError(
                f"--resume: {out} was started with another {diff[0]} "
                f"({len(diff)} setting(s) differ); resume with the same data and options"
            )
        remove_temp(out / "checkpoints")
        remove_temp(out)
        ckpts = checkpoint_dirs(out)
        if ckpts:
            return ckpts[-1]
        logger.info("--resume: %s has no complete checkpoint yet; starting at step 0", out)
        (out / "metrics.jsonl").unlink(missing_ok=True)
        return None
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    return None


# ---- files and folders referred to by a run -------------------------------------------
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_ref(target: Path, run_dir: Path, weights: str = "model.safetensors") -> dict:
    """How a run records another run it builds on: relative to its own folder (so the
    pair can move together), absolute as a fallback, and the weights' SHA-256."""
    target, run_dir = Path(target).resolve(), Path(run_dir).resolve()
    w = target / weights
    return {
        "relative": os.path.relpath(target, run_dir),
        "absolute": str(target),
        "sha256": file_sha256(w) if w.is_file() else None,
    }


def resolve_ref(config: dict, key: str, run_dir: Path, weights: str = "model.safetensors") -> Path:
    """The folder ``config[key]`` names, from anywhere: relative to ``run_dir``, else the
    absolute path; the weights must be those the run was made with (SHA-256)."""
    run_dir = Path(run_dir)
    ref = config.get(f"{key}_ref")
    if not isinstance(ref, dict):  # older runs: the path as it was typed
        return Path(config[key])
    for cand in (run_dir / str(ref.get("relative")), Path(str(ref.get("absolute")))):
        if cand.is_dir():
            break
    else:
        raise RunError(
            f"{run_dir}: its {key} {ref.get('absolute')!r} is gone "
            f"(looked at {ref.get('relative')!r} beside the run and at the absolute path)"
        )
    want = ref.get("sha256")
    if want and (cand / weights).is_file() and file_sha256(cand / weights) != want:
        raise RunError(
            f"{run_dir}: {cand / weights} changed since this run was made from it "
            "(SHA-256 differs); retrain it or restore that model"
        )
    return cand


def number(summary: dict, key: str) -> float:
    """``summary[key]`` as a float; ``nan`` when missing or ``null`` (not computed)."""
    value = summary.get(key)
    return float("nan") if value is None else float(value)


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


class NonFiniteError(RunError):
    """Training produced NaN or infinite values; nothing non-finite was written."""


def check_finite(module: torch.nn.Module, where: str) -> None:
    """Raise :class:`NonFiniteError` if any parameter is not finite (buffers may hold
    ``-inf`` on purpose: TransformerLens keeps its attention mask value as one)."""
    bad = [
        k
        for k, v in module.named_parameters()
        if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise NonFiniteError(
            f"{where}: {len(bad)} weight tensor(s) are NaN or infinite (first {bad[0]!r}); "
            "not saved: lower --lr or check the inputs"
        )


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """Save a module's state dict as safetensors, atomically; never a non-finite one."""
    path = Path(path)
    check_finite(module, str(path))
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
        f.write(json.dumps(finite_json(record), sort_keys=True, allow_nan=False) + "\n")


def truncate_metrics(path: Path, key: str, upto: int) -> None:
    """Keep exactly the rows of ``metrics.jsonl`` with ``row[key] <= upto`` (resume: the
    rows the checkpoint covers, no gaps and no duplicates); a torn last line is dropped."""
    path = Path(path)
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get(key), int | float) and row[key] <= upto:
            keep.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


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
    dirs = [
        d
        for d in root.iterdir()
        if d.name.startswith("step_") and d.name[5:].isdigit() and (d / "meta.json").is_file()
    ]
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
    check_finite(model, f"checkpoint at step {step}")
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=root))
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


def load_trainer_state(ckpt: Path, required: Sequence[str] = ("optimizer",)) -> dict:
    """A checkpoint's trainer state: a dict holding at least the ``required`` keys."""
    path = Path(ckpt) / "trainer_state.pt"
    if not path.is_file():
        raise RunError(f"checkpoint {str(ckpt)!r} has no trainer_state.pt")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # pickle/zip errors
        raise RunError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise RunError(f"{path}: expected a dict of trainer state, found {type(state).__name__}")
    missing = [k for k in required if k not in state]
    if missing:
        raise RunError(
            f"{path}: trainer state lacks {', '.join(missing)}; the checkpoint is corrupt"
        )
    if not isinstance(state.get("optimizer"), dict):
        raise RunError(f"{path}: trainer state 'optimizer' is not an optimizer state dict")
    return state
