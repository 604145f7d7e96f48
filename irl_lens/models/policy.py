"""The internal-RL policy ``pi(z_k | e_1:k)``: a causal one-layer RG-LRU over abstract steps.

Internal RL (paper Section 4) acts once per *abstract* step: whenever the frozen switching
unit fires, the policy reads the residual ``e`` at the metacontroller's layer and proposes
the next latent code ``z``. The policy is a linear read-in, one causal
:class:`~irl_lens.models.ssm.HawkBlock`, and a Gaussian head (state-independent
log-standard-deviation). The mean head starts at zero and the standard deviation at one,
so before any learning the policy *is* the metacontroller's prior ``N(0, I)``.

:meth:`InternalPolicy.step` advances one abstract step (rollouts);
:meth:`InternalPolicy.forward` recomputes a whole padded batch of abstract sequences with
gradients (the PPO update). Both give the same numbers (tested). Hook points:
``hook_features`` (the SSM output) and ``hook_mean``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from irl_lens import runs
from irl_lens.models.common import DictConfig, build_seeded
from irl_lens.models.ssm import HawkBlock


@dataclass
class PolicyConfig(DictConfig):
    d_model: int
    """Width of the residual stream the policy reads."""
    n_z: int = 8
    """Size of the latent code it outputs."""
    d_policy: int = 256
    """SSM width (paper: 256)."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the Gaussian (0: the prior's unit scale)."""

    def __post_init__(self) -> None:
        runs.check_finite_fields(self)
        for name in ("d_model", "n_z", "d_policy"):
            if getattr(self, name) < 1:
                raise ValueError(f"PolicyConfig.{name}={getattr(self, name)!r} must be >= 1")


class InternalPolicy(HookedRootModule):
    """Gaussian policy over latent codes, causal over the abstract steps of an episode."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Sequential(nn.LayerNorm(cfg.d_model), nn.Linear(cfg.d_model, cfg.d_policy))
        self.block = HawkBlock(cfg.d_policy)
        self.norm = nn.LayerNorm(cfg.d_policy)
        self.mean = nn.Linear(cfg.d_policy, cfg.n_z)
        nn.init.zeros_(self.mean.weight)
        nn.init.zeros_(self.mean.bias)
        self.log_std = nn.Parameter(torch.full((cfg.n_z,), float(cfg.init_log_std)))
        self.hook_features = HookPoint()
        self.hook_mean = HookPoint()
        self.setup()

    def forward(
        self, e: Float[Tensor, "batch k d_model"]
    ) -> tuple[Float[Tensor, "batch k n_z"], Float[Tensor, " n_z"]]:
        """``(mean, log_std)`` for every abstract step of padded sequences (causal)."""
        x = self.hook_features(self.block(self.inp(e)))
        return self.hook_mean(self.mean(self.norm(x))), self.log_std

    def step(
        self, e: Float[Tensor, "batch d_model"], state: Tensor | None
    ) -> tuple[Float[Tensor, "batch n_z"], Float[Tensor, " n_z"], Tensor]:
        """``(mean, log_std, new_state)`` for one abstract step."""
        x, state = self.block.step(self.inp(e), state)
        return self.mean(self.norm(x)), self.log_std, state

    def log_prob(
        self, mean: Tensor, log_std: Tensor, z: Float[Tensor, "*lead n_z"]
    ) -> Float[Tensor, "*lead"]:
        """Log-density of ``z`` under ``N(mean, exp(log_std)^2)``, summed over ``n_z``."""
        return torch.distributions.Normal(mean, log_std.exp()).log_prob(z).sum(-1)


def build_policy(cfg: PolicyConfig, seed: int = 0) -> InternalPolicy:
    """An :class:`InternalPolicy` with a reproducible initialisation (global RNG untouched)."""
    return build_seeded(lambda: InternalPolicy(cfg), seed)
