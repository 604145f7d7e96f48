"""Commitment: refit a metacontroller's decoder so that its codes command the base model.

An addition to the paper (issue 29, measured in ``docs/experiments-log.md``). Discovery
trains the hypernetwork decoder on *sampled* codes, so it learns to treat a code as evidence
and to combine it with the base model's own prior over what comes next; that prior never
errs on pretraining data, and after 0-1 it gives a transition pretraining never showed
(2-3) about zero, so no code can impose it (steering on ``post`` with ideal codes: 0.000).
Refitting a fresh decoder, with the encoder and the switching unit frozen, on codes the
decoder will be *given* at use time makes it impose the subgoal instead:

``means``
    the posterior means ``mu_t`` (no code noise): the decoder imposes, but only near the
    cluster centres; codes drawn from an RL policy's initial ``N(0, I)`` rarely commit.
``voronoi`` (default)
    each proposal replaced by a prior sample ``N(0, I)`` drawn from the k-means cell of its
    own posterior mean (cells fitted without labels on the means at switch times, or at
    every step where the switch barely fires: ``commit.cells_fitted_on``). Every
    code of the prior then commits to exactly one cell's subgoal, so an RL policy that
    starts at ``N(0, I)`` picks among subgoals about uniformly: the exploration a sparse
    reward needs.

In both modes the switch is noiseless (``beta`` from the posterior means) and the codes are
integrated by the switching recursion ``z_t = beta_t z~_t + (1 - beta_t) z_{t-1}``. The loss
is the action NLL of the frozen base with ``e + U(z) e`` at the metacontroller's layer (no
KL: the encoder is frozen). The result is an ordinary metacontroller folder
(``internal-rl`` takes it) whose ``config.json`` adds a ``commit`` section.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from torch import Tensor
from tqdm.auto import tqdm

from irl_lens import runs
from irl_lens.data.dataset import TrajectoryDataset, bucketed_batches, make_batch
from irl_lens.hooks import intervene
from irl_lens.models.common import noise
from irl_lens.models.metacontroller import (
    KIND,
    WEIGHTS,
    Metacontroller,
    build_metacontroller,
    decoder_parameters,
    integrate_codes,
    load_metacontroller,
    posterior,
)
from irl_lens.train.controllers import frozen
from irl_lens.train.loop import SCHEDULES, lr_at

logger = logging.getLogger(__name__)

MODES = ("voronoi", "means")


@dataclass(frozen=True)
class CommitConfig:
    """Settings of a commitment refit (defaults: the measurement behind issue 29)."""

    mode: str = "voronoi"
    """``voronoi`` or ``means`` (module docstring)."""
    steps: int = 400
    """Optimizer steps of the fresh decoder."""
    lr: float = 3e-3
    schedule: str = "cosine"
    """``cosine`` decay to 0 over ``steps``, or ``constant``. Measured on the quick
    reproduction's ``mc-full`` (refit seeds 0-2): compositional steering on ``post``
    0.636 / 0.616 / 0.686 with cosine, 0.516 / 0.702 / 0.624 with a constant rate."""
    tokens_per_batch: int = 4096
    k: int | None = None
    """Code cells for ``voronoi``; ``None``: the k in 2..8 with the best silhouette."""
    cell_batches: int = 8
    """Batches of posterior means at switch times the cells are fitted on."""
    candidates: int = 64
    """Prior draws per code when sampling inside its cell (rejection sampling)."""
    grad_clip: float = 1.0
    val_episodes: int = 200
    """Held-out episodes (the last ones), as in discovery; not trained on."""
    seed: int = 0

    def __post_init__(self) -> None:
        runs.check_finite_fields(self)
        if self.mode not in MODES:
            raise ValueError(f"CommitConfig.mode={self.mode!r}; allowed: {', '.join(MODES)}")
        for name in ("steps", "tokens_per_batch", "cell_batches", "candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"CommitConfig.{name}={getattr(self, name)!r} must be >= 1")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"CommitConfig.schedule={self.schedule!r}; allowed: {', '.join(SCHEDULES)}"
            )
        if self.k is not None and not 2 <= self.k <= 64:
            raise ValueError(f"CommitConfig.k={self.k!r}: use 2..64 or None (chosen by silhouette)")


def fit_cells(
    means: Float[Tensor, "n n_z"], k: int | None, seed: int = 0
) -> tuple[Float[Tensor, "k n_z"], dict[int, float]]:
    """k-means centroids of posterior means; with ``k=None`` the k in 2..8 whose clustering
    has the best silhouette (no labels). Returns the centroids and each k's silhouette."""
    x = means.detach().cpu().numpy()
    if len(x) < 3:
        raise ValueError(f"commit: {len(x)} switch codes; the metacontroller barely switches")
    ks = [k] if k is not None else [c for c in range(2, 9) if c < len(x)]
    scores, fits = {}, {}
    for c in ks:
        km = KMeans(c, n_init=10, random_state=seed).fit(x)
        fits[c] = km.cluster_centers_
        if len(set(km.labels_)) > 1:
            sub = np.random.default_rng(seed).permutation(len(x))[:4000]  # silhouette is O(n^2)
            scores[c] = float(silhouette_score(x[sub], km.labels_[sub]))
    best = k if k is not None else max(scores, key=scores.get)
    return torch.tensor(fits[best], dtype=means.dtype, device=means.device), scores


def cell_samples(
    mu: Float[Tensor, "*lead n_z"],
    centroids: Float[Tensor, "k n_z"],
    generator: torch.Generator,
    candidates: int = 64,
) -> Float[Tensor, "*lead n_z"]:
    """For each code, a ``N(0, I)`` draw that falls in the same cell (nearest centroid) as
    ``mu``; the centroid itself when none of ``candidates`` draws does."""
    flat = mu.reshape(-1, mu.shape[-1])  # [n, n_z]
    target = torch.cdist(flat, centroids).argmin(-1)  # [n]
    draws = noise("randn", (flat.shape[0], candidates, flat.shape[-1]), generator, mu.device)
    cell = torch.cdist(draws, centroids.expand(flat.shape[0], *centroids.shape)).argmin(-1)
    ok = cell == target[:, None]  # [n, candidates]
    first = ok.float().argmax(-1)  # the first draw inside the cell
    pick = draws[torch.arange(flat.shape[0], device=mu.device), first]
    pick = torch.where(ok.any(-1, keepdim=True), pick, centroids[target])
    return pick.reshape(mu.shape)


@dataclass
class CommitResult:
    out: Path
    summary: dict
    held_out: np.ndarray
    """The episodes of the data not trained on (for analyses of the new folder)."""


def _switch_means(base, mc: Metacontroller, layer: int, ds, order, n_batches: int
                  ) -> tuple[Tensor, str]:  # fmt: skip
    """Posterior means at the positions where the noiseless switch fires, and ``"switches"``;
    where it fires fewer than :data:`MIN_SWITCH_CODES` times (a metacontroller that barely
    switches, e.g. a few steps of training), the means at every step and ``"all steps"``."""
    at_switch, every = [], []
    with torch.no_grad():
        for episodes in order[:n_batches]:
            batch = make_batch(ds, episodes, _device(mc))
            mo = posterior(base, mc, layer, batch.obs, batch.mask, sample=False)
            valid = batch.mask.bool()
            at_switch.append(mo.mu[(mo.beta > 0.5) & valid])
            every.append(mo.mu[valid])
    found = torch.cat(at_switch)
    if len(found) >= MIN_SWITCH_CODES:
        return found, "switches"
    logger.warning("commit: the switch fired %d times in %d batches; code cells fitted on the "
                   "posterior means at every step", len(found), n_batches)  # fmt: skip
    return torch.cat(every), "all steps"


MIN_SWITCH_CODES = 16
"""Fewer switch codes than this: the cells are fitted on the means at every step."""


def _codes(base, mc, layer, batch, cfg, centroids, generator) -> Tensor:
    """The integrated codes the decoder is refitted on (module docstring)."""
    with torch.no_grad():
        mo = posterior(base, mc, layer, batch.obs, batch.mask, sample=False)
        if cfg.mode == "means":
            return mo.z
        proposals = cell_samples(mo.mu, centroids, generator, cfg.candidates)
        return integrate_codes(proposals, mo.beta)


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _val_nll(base, mc, layer, ds, episodes) -> float:
    tot, n = 0.0, 0.0
    with torch.no_grad():
        for chunk in np.array_split(episodes, max(1, len(episodes) // 64)):
            batch = make_batch(ds, chunk, _device(mc))
            mo = posterior(base, mc, layer, batch.obs, batch.mask, sample=False)
            with intervene(base, layer, lambda e, z=mo.z: mc.apply_code(e, z)):
                out = base(batch.obs)
            nll, _ = base.losses(out, batch.action, batch.next_obs, batch.mask)
            w = float(batch.mask.sum())
            tot, n = tot + float(nll) * w, n + w
    return tot / max(n, 1.0)


def commit(
    mc_path: str | Path,
    ds: TrajectoryDataset,
    out: str | Path,
    cfg: CommitConfig,
    *,
    data_path: str | None = None,
    analyse: Callable[[Path, np.ndarray], dict] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> CommitResult:
    """Refit the decoder of the metacontroller in ``mc_path`` on ``ds`` into a new folder
    ``out`` (see the module docstring); the source folder is not changed. ``analyse(folder,
    held_out)`` adds its numbers to ``summary.json`` before the folder is put in place (an
    interrupted analysis leaves no finished-looking folder). Runs on ``device``; the code noise
    comes from a CPU generator (the same numbers on every device)."""
    mc_path = Path(mc_path)
    out = runs.check_output(out, KIND, inputs=[mc_path])
    loaded = load_metacontroller(mc_path, device=device)
    base, old, layer = loaded.base, loaded.mc, loaded.layer
    n_val = min(cfg.val_episodes, ds.n_episodes // 5)
    train_ds = ds.subset(np.arange(ds.n_episodes - n_val))
    val_idx = np.arange(ds.n_episodes - n_val, ds.n_episodes)
    order = bucketed_batches(
        train_ds.lengths, cfg.tokens_per_batch, np.random.default_rng(cfg.seed)
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    centroids, silhouettes, fitted_on = None, {}, None
    if cfg.mode == "voronoi":
        means, fitted_on = _switch_means(base, old, layer, train_ds, order, cfg.cell_batches)
        centroids, silhouettes = fit_cells(means, cfg.k, seed=cfg.seed)
        logger.info("commit: %d code cells (silhouettes %s)", len(centroids), silhouettes)
    # the old metacontroller's encoder and switch, a fresh decoder
    mc = build_metacontroller(old.cfg, seed=cfg.seed + 11).to(device)
    fresh = {n: p.detach().clone() for n, p in decoder_parameters(mc)}
    mc.load_state_dict(old.state_dict())
    with torch.no_grad():
        for n, p in decoder_parameters(mc):
            p.copy_(fresh[n])
    params = [p for _, p in decoder_parameters(mc)]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    val_before = _val_nll(base, old, layer, ds, val_idx)
    with frozen(base), frozen(mc):
        for p in params:
            p.requires_grad_(True)
        for step in tqdm(range(cfg.steps), desc=f"commit ({cfg.mode})", disable=not progress):
            batch = make_batch(train_ds, order[step % len(order)], device)
            z = _codes(base, mc, layer, batch, cfg, centroids, generator)
            with intervene(base, layer, lambda e, z=z: e + mc.delta(e, z)):
                out_ = base(batch.obs)
            nll, _ = base.losses(out_, batch.action, batch.next_obs, batch.mask)
            opt.zero_grad(set_to_none=True)
            nll.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg.lr, cfg.steps, schedule=cfg.schedule)
            opt.step()
    mc.eval()
    summary = {
        "commit/steps": float(cfg.steps),
        "commit/cells": float(len(centroids)) if centroids is not None else None,
        "commit/val_action_nll_before": val_before,
        "commit/val_action_nll": _val_nll(base, mc, layer, ds, val_idx),
    }
    config = dict(loaded.config)
    base_dir = runs.resolve_ref(loaded.config, "base_run", mc_path)
    config |= {
        "base_run": str(base_dir),
        "base_run_ref": runs.run_ref(base_dir, out),
        "committed_from": runs.run_ref(mc_path, out, WEIGHTS),
        "commit": dataclasses.asdict(cfg)
        | {
            "data": data_path,
            "data_sha256": ds.fingerprint(),
            "centroids": None if centroids is None else centroids.tolist(),
            "cells_fitted_on": fitted_on,
            "silhouettes": {str(k): v for k, v in silhouettes.items()},
        },
    }
    with runs.staged(out) as tmp:
        runs.write_json(tmp / "config.json", config)
        runs.save_weights(mc, tmp / WEIGHTS)
        if (mc_path / "base.safetensors").is_file():  # cotrain: the base it was trained with
            shutil.copy(mc_path / "base.safetensors", tmp / "base.safetensors")
        if analyse is not None:
            summary |= analyse(tmp, val_idx)
        runs.write_json(tmp / "summary.json", summary)
    return CommitResult(out, summary, val_idx)
