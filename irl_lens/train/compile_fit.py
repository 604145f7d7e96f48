"""Fitting CompILE (:mod:`irl_lens.models.compile_model`) through the frozen base model.

:func:`compile_loss` is the adapted ELBO of the module docstring there: each segment's
latent steers the frozen base at layer ``l`` (``e + U(z_i) e``), the action log-likelihood
of every step is weighted by the step's segment masks, and the two rate terms (latents,
boundaries) are added per real step. The reconstruction is the action term only (CompILE
reconstructs actions; the base's next-observation head is not used). :func:`fit_compile`
runs the optimizer on it; :func:`train_compile` trains into a run folder (``kind =
"compile"``: ``config.json``, ``compile.safetensors``, ``metrics.jsonl``, ``checkpoints/``,
resumable, interrupt-safe like discovery); ``irl-lens internal-rl`` takes such a folder
(:class:`irl_lens.rollout.switchers.FixedIntervalDriver`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from irl_lens import runs
from irl_lens.data.dataset import Batch, TrajectoryDataset, bucketed_batches, make_batch
from irl_lens.hooks import check_layer, intervene
from irl_lens.models.base import load_base_model
from irl_lens.models.compile_model import KIND, CompILE, CompILEConfig, build_compile
from irl_lens.train.controllers import frozen
from irl_lens.train.loop import FirstNonFinite, guarded
from irl_lens.train.raw_rl import action_log_prob

logger = logging.getLogger(__name__)
WEIGHTS = "compile.safetensors"


@dataclass(frozen=True)
class CompileFitConfig:
    """How CompILE is fitted (the quick preset's discovery batch and rate by default)."""

    steps: int = 2000
    tokens_per_batch: int = 4096
    lr: float = 3e-3
    beta_z: float = 0.1
    """Weight of the latents' KL (swept, as the paper does)."""
    beta_b: float = 0.1
    """Weight of the boundaries' KL."""
    grad_clip: float = 1.0
    val_episodes: int = 200
    log_every: int = 25
    checkpoint_every: int = 250
    seed: int = 0

    def __post_init__(self) -> None:
        runs.check_finite_fields(self)
        for name in ("steps", "tokens_per_batch", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"CompileFitConfig.{name}={getattr(self, name)!r} must be >= 1")
        if self.lr <= 0 or self.beta_z < 0 or self.beta_b < 0:
            raise ValueError("CompileFitConfig: lr must be > 0, beta_z and beta_b >= 0")


@dataclass
class CompILELoss:
    loss: Tensor
    nll: Tensor
    """Mask-weighted action NLL per real step."""
    kl_z: Tensor
    kl_b: Tensor
    """Per real step."""


def compile_loss(
    base, model: CompILE, layer: int, batch: Batch, beta_z: float, beta_b: float,
    generator: torch.Generator | None = None, sample: bool = True,
) -> CompILELoss:  # fmt: skip
    """The adapted CompILE objective on one batch (module docstring)."""
    batch = batch.to(next(model.parameters()).device)
    mask = batch.mask.float()
    out = model(batch.obs, batch.action, mask, sample=sample, generator=generator)
    n_seq, n_pos = mask.shape
    actions = batch.action.clamp(min=0) if batch.action.ndim == 2 else batch.action
    nll = mask.new_zeros(())
    for i in range(model.cfg.n_segments):
        z_i = out.z[:, i : i + 1].expand(n_seq, n_pos, -1)
        with intervene(base, layer, lambda e, z=z_i: model.apply_code(e, z)):
            params = base.split(base(batch.obs)).action_params
        logp = action_log_prob(base, params, actions)  # [batch, pos]
        nll = nll - (out.masks[i] * logp * mask).sum()
    n = mask.sum().clamp(min=1.0)
    kl_z, kl_b = out.kl_z.sum() / n, out.kl_b.sum() / n
    loss = nll / n + beta_z * kl_z + beta_b * kl_b
    return CompILELoss(loss, (nll / n).detach(), kl_z.detach(), kl_b.detach())


def fit_compile(base, model: CompILE, layer: int, ds: TrajectoryDataset, *, steps: int,
                lr: float = 3e-3, tokens_per_batch: int = 4096, beta_z: float = 0.1,
                beta_b: float = 0.1, seed: int = 0) -> list[float]:  # fmt: skip
    """``steps`` AdamW steps on ``ds`` with the base frozen; the loss of every step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    order = bucketed_batches(ds.lengths, tokens_per_batch, np.random.default_rng(seed))
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    with frozen(base):
        for step in range(steps):
            parts = compile_loss(base, model, layer, make_batch(ds, order[step % len(order)]),
                                 beta_z, beta_b, generator)  # fmt: skip
            opt.zero_grad(set_to_none=True)
            parts.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(parts.loss.detach()))
    model.eval()
    return losses


def train_compile(
    run: str | Path, ds: TrajectoryDataset, out: str | Path, cfg: CompileFitConfig, *,
    layer: int, model_cfg: CompILEConfig | None = None, data_path: str | None = None,
    device: str = "cpu", resume: bool = False, progress: bool = True,
) -> Path:  # fmt: skip
    """Fit CompILE through the frozen base of ``run`` at ``layer`` into run folder ``out``
    (the last ``val_episodes`` episodes are held out); returns ``out``."""
    out = Path(out)
    base = load_base_model(run).to(device, print_details=False)
    layer = check_layer(layer, base.cfg.n_layers)
    mcfg = base.model_cfg
    model_cfg = model_cfg or CompILEConfig(
        d_model=base.cfg.d_model, obs_kind=mcfg.obs_kind, obs_dim=mcfg.obs_dim,
        action_kind=mcfg.action_kind, n_actions=mcfg.n_actions,
    )  # fmt: skip
    model = build_compile(model_cfg, seed=cfg.seed).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    n_val = min(cfg.val_episodes, ds.n_episodes // 5)
    train_ds = ds.subset(np.arange(ds.n_episodes - n_val))
    config = {
        "kind": KIND, "version": runs.RUN_VERSION, "base_run": str(run),
        "base_run_ref": runs.run_ref(run, out), "data": data_path,
        "data_sha256": ds.fingerprint(), "layer": layer, "compile": model_cfg.to_dict(),
        "train": dataclasses.asdict(cfg),
    }  # fmt: skip
    same = [k for k in config if k not in ("base_run", "base_run_ref", "data")]
    ckpt = runs.start_run(out, config, resume=resume, compare=same)
    generator = torch.Generator().manual_seed(cfg.seed)
    step = 0
    if ckpt is not None:
        runs.load_weights(model, ckpt / "model.safetensors")
        state = runs.load_trainer_state(ckpt, ("optimizer", "step", "generator"))
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        generator.set_state(state["generator"])
    metrics = out / "metrics.jsonl"
    runs.truncate_metrics(metrics, "step", step)
    order = bucketed_batches(train_ds.lengths, cfg.tokens_per_batch,
                             np.random.default_rng(cfg.seed))  # fmt: skip
    non_finite = FirstNonFinite(device, "compile")
    bar = tqdm(total=cfg.steps, initial=step, desc="compile", disable=not progress, unit="step")
    model.train()
    with frozen(base), guarded(bar, step) as guard:
        while step < cfg.steps:
            batch = make_batch(train_ds, order[step % len(order)], device)
            parts = compile_loss(base, model, layer, batch, cfg.beta_z, cfg.beta_b, generator)
            opt.zero_grad(set_to_none=True)
            parts.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            non_finite.record(step + 1, parts.loss)
            step += 1
            guard.at(step)
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                non_finite.check(guard.saved_at)
                rec = {"step": step, "train/loss": float(parts.loss.detach()),
                       "train/action_nll": float(parts.nll), "train/kl_z": float(parts.kl_z),
                       "train/kl_b": float(parts.kl_b)}  # fmt: skip
                runs.append_metrics(metrics, rec)
                bar.set_postfix(nll=f"{rec['train/action_nll']:.3f}",
                                kl_z=f"{rec['train/kl_z']:.2f}")  # fmt: skip
            if guard.checkpoint_due(step, cfg.checkpoint_every, cfg.steps):
                non_finite.check(guard.saved_at)
                state = {"optimizer": opt.state_dict(), "step": step,
                         "generator": generator.get_state()}  # fmt: skip
                runs.save_checkpoint(out, step, model, state)
                guard.saved(step)
    bar.close()
    model.eval()
    runs.save_weights(model, out / WEIGHTS)
    return out


@dataclass
class LoadedCompile:
    base: object
    model: CompILE
    layer: int
    config: dict


def load_compile(path: str | Path, device: str = "cpu") -> LoadedCompile:
    """A trained CompILE folder with the base model it steers."""
    path = Path(path)
    config = runs.read_json(path / "config.json", "run config")
    if config.get("kind") != KIND:
        raise runs.RunError(f"{path} is not a CompILE run (kind {config.get('kind')!r})")
    if not (path / WEIGHTS).is_file():
        raise runs.RunError(f"{path} has no {WEIGHTS}: training did not finish; resume it")
    base = load_base_model(runs.resolve_ref(config, "base_run", path)).to(
        device, print_details=False
    )
    model = CompILE(CompILEConfig.from_dict(config["compile"]))
    runs.load_weights(model, path / WEIGHTS)
    return LoadedCompile(base, model.to(device).eval(), int(config["layer"]), config)
