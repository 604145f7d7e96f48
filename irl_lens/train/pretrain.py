"""Pretraining the base action model on unlabeled expert trajectories.

Loss (paper Section 2): ``sum_t -ln p(a_t | o_1:t) - lambda ln p(o_t+1 | o_1:t)``,
averaged over real (unpadded) steps. No rewards and no subgoal labels are used; the
labels in the dataset are only read by the evaluation.

The loop is short on purpose: a batch iterator in, :func:`_train_step` returning a small
:class:`StepStats`, then log, evaluate, checkpoint and advance the progress bar.
Resuming from a checkpoint restores weights, optimizer state and the exact position in
the data stream, so an interrupted run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from irl_lens import runs
from irl_lens.data.dataset import TrajectoryDataset, bucketed_batches, make_batch
from irl_lens.models.base import ActionModel, BaseModelConfig, build_model
from irl_lens.train.loop import FirstNonFinite, autocast, fast_matmuls, guarded, lr_at

logger = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """How the base model is trained."""

    steps: int = 3000
    """Optimizer steps."""
    tokens_per_batch: int = 8192
    """Padded tokens per batch (episodes are length-bucketed, so padding is small)."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    weight_decay: float = 0.03
    """AdamW weight decay (paper: 0.03)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    schedule: str = "cosine"
    """``constant`` after warm-up (paper), or ``cosine`` decay to ``min_lr_ratio * lr``."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of ``lr`` for the cosine schedule."""
    grad_clip: float = 1.0
    """Clip the global gradient norm (0 disables)."""
    val_episodes: int = 2000
    """Episodes held out from the dataset for evaluation."""
    eval_every: int = 500
    """Evaluate on the held-out episodes every this many steps."""
    checkpoint_every: int = 500
    """Write a checkpoint every this many steps (kept: the probe-vs-step analysis reads them)."""
    rollout_episodes: int = 1000
    """Closed-loop episodes for the final free-running evaluation."""
    seed: int = 0
    """Seeds the initialisation and the data order."""

    def __post_init__(self) -> None:
        runs.check_finite_fields(self)
        positive = ("steps", "tokens_per_batch", "eval_every", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"PretrainConfig.{name}={getattr(self, name)!r} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"PretrainConfig.lr={self.lr!r} must be > 0")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.val_episodes < 0:
            raise ValueError("PretrainConfig.weight_decay, warmup_steps, val_episodes must be >= 0")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"PretrainConfig.schedule={self.schedule!r}: use constant or cosine")
        if self.rollout_episodes < 0:
            raise ValueError("PretrainConfig.rollout_episodes must be >= 0")

    def lr_at(self, step: int) -> float:
        """Learning rate used for optimizer step ``step`` (0-based)."""
        return lr_at(step, self.lr, self.steps, schedule=self.schedule,
                     warmup_steps=self.warmup_steps, min_lr_ratio=self.min_lr_ratio)  # fmt: skip


@dataclass
class StepStats:
    """One step's numbers as 0-dim tensors on the run's device: read (a host sync) only at
    log steps."""

    loss: torch.Tensor
    action_nll: torch.Tensor
    obs_nll: torch.Tensor
    grad_norm: torch.Tensor
    next_colour_nll: torch.Tensor


def _train_step(
    model: ActionModel, opt: torch.optim.Optimizer, batch, cfg: PretrainConfig, lr: float,
    precision: str = "fp32", forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> StepStats:  # fmt: skip
    """One optimizer step; ``forward`` (default: the model) runs the model, e.g. compiled."""
    for group in opt.param_groups:
        group["lr"] = lr
    with autocast(batch.obs.device, precision):
        out = (model if forward is None else forward)(batch.obs)
        nll_a, nll_o = model.losses(out, batch.action, batch.next_obs, batch.mask)
        aux, nll_c = model.auxiliary_loss(out, batch.next_obs, batch.mask)
        loss = nll_a + model.model_cfg.obs_loss_weight * nll_o + aux
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    else:
        grad_norm = torch.full((), float("nan"), device=loss.device)
    opt.step()
    return StepStats(loss.detach(), nll_a.detach(), nll_o.detach(), grad_norm.detach(),
                     nll_c.detach())  # fmt: skip


def make_optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms or embeddings' scales)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "ln" not in name else no_decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )


def _with_new_defaults(saved: dict) -> dict:
    """A base-model run's saved config with the model and training settings added since it
    started at their defaults (what it ran with), so ``--resume`` still matches it."""
    try:
        model = BaseModelConfig.from_dict(saved["model"]).to_dict()
        train = dataclasses.asdict(PretrainConfig(**saved["train"]))
    except (KeyError, TypeError, ValueError):  # not ours to fix: the comparison names it
        return saved
    return saved | {"model": model, "train": train}


def split_train_val(ds: TrajectoryDataset, val_episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``val_episodes`` episodes are held out (episodes are i.i.d. by construction)."""
    n_val = min(val_episodes, ds.n_episodes // 5)
    idx = np.arange(ds.n_episodes)
    return idx[: ds.n_episodes - n_val], idx[ds.n_episodes - n_val :]


@dataclass
class PretrainResult:
    run_dir: Path
    steps: int
    train_seconds: float
    tokens_per_second: float
    final_eval: dict = field(default_factory=dict)


def pretrain(
    ds: TrajectoryDataset,
    out: Path,
    model_cfg: BaseModelConfig,
    cfg: PretrainConfig,
    *,
    data_path: str | None = None,
    preset: str | None = None,
    resume: bool = False,
    evaluate: Callable[[ActionModel, TrajectoryDataset], dict] | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    compile_model: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> PretrainResult:
    """Train a base model on ``ds`` into run folder ``out`` (on ``device``: batches are
    moved there as they are built, and the losses are read back only at log steps;
    ``precision``: the forward pass in ``fp32`` or ``bf16`` autocast, see
    :func:`irl_lens.train.loop.autocast`; recorded in the config, not compared on resume).
    ``compile_model``: the training forward through ``torch.compile(model, dynamic=True)``
    (opt-in, meant for a GPU: compiling the tiny model's forward and backward took ~100 s
    on the 2-core CPU), evaluations and checkpoints on the plain model.

    ``evaluate(model, val_ds) -> {"eval/...": number}`` is called every ``eval_every``
    steps and at the end. ``stop_after`` ends the loop early after that many steps
    (as if interrupted; used to test ``resume``).
    """
    out = Path(out)
    config = {
        "kind": "base_model",
        "version": runs.RUN_VERSION,
        "model": model_cfg.to_dict(),
        "train": dataclasses.asdict(cfg),
        "data": data_path,
        "data_sha256": ds.fingerprint(),
        "data_meta": {k: ds.meta.get(k) for k in ("env", "split", "n_episodes", "seed", "eps")},
        "preset": preset,
        "precision": precision,
        "compiled": compile_model,
    }
    autocast(device, precision)  # an unknown precision fails before anything is written
    fast_matmuls(device)
    model = build_model(model_cfg, seed=cfg.seed).to(device, print_details=False)
    opt = make_optimizer(model, cfg)
    train_idx, val_idx = split_train_val(ds, cfg.val_episodes)
    train_ds, val_ds = ds.subset(train_idx), ds.subset(val_idx)

    step, epoch, batch_in_epoch, seconds_before = 0, 0, 0, 0.0
    ckpt = runs.start_run(
        out, config, resume=resume, compare=("model", "train", "data_sha256"),
        upgrade=_with_new_defaults,
    )  # fmt: skip
    if ckpt is not None:
        runs.load_weights(model, ckpt / "model.safetensors")  # onto the model's device
        state = runs.load_trainer_state(
            ckpt, ("optimizer", "step", "epoch", "batch_in_epoch", "torch_rng")
        )
        opt.load_state_dict(state["optimizer"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        torch.random.set_rng_state(state["torch_rng"])
        # training time up to the checkpoint (checkpoints before 2026-12-06 did not keep it)
        seconds_before = float(state.get("train_seconds", 0.0))
        logger.info("resumed %s at step %d", out, step)
    else:
        torch.manual_seed(cfg.seed)
    runs.truncate_metrics(out / "metrics.jsonl", "step", step)

    metrics_path = out / "metrics.jsonl"

    def trainer_state() -> dict:
        return {
            "optimizer": opt.state_dict(),
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "torch_rng": torch.random.get_rng_state(),
            # so that a resumed run reports the training time of all its legs
            "train_seconds": train_seconds + time.perf_counter() - t0,
        }

    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        desc="pretrain",
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
    )
    tokens, t0 = 0, time.perf_counter()
    train_seconds = seconds_before
    model.train()
    # the same parameters: the compiled forward trains the model that is saved
    forward = torch.compile(model, dynamic=True) if compile_model else model
    non_finite = FirstNonFinite(device, "pretrain")
    with guarded(bar, step) as guard:
        while step < end:
            order = bucketed_batches(
                train_ds.lengths, cfg.tokens_per_batch, np.random.default_rng([cfg.seed, epoch])
            )
            while batch_in_epoch < len(order) and step < end:
                episodes = order[batch_in_epoch]
                batch = make_batch(train_ds, episodes, device)
                stats = _train_step(model, opt, batch, cfg, cfg.lr_at(step), precision, forward)
                non_finite.record(step + 1, stats.loss)
                step += 1
                guard.at(step)
                batch_in_epoch += 1
                tokens += int(train_ds.lengths[episodes].sum())  # host numbers: no sync
                bar.update(1)
                if step % 25 == 0 or step == end:
                    non_finite.check(guard.saved_at)
                    elapsed = time.perf_counter() - t0
                    rec = {
                        "step": step,
                        "epoch": epoch,
                        "train/loss": float(stats.loss),
                        "train/action_nll": float(stats.action_nll),
                        "train/obs_nll": float(stats.obs_nll),
                        "train/grad_norm": float(stats.grad_norm),
                        "train/lr": cfg.lr_at(step - 1),
                        "train/tokens_per_s": tokens / max(elapsed, 1e-9),
                    }
                    if model.model_cfg.next_colour_weight:
                        rec["train/next_colour_nll"] = float(stats.next_colour_nll)
                    runs.append_metrics(metrics_path, rec)
                    bar.set_postfix(
                        nll=f"{rec['train/action_nll']:.3f}",
                        tok_s=f"{rec['train/tokens_per_s']:.0f}",
                    )
                # evaluate before checkpointing: a checkpoint then covers every row of
                # its step, and the RNG state it stores is the one training goes on with
                if evaluate is not None and (step % cfg.eval_every == 0) and step != cfg.steps:
                    non_finite.check(guard.saved_at)
                    train_seconds += time.perf_counter() - t0
                    model.eval()
                    with torch.no_grad():
                        ev = evaluate(model, val_ds)
                    model.train()
                    runs.append_metrics(metrics_path, {"step": step, **ev})
                    logger.info("step %d: %s", step, ev)
                    t0, tokens = time.perf_counter(), 0
                if guard.checkpoint_due(step, cfg.checkpoint_every, cfg.steps):
                    non_finite.check(guard.saved_at)  # never a checkpoint of NaN weights
                    runs.save_checkpoint(out, step, model, trainer_state())
                    guard.saved(step)
            if batch_in_epoch >= len(order):
                epoch, batch_in_epoch = epoch + 1, 0
    bar.close()
    train_seconds += time.perf_counter() - t0
    tokens_per_s = _mean_tokens_per_s(metrics_path)
    result = PretrainResult(out, step, train_seconds, tokens_per_s)
    if step < cfg.steps:
        return result  # interrupted on purpose (stop_after)
    non_finite.check(guard.saved_at)
    runs.save_weights(model, out / "model.safetensors")
    model.eval()
    if evaluate is not None:
        with torch.no_grad():
            result.final_eval = evaluate(model, val_ds)
        runs.append_metrics(metrics_path, {"step": step, **result.final_eval})
    return result


def _mean_tokens_per_s(metrics_path: Path) -> float:
    vals = [
        m["train/tokens_per_s"]
        for m in runs.read_metrics(metrics_path)
        if "train/tokens_per_s" in m
    ]
    return float(np.median(vals)) if vals else float("nan")
