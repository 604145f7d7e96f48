"""Fitting CompILE (:mod:`irl_lens.models.compile_model`) through the frozen base model.

:func:`compile_loss` is the adapted ELBO of the module docstring there: each segment's
latent steers the frozen base at layer ``l`` (``e + U(z_i) e``), the action log-likelihood
of every step is weighted by the step's segment masks, and the two rate terms (latents,
boundaries) are added per real step. The reconstruction is the action term only (CompILE
reconstructs actions; the base's next-observation head is not used). :func:`fit_compile`
runs the optimizer on it (issue 31: the run folder, the CLI, the analyses and internal RL
over CompILE's latents are still to come).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from irl_lens.data.dataset import Batch, TrajectoryDataset, bucketed_batches, make_batch
from irl_lens.hooks import intervene
from irl_lens.models.compile_model import CompILE
from irl_lens.train.controllers import frozen
from irl_lens.train.raw_rl import action_log_prob


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
    return CompILELoss(nll / n + beta_z * kl_z + beta_b * kl_b, nll / n, kl_z, kl_b)


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
            losses.append(float(parts.loss))
    model.eval()
    return losses
