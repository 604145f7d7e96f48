"""CompILE (Kipf et al. 2019), adapted as the paper's baseline (issue 31).

CompILE infers, from the *raw inputs* (observations and actions, never the residual
stream), ``M`` segments per trajectory and one latent ``z_i`` per segment; here each ``z_i``
drives the same frozen base model through the metacontroller's decoder path, ``e + U(z) e``
at layer ``l`` (:func:`irl_lens.models.controller.hyper_delta`), so a comparison with the
metacontroller isolates *where the abstraction is inferred from*.

Equations (``t`` = step, ``i`` = segment, ``b_i`` = the step that *ends* segment ``i``):

================================  ================================================================
encoder                           ``x_t = f(o_t, a_t)``; ``h_1:T = BiGRU(x_1:T)``
boundary ``i`` (``i < M - 1``)    ``q(b_i = t) = softmax_t(w^T h_t + log G_i(t))`` over real steps;
                                  a Gumbel-softmax sample while training (temperature ``tau``),
                                  ``q`` itself when not sampling
"in segment >= i"                 ``G_0(t) = 1``, ``G_{i+1}(t) = G_i(t) * P(b_i < t)``, with
                                  ``P(b_i < t) = sum_{t' < t} b_i(t')`` (exclusive cumsum)
segment masks                     ``m_i(t) = G_i(t) - G_{i+1}(t)`` (``G_M = 0``): non-negative,
                                  summing to one over ``i`` at every step
latent ``i``                      ``mu_i, log sigma_i^2 = heads(sum_t m_i(t) h_t / sum_t m_i(t))``,
                                  ``z_i = mu_i + sigma_i eps``
reconstruction                    ``-sum_t sum_i m_i(t) log p(a_t | o_1:t; e + U(z_i) e at l)``
rate terms                        ``beta_z sum_i KL(N(mu_i, sigma_i^2) || N(0, I))`` and
                                  ``beta_b sum_{i<M-1} KL(q(b_i) || p(b_i))``
================================  ================================================================

Adaptations (each one a choice this project made, not CompILE's):

* The decoder is not CompILE's per-segment policy network: it is the frozen base model
  steered by the metacontroller's hypernetwork decoder (the paper's adaptation).
* ``log G_i(t)`` is added to boundary ``i``'s logits (boundary ``i`` lies where segment ``i``
  may already be running), which keeps the boundaries in order; CompILE masks with the
  previous boundary's cumulative distribution in the same spirit.
* The boundary prior ``p(b_i)`` is a Poisson over the *position* of boundary ``i`` with mean
  ``(i + 1) * length_rate - 1`` (segments of ``length_rate`` steps on average), truncated to
  the episode's real steps; CompILE's is a Poisson over each segment's *length* from its
  sampled start. With soft starts the position form needs no sample.
* The last segment has no boundary: it runs to the end of the episode.
* Gridworld observations are embedded by a one-hot linear map of the 49 cells plus the
  agent's cell, the action by an embedding; ant vectors and torques by linear maps.

Every quantity is a TransformerLens ``HookPoint`` (``hook_boundary_logits``,
``hook_boundaries``, ``hook_segment_masks``, ``hook_latent_mu``, ``hook_latent_logvar``,
``hook_latent_z``, ``hook_controller_delta``, ``hook_controller_out``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from irl_lens import runs
from irl_lens.envs.gridworld_layout import N_CELL_CODES, N_CELLS
from irl_lens.models.common import DictConfig, build_seeded, noise
from irl_lens.models.controller import (
    hyper_delta,
    hyper_matrices,
    init_hyper_decoder,
)
from irl_lens.models.metacontroller import gaussian_kl

KIND = "compile"
"""The ``kind`` in a CompILE run folder's ``config.json``."""


@dataclass
class CompILEConfig(DictConfig):
    """Sizes of a :class:`CompILE` (``n_z``, ``d_dec`` and ``rank`` as the metacontroller's)."""

    d_model: int
    """Width of the base model's residual stream (the decoder writes into it)."""
    obs_kind: str = "grid"
    """``grid`` (observation tokens) or ``vector`` (ant)."""
    obs_dim: int = N_CELLS + 1
    action_kind: str = "discrete"
    n_actions: int = 4
    """Gridworld moves, or ant torque dimensions."""
    n_segments: int = 4
    """``M`` (paper: 4)."""
    n_z: int = 8
    d_hidden: int = 64
    d_dec: int = 32
    rank: int | None = 16
    temperature: float = 1.0
    """Gumbel-softmax temperature of the boundaries while training."""
    length_rate: float = 8.0
    """Mean segment length (steps) of the boundary prior."""

    def __post_init__(self) -> None:
        runs.check_finite_fields(self)
        for name in ("d_model", "obs_dim", "n_actions", "n_segments", "n_z", "d_hidden", "d_dec"):
            if getattr(self, name) < 1:
                raise ValueError(f"CompILEConfig.{name}={getattr(self, name)!r} must be >= 1")
        if self.obs_kind not in ("grid", "vector"):
            raise ValueError(f"CompILEConfig.obs_kind={self.obs_kind!r}: use grid or vector")
        if self.action_kind not in ("discrete", "continuous"):
            raise ValueError(
                f"CompILEConfig.action_kind={self.action_kind!r}: use discrete or continuous"
            )
        if not (self.temperature > 0 and self.length_rate > 0):
            raise ValueError("CompILEConfig.temperature and length_rate must be > 0")


@dataclass
class CompILEOutput:
    boundaries: Float[Tensor, "segments_minus_1 batch pos"]
    """Relaxed (or, without sampling, the distribution's) one-hot boundary positions."""
    boundary_q: Float[Tensor, "segments_minus_1 batch pos"]
    """``q(b_i = t)``: the categorical the boundaries are drawn from."""
    masks: Float[Tensor, "segments batch pos"]
    """``m_i(t)``: the share of step ``t`` that belongs to segment ``i``."""
    mu: Float[Tensor, "batch segments n_z"]
    logvar: Float[Tensor, "batch segments n_z"]
    z: Float[Tensor, "batch segments n_z"]
    kl_z: Float[Tensor, " batch"]
    kl_b: Float[Tensor, " batch"]


def boundary_log_prior(n_pos: int, segment: int, length_rate: float, device) -> Tensor:
    """``log p(b_i = t)`` before truncation: Poisson with mean ``(i + 1) * rate - 1``."""
    lam = max((segment + 1) * length_rate - 1.0, 1e-3)
    t = torch.arange(n_pos, device=device, dtype=torch.float32)
    return t * math.log(lam) - lam - torch.lgamma(t + 1.0)


class CompILE(HookedRootModule):
    """See the module docstring. ``forward(obs, action, mask)`` runs a batch of episodes."""

    def __init__(self, cfg: CompILEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.d_hidden
        if cfg.obs_kind == "grid":
            self.obs_cells = nn.Linear(N_CELLS * N_CELL_CODES, h)
            self.obs_agent = nn.Embedding(N_CELLS, h)
        else:
            self.obs_in = nn.Linear(cfg.obs_dim, h)
        if cfg.action_kind == "discrete":
            self.act_in = nn.Embedding(cfg.n_actions, h)
        else:
            self.act_in = nn.Linear(cfg.n_actions, h)
        self.rnn = nn.GRU(h, h, batch_first=True, bidirectional=True)
        self.boundary = nn.Linear(2 * h, 1)
        self.lat = nn.Sequential(nn.Linear(2 * h, h), nn.GELU())
        self.lat_mu = nn.Linear(h, cfg.n_z)
        self.lat_logvar = nn.Linear(h, cfg.n_z)
        init_hyper_decoder(self, cfg.n_z, cfg.d_dec, cfg.d_model, cfg.rank)
        hooks = ("boundary_logits", "boundaries", "segment_masks", "latent_mu",
                 "latent_logvar", "latent_z", "controller_delta", "controller_out")  # fmt: skip
        for name in hooks:
            setattr(self, f"hook_{name}", HookPoint())
        self.setup()

    # ------------------------------------------------------------------ pieces
    def encode(self, obs: Tensor, action: Tensor, mask: Tensor) -> Float[Tensor, "batch pos h2"]:
        """``h_1:T`` from the raw observations and actions (padding zeroed)."""
        if self.cfg.obs_kind == "grid":
            cells = F.one_hot(obs[..., :N_CELLS].long(), N_CELL_CODES).flatten(-2).float()
            x = self.obs_cells(cells) + self.obs_agent(obs[..., N_CELLS].long())
        else:
            x = self.obs_in(obs.float())
        if self.cfg.action_kind == "discrete":
            x = x + self.act_in(action.long().clamp(min=0))
        else:
            x = x + self.act_in(action.float())
        x = F.gelu(x) * mask.unsqueeze(-1)
        return self.rnn(x)[0] * mask.unsqueeze(-1)

    def segments(
        self, h: Tensor, mask: Tensor, sample: bool, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(boundaries, q, masks, kl_b)`` (see the module docstring)."""
        valid = mask.bool()
        logits = self.hook_boundary_logits(self.boundary(h).squeeze(-1))  # [batch, pos]
        g = torch.ones_like(logits)  # G_0
        bounds, qs, masks, kl_b = [], [], [], logits.new_zeros(logits.shape[0])
        for i in range(self.cfg.n_segments - 1):
            lg = (logits + torch.log(g.clamp(min=1e-10))).masked_fill(~valid, -torch.inf)
            q = torch.softmax(lg, dim=-1)
            if sample:
                u = noise("rand", lg.shape, generator, lg.device).clamp(1e-10, 1 - 1e-10)
                gumbel = -torch.log(-torch.log(u))
                b = torch.softmax((lg + gumbel) / self.cfg.temperature, dim=-1)
            else:
                b = q
            prior = boundary_log_prior(lg.shape[1], i, self.cfg.length_rate, lg.device)
            # padding: a large finite log-prior, not -inf (0 * inf in the backward is NaN)
            prior = torch.log_softmax(prior.expand_as(lg).masked_fill(~valid, -1e9), -1)
            log_q = torch.log(q.clamp(min=1e-10))
            kl_b = kl_b + (q * (log_q - prior)).masked_fill(~valid, 0.0).sum(-1)
            before = torch.cumsum(b, dim=-1) - b  # P(b_i < t)
            g_next = g * before
            masks.append(g - g_next)
            bounds.append(b)
            qs.append(q)
            g = g_next
        masks.append(g)  # the last segment runs to the end
        m = torch.stack(masks) * mask.unsqueeze(0)
        b_all = torch.stack(bounds) if bounds else logits.new_zeros(0, *logits.shape)
        q_all = torch.stack(qs) if qs else logits.new_zeros(0, *logits.shape)
        return self.hook_boundaries(b_all), q_all, self.hook_segment_masks(m), kl_b

    def latents(
        self, h: Tensor, masks: Tensor, sample: bool, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(mu, logvar, z)`` per segment, ``[batch, segments, n_z]``."""
        weight = masks.permute(1, 0, 2)  # [batch, segments, pos]
        pooled = weight @ h / weight.sum(-1, keepdim=True).clamp(min=1e-6)
        hid = self.lat(pooled)
        mu = self.hook_latent_mu(self.lat_mu(hid))
        logvar = self.hook_latent_logvar(self.lat_logvar(hid).clamp(-10.0, 10.0))
        z = mu
        if sample:
            z = mu + torch.exp(0.5 * logvar) * noise("randn", mu.shape, generator, mu.device)
        return mu, logvar, self.hook_latent_z(z)

    def delta(self, e: Tensor, z: Tensor) -> Tensor:
        """``U(z) e`` through the metacontroller's decoder code."""
        return hyper_delta(self, e, z)

    def matrices(self, z: Tensor) -> Tensor:
        """``U(z)`` built explicitly (for tests and analyses)."""
        return hyper_matrices(self, z)

    def apply_code(self, e: Tensor, z: Tensor) -> Tensor:
        """``e + U(z) e`` (through the controller hooks, as the metacontroller writes it)."""
        delta = self.hook_controller_delta(self.delta(e, z))
        return self.hook_controller_out(e + delta)

    # ------------------------------------------------------------------ whole episodes
    def forward(  # type: ignore[override]
        self, obs: Tensor, action: Tensor, mask: Tensor, *, sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> CompILEOutput:  # fmt: skip
        mask = mask.float()
        h = self.encode(obs, action, mask)
        bounds, q, masks, kl_b = self.segments(h, mask, sample, generator)
        mu, logvar, z = self.latents(h, masks, sample, generator)
        kl_z = gaussian_kl(mu, logvar).sum(-1)  # [batch]
        return CompILEOutput(bounds, q, masks, mu, logvar, z, kl_z, kl_b)


def build_compile(cfg: CompILEConfig, seed: int = 0) -> CompILE:
    """A freshly initialised :class:`CompILE` (same seed, same weights)."""
    return build_seeded(lambda: CompILE(cfg), seed)
