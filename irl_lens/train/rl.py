"""One PPO core for every RL trainer here: advantages, the clipped surrogate, the update.

Three trainers use it, each with today's settings made explicit (:class:`PPOSettings`):

=================  ==================  ==========================  =====================
trainer            advantages          minibatches                 value, entropy, clip
=================  ==================  ==========================  =====================
internal RL        episode return      the whole batch per epoch   none
raw-action RL      episode return      the whole batch, evaluated  none
                                       in length-sorted pieces
                                       (gradient accumulation)
ant expert         GAE                 shuffled, normalised        critic, bonus, grad
                                       per minibatch               norm clip
=================  ==================  ==========================  =====================

Pieces, top to bottom: :func:`trajectory_advantages` and :func:`gae` (pure functions),
:func:`clipped_surrogate`, :func:`ppo_update` (the minibatch loop, CleanRL-style:
``b_`` for batch storage, ``mb_`` for a minibatch), then the run machinery internal and
raw-action RL share: :class:`RLConfig`, :func:`stream_generator`, :func:`create_or_resume`
and :func:`batch_loop` (per-batch metrics, checkpoint cadence, interrupts, summary).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from irl_lens import runs
from irl_lens.envs.pinpad import parse_task
from irl_lens.train.loop import guarded

KIND = "internal_rl"
"""Run kind of internal-RL and raw-action RL folders (``method`` tells them apart)."""


# ------------------------------------------------------------------------------ advantages


def trajectory_advantages(returns: np.ndarray) -> np.ndarray:
    """``(R - mean(R)) / (std(R) + 1e-3)`` over the batch (paper C.5.2): one advantage per
    episode, which every step of the episode gets."""
    returns = np.asarray(returns, dtype=np.float64)
    return (returns - returns.mean()) / (returns.std() + 1e-3)


def gae(
    rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_value: np.ndarray,
    gamma: float, lam: float,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Generalised advantage estimation over ``[n_steps, n_envs]`` arrays; ``dones[t]`` = the
    episode ended at step t (no bootstrap across it), ``last_value`` the value of the state
    after the last step. Returns ``(advantages, returns)`` with ``returns = advantages +
    values`` (the critic's targets)."""
    n_steps = len(rewards)
    adv = np.zeros_like(rewards)
    last = np.zeros_like(last_value)
    for t in reversed(range(n_steps)):
        nxt = last_value if t == n_steps - 1 else values[t + 1]
        live = 1.0 - dones[t]
        delta = rewards[t] + gamma * nxt * live - values[t]
        last = delta + gamma * lam * live * last
        adv[t] = last
    return adv, adv + values


# ----------------------------------------------------------------------------- the update


def clipped_surrogate(
    logp_new: Tensor, logp_old: Tensor, advantage: Tensor, mask: Tensor, clip: float
) -> tuple[Tensor, float, float]:
    """``(loss, clip fraction, approx KL)``: PPO's clipped objective
    ``-min(r A, clip(r, 1 - eps, 1 + eps) A)``, ``r = exp(logp_new - logp_old)``, averaged
    over ``mask``; the clip fraction is the share of ``|r - 1| > eps``, the approximate KL
    the mean of ``logp_old - logp_new``."""
    ratio = torch.exp(logp_new - logp_old)
    unclipped = ratio * advantage
    clipped = ratio.clamp(1 - clip, 1 + clip) * advantage
    n = mask.sum().clamp(min=1.0)
    loss = -(torch.minimum(unclipped, clipped) * mask).sum() / n
    with torch.no_grad():
        clip_frac = (((ratio - 1).abs() > clip).float() * mask).sum() / n
        approx_kl = ((logp_old - logp_new) * mask).sum() / n
    return loss, clip_frac.item(), approx_kl.item()


@dataclass(frozen=True)
class PPOSettings:
    """How :func:`ppo_update` runs; the defaults are internal RL's (no critic, no bonus)."""

    epochs: int
    """Passes over the batch."""
    clip: float
    """Clipping range ``eps`` of the ratio."""
    n_minibatches: int = 1
    """Optimiser steps per epoch. With a generator the minibatches are a fresh shuffle each
    epoch (CleanRL); without one, contiguous slices in order."""
    normalize_advantages: bool = False
    """Per minibatch ``(A - mean) / (std + 1e-8)`` (CleanRL's MuJoCo PPO); needs no mask."""
    vf_coef: float = 0.0
    """Weight of the value loss ``0.5 (V - R)^2`` when ``evaluate`` returns values."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus when ``evaluate`` returns an entropy."""
    max_grad_norm: float | None = None
    """Clip the gradient's global norm to this before each step (None: no clipping)."""


@dataclass
class PPOBatch:
    """The batch storage :func:`ppo_update` reads, first axis ``n`` (episodes or steps)."""

    logp: Tensor  # [n, ...] log-probabilities at collection time
    advantages: Tensor  # [n, ...] broadcastable against logp
    mask: Tensor | None = None  # [n, ...] 1 on real steps; None: every entry is real
    returns: Tensor | None = None  # [n] value targets (with a critic)


@dataclass(frozen=True)
class Piece:
    """Rows of the batch evaluated together: ``index`` into the first axis, and, for
    ``[n, T]`` storage, the time steps ``:t_max`` (None: all)."""

    index: Tensor | slice
    t_max: int | None = None

    def take(self, t: Tensor) -> Tensor:
        rows = t[self.index]
        return rows if self.t_max is None else rows[:, : self.t_max]


@dataclass
class PolicyEval:
    """What the policy says about a :class:`Piece` under its current weights."""

    logp: Tensor  # shaped like the piece's rows of PPOBatch.logp
    value: Tensor | None = None  # [rows] the critic's values
    entropy: Tensor | None = None  # [rows] the policy's entropy


@dataclass
class UpdateStats:
    """One optimiser step (summed over its pieces, weighted by their share of the mask)."""

    loss: float
    policy_loss: float
    value_loss: float  # 0 without a critic
    entropy: float  # 0 without an entropy bonus
    clip_fraction: float
    approx_kl: float


def ppo_update(
    evaluate: Callable[[Piece], PolicyEval],
    opt: torch.optim.Optimizer,
    batch: PPOBatch,
    cfg: PPOSettings,
    *,
    generator: torch.Generator | None = None,
    split: Callable[[Tensor | slice], list[Piece]] | None = None,
) -> list[UpdateStats]:
    """PPO's update on one batch: ``cfg.epochs`` passes of ``cfg.n_minibatches`` optimiser
    steps, each on ``loss = surrogate + vf_coef * value_loss - ent_coef * entropy``.

    ``evaluate(piece)`` runs the policy (and critic) on the piece's rows. ``generator``
    shuffles the minibatches. ``split`` cuts a minibatch into pieces evaluated one after
    the other (gradient accumulation, one step per minibatch); each piece's loss counts
    with its share of the minibatch's ``mask``. A batch whose gradient is exactly 0 (every
    advantage 0, :func:`_gradient_is_zero`) takes its optimiser steps without the policy's
    passes. Returns the stats of every optimiser step.
    """
    if cfg.normalize_advantages and batch.mask is not None:
        raise ValueError("PPOSettings.normalize_advantages needs a batch without a mask")
    if split is not None and batch.mask is None:
        raise ValueError("ppo_update(split=...) weights the pieces by the batch's mask")
    b_logp, b_advantages = batch.logp, batch.advantages
    b_mask, b_returns = batch.mask, batch.returns
    params = [p for group in opt.param_groups for p in group["params"]]
    if _gradient_is_zero(batch, cfg, opt):
        return _zero_gradient_steps(opt, params, cfg)
    n = len(b_logp)
    mb_size = n // cfg.n_minibatches
    steps = []
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator) if generator is not None else None
        for k in range(cfg.n_minibatches):
            lo, hi = k * mb_size, (k + 1) * mb_size
            mb_inds = order[lo:hi] if order is not None else slice(lo, hi)
            pieces = [Piece(mb_inds)] if split is None else split(mb_inds)
            mb_total = None if split is None else b_mask[mb_inds].sum().clamp(min=1.0)
            opt.zero_grad(set_to_none=True)
            totals = dict.fromkeys((f.name for f in dataclasses.fields(UpdateStats)), 0.0)
            for piece in pieces:
                out = evaluate(piece)
                device = out.logp.device
                mb_logp_old = piece.take(b_logp).to(device)
                mb_advantages = piece.take(b_advantages).to(device)
                if cfg.normalize_advantages:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (
                        mb_advantages.std() + 1e-8
                    )
                if b_mask is None:
                    mb_mask = torch.ones_like(mb_advantages)
                else:
                    mb_mask = piece.take(b_mask).to(device)
                pg_loss, clip_frac, approx_kl = clipped_surrogate(
                    out.logp, mb_logp_old, mb_advantages, mb_mask, cfg.clip
                )
                loss, v_loss, entropy = pg_loss, torch.zeros(()), torch.zeros(())
                if out.value is not None:
                    mb_returns = piece.take(b_returns).to(device)
                    v_loss = 0.5 * ((out.value - mb_returns) ** 2).mean()
                    loss = loss + cfg.vf_coef * v_loss
                if out.entropy is not None:
                    entropy = out.entropy.mean()
                    loss = loss - cfg.ent_coef * entropy
                if mb_total is None:
                    loss.backward()
                    weight = None
                else:  # this piece's share of the minibatch's steps
                    w = mb_mask.sum() / mb_total
                    (loss * w).backward()
                    weight = w.item()
                values = {
                    "loss": loss.item(), "policy_loss": pg_loss.item(),
                    "value_loss": v_loss.item(), "entropy": entropy.item(),
                    "clip_fraction": clip_frac, "approx_kl": approx_kl,
                }  # fmt: skip
                for key, value in values.items():
                    totals[key] = value if weight is None else totals[key] + value * weight
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            steps.append(UpdateStats(**totals))
    return steps


def _gradient_is_zero(batch: PPOBatch, cfg: PPOSettings, opt: torch.optim.Optimizer) -> bool:
    """Whether every step's gradient is exactly 0 without evaluating the policy: every
    advantage is 0 (a batch whose episodes all have one return, such as no success under
    sparse reward: :func:`trajectory_advantages`), and no critic, entropy bonus or weight
    decay adds a term of its own. One host read per batch."""
    if cfg.vf_coef or cfg.ent_coef:
        return False
    if any(group.get("weight_decay", 0.0) for group in opt.param_groups):
        return False
    return not bool(batch.advantages.ne(0).any())


def _zero_gradient_steps(
    opt: torch.optim.Optimizer, params: list[Tensor], cfg: PPOSettings
) -> list[UpdateStats]:
    """The optimiser steps of a batch whose gradient is 0 (:func:`_gradient_is_zero`),
    without the forward and backward passes: each step sees the zero gradient the full
    update would compute, so momentum moves the weights exactly as it would have (a weight
    outside the loss's graph, which the full update leaves without a gradient, gets a zero
    one: with no weight decay an Adam or SGD step leaves it where it is). The policy is not
    evaluated, so the ratio's statistics (clip fraction, approximate KL) are NaN: not
    measured."""
    steps = []
    for _ in range(cfg.epochs * cfg.n_minibatches):
        for p in params:
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        opt.step()
        steps.append(UpdateStats(loss=0.0, policy_loss=0.0, value_loss=0.0, entropy=0.0,
                                 clip_fraction=math.nan, approx_kl=math.nan))  # fmt: skip
    opt.zero_grad(set_to_none=True)
    return steps


# ------------------------------------------------------------------ internal / raw RL runs


@dataclass
class RLConfig:
    """Shared by internal RL and raw-action RL (same optimiser, same budget)."""

    task: str = "post"
    """Task the env enforces (``post``: gridworld 0-1-2-3-4-5-6-7-0-1-2-3, ant 0-1-2-3)."""
    episodes: int = 1_000_000
    """Total episode budget."""
    batch_size: int = 1024
    """Episodes per PPO batch."""
    epochs: int = 4
    """PPO epochs per batch."""
    lr: float = 3e-5
    """AdamW learning rate (paper: 3e-5)."""
    weight_decay: float = 0.0
    clip: float = 0.2
    """PPO clipping range."""
    threshold: float = 0.5
    """Internal RL: switch when ``beta >= threshold``."""
    d_policy: int = 256
    """Internal RL: policy SSM width."""
    checkpoint_every: int = 20
    """Checkpoint every this many batches."""
    sample_episodes: int = 32
    """Episodes stored in ``episodes.json`` for the dashboard."""
    seed: int = 0

    def __post_init__(self) -> None:
        runs.check_finite_fields(self)
        parse_task(self.task)
        for name in ("episodes", "batch_size", "epochs", "checkpoint_every", "d_policy"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} must be > 0")
        if not 0 < self.clip < 1:
            raise ValueError(f"clip={self.clip!r} must lie in (0, 1)")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold={self.threshold!r} must lie in (0, 1]")

    @property
    def n_batches(self) -> int:
        return -(-self.episodes // self.batch_size)

    @property
    def ppo(self) -> PPOSettings:
        """The update's settings: whole-batch epochs, no critic, no entropy bonus (C.5.2)."""
        return PPOSettings(epochs=self.epochs, clip=self.clip)


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, stream)`` (stream = batch index)."""
    value = int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])
    return torch.Generator().manual_seed(value)


_PATHS = ("metacontroller", "base_run")
"""Config keys holding a path as typed: a resume checks the weights' hash in their ``_ref``."""


def create_or_resume(out: Path, config: dict, resume: bool, module, opt) -> int:
    """Create the run folder (or resume it); return the first batch index to run."""
    same = [k for k in config if k not in _PATHS and not k.endswith("_ref")]
    ckpt = runs.start_run(out, config, resume=resume, compare=same)
    if resume:
        saved = runs.read_json(out / "config.json", "RL config")
        for key in (k for k in config if k.endswith("_ref")):
            if (saved.get(key) or {}).get("sha256") not in (None, config[key]["sha256"]):
                raise runs.RunError(f"--resume: {out} was trained from another {key[:-4]}")
    start = 0
    if ckpt is not None:
        runs.load_weights(module, ckpt / "model.safetensors")
        state = runs.load_trainer_state(ckpt, ("optimizer", "batch"))
        opt.load_state_dict(state["optimizer"])
        start = int(state["batch"])
    runs.truncate_metrics(out / "metrics.jsonl", "batch", start)
    return start


def batch_loop(out, cfg: RLConfig, start, opt, module, *, collect_fn, update_fn, stop_after,
               progress, desc) -> dict[str, float]:  # fmt: skip
    """Batches ``start..`` of an RL run: ``collect_fn(b, n_sample)`` a batch of episodes,
    ``update_fn(batch)`` -> stats with ``loss``, ``clip_fraction``, ``approx_kl``; one
    ``metrics.jsonl`` row per batch, a checkpoint every ``cfg.checkpoint_every`` batches and
    on an interrupt, ``policy.safetensors`` and ``summary.json`` at the end."""
    metrics_path = out / "metrics.jsonl"
    end = cfg.n_batches if stop_after is None else min(cfg.n_batches, start + stop_after)
    bar = tqdm(total=cfg.n_batches * cfg.batch_size, initial=start * cfg.batch_size, desc=desc,
               unit="ep", disable=not progress, dynamic_ncols=True)  # fmt: skip
    t_start = time.perf_counter()
    with guarded(bar, start) as guard:
        for b in range(start, end):
            t0 = time.perf_counter()
            last = b == cfg.n_batches - 1
            batch = collect_fn(b, cfg.sample_episodes if last else 0)
            t_collect = time.perf_counter() - t0
            stats = update_fn(batch)
            if not math.isfinite(stats["loss"]):
                raise runs.NonFiniteError(
                    f"{desc}: the loss is not finite at batch {b + 1}; stopped without saving "
                    f"(last good checkpoint: batch {guard.saved_at}); lower --lr"
                )
            dt = time.perf_counter() - t0
            rec = {
                "batch": b + 1,
                "episodes": (b + 1) * cfg.batch_size,
                "success": float(batch.success.mean()),
                "abstract_steps": float(batch.n_abstract.mean()),
                "raw_steps": float(batch.length.mean()),
                "clip_fraction": stats["clip_fraction"],
                "approx_kl": stats["approx_kl"],
                "loss": stats["loss"],
                "episodes_per_s": cfg.batch_size / dt,
                "rollout_episodes_per_s": cfg.batch_size / max(t_collect, 1e-9),
            }
            runs.append_metrics(metrics_path, rec)
            bar.update(cfg.batch_size)
            guard.at(b + 1)
            bar.set_postfix(success=f"{rec['success']:.3f}", k=f"{rec['abstract_steps']:.1f}")
            if batch.sample:
                runs.write_json(out / "episodes.json", {"episodes": batch.sample})
            if guard.checkpoint_due(b + 1, cfg.checkpoint_every, cfg.n_batches):
                runs.save_checkpoint(
                    out, b + 1, module, {"optimizer": opt.state_dict(), "batch": b + 1}
                )
                guard.saved(b + 1)
    bar.close()
    if end < cfg.n_batches:
        return {}
    runs.save_weights(module, out / "policy.safetensors")
    recs = runs.read_metrics(metrics_path)
    succ = [r["success"] for r in recs]
    eps = [r["episodes"] for r in recs]
    tail = succ[-max(1, len(succ) // 10) :]
    reached = next((e for e, s in zip(eps, succ, strict=True) if s >= 0.5), None)
    summary = {
        "rl/final_success": float(np.mean(tail)),
        "rl/max_success": float(max(succ)),
        "rl/episodes": float(eps[-1]),
        "rl/episodes_to_0.5": float(reached) if reached is not None else float("nan"),
        "rl/episodes_per_s": float(np.mean([r["episodes_per_s"] for r in recs])),
        "rl/rollout_episodes_per_s": float(np.mean([r["rollout_episodes_per_s"] for r in recs])),
        "rl/seconds": time.perf_counter() - t_start,
    }
    runs.write_json(out / "summary.json", summary)
    return summary
