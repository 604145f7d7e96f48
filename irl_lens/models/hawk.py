"""The Hawk base action model (issue 32): the base model's interface on RG-LRU blocks.

The paper's ant base is a Hawk SSM (De et al. 2024): a stack of pre-norm residual blocks,
each a gated linear recurrence (:class:`~irl_lens.models.ssm.RGLRU`) and a gated MLP. Here
it is a TransformerLens ``HookedRootModule`` with the same residual addressing as the
transformer base (:mod:`irl_lens.hooks`): ``blocks.{l}.hook_resid_pre`` holds the stream
before block ``l`` and ``blocks.{L-1}.hook_resid_post`` the last block's output, so probes,
supervised controllers, the metacontroller and every intervention address it unchanged.
It keeps the transformer base's encoders (:func:`~irl_lens.models.base.make_obs_encoder`)
and heads (:class:`~irl_lens.models.base.ActionModelEnds`): one position per timestep, the
action and next-observation outputs in one unembed.

``forward(obs, start_at_layer=, stop_at_layer=)`` runs part of the stack over whole
sequences, as the transformer's does. Rollouts step it one position at a time carrying
each block's recurrent state ``h`` instead of a key/value cache (:meth:`step_blocks`, used by
:mod:`irl_lens.rollout.stepper`), with the same arithmetic as the full-sequence scan
(tested equal). The RG-LRU's gate matrices are block-diagonal with ``n_heads`` blocks, as
Griffin's (the paper's ant base: 8 heads). Adaptations, each stated: no temporal
convolution (a step then needs nothing but ``h``, :class:`~irl_lens.models.ssm.HawkBlock`),
and the blocks' own PyTorch initialisation except the unembed, which starts at the
transformer base's scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from irl_lens.models.base import ActionModelEnds, BaseModelConfig, make_obs_encoder
from irl_lens.models.ssm import HawkBlock

#: One recurrent state per block, ``[rows, d_model]`` each (None before the first step).
HawkState = list[Tensor | None]


@dataclass
class HawkShape:
    """The few ``model.cfg`` fields the project reads from any base model (TransformerLens
    names: ``n_layers``, ``d_model``, ``n_ctx``, ``device``)."""

    n_layers: int
    d_model: int
    n_ctx: int
    d_vocab_out: int
    device: torch.device


class HookedHawkBlock(nn.Module):
    """One Hawk block with the transformer blocks' residual hook points."""

    def __init__(self, d_model: int, d_mlp: int, heads: int = 1) -> None:
        super().__init__()
        self.hawk = HawkBlock(d_model, d_rnn=d_model, d_mlp=d_mlp, heads=heads)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        return self.hook_resid_post(self.hawk(self.hook_resid_pre(x)))

    def step(
        self, x: Float[Tensor, "rows 1 d_model"], h: Tensor | None
    ) -> tuple[Float[Tensor, "rows 1 d_model"], Tensor]:
        """One new position (hooks see it as a sequence of one), and the new state."""
        y, h = self.hawk.step(self.hook_resid_pre(x)[:, 0], h)
        return self.hook_resid_post(y[:, None]), h


class HawkActionModel(ActionModelEnds, HookedRootModule):
    """The base action model on Hawk blocks (module docstring)."""

    def __init__(self, cfg: BaseModelConfig) -> None:
        super().__init__()
        self.model_cfg = cfg
        d_out = cfg.d_vocab_out
        self.cfg = HawkShape(cfg.n_layers, cfg.d_model, cfg.n_ctx, d_out, torch.device("cpu"))
        self.obs_encoder = make_obs_encoder(cfg)
        self.hook_obs_embed = HookPoint()
        self.blocks = nn.ModuleList(
            [HookedHawkBlock(cfg.d_model, cfg.d_mlp, cfg.n_heads) for _ in range(cfg.n_layers)]
        )
        self.ln_final = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, d_out)
        nn.init.normal_(self.unembed.weight, std=(cfg.init_scale / cfg.d_model) ** 0.5)
        nn.init.zeros_(self.unembed.bias)
        self.setup()

    def forward(
        self,
        obs: Tensor,
        *,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        past_kv_cache=None,
        return_type: str | None = "logits",
    ) -> Tensor | None:
        """Observations (or, with ``start_at_layer``, the residual stream before that block)
        -> the unembed output ``[batch, pos, d_vocab_out]``, or the residual stream before
        block ``stop_at_layer`` when that is given. Whole sequences only: a rollout steps
        the recurrent state with :meth:`step_blocks`."""
        if past_kv_cache is not None:
            raise ValueError(
                "a Hawk base carries a recurrent state, not a key/value cache: step it with "
                "irl_lens.rollout.stepper.make_stepper"
            )
        resid = self.embed_obs(obs) if start_at_layer is None else obs
        start = start_at_layer or 0
        stop = self.cfg.n_layers if stop_at_layer is None else stop_at_layer
        for block in self.blocks[start:stop]:
            resid = block(resid)
        if stop_at_layer is not None:
            return resid
        out = self.unembed(self.ln_final(resid))
        return out if return_type == "logits" else None

    def run_with_cache(self, *args, return_cache_object: bool = True,
                       remove_batch_dim: bool = False, **kwargs):  # fmt: skip
        """As ``HookedTransformer.run_with_cache``: the output and an ``ActivationCache``."""
        out, cache = super().run_with_cache(*args, remove_batch_dim=remove_batch_dim, **kwargs)
        if return_cache_object:
            cache = ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)
        return out, cache

    def step_blocks(
        self, resid: Float[Tensor, "rows 1 d_model"], start: int, stop: int, state: HawkState
    ) -> Float[Tensor, "rows 1 d_model"]:
        """Blocks ``start..stop-1`` on one new position, updating ``state[l]`` in place."""
        for layer in range(start, stop):
            resid, state[layer] = self.blocks[layer].step(resid, state[layer])
        return resid

    def unembed_step(
        self, resid: Float[Tensor, "rows 1 d_model"]
    ) -> Float[Tensor, "rows d_vocab_out"]:
        """The final norm and unembed on one position."""
        return self.unembed(self.ln_final(resid))[:, 0]

    def to(self, *args, print_details: bool = True, **kwargs):  # noqa: ARG002 (TL's signature)
        """``nn.Module.to``, keeping ``cfg.device`` in step (as TransformerLens's ``to``)."""
        moved = super().to(*args, **kwargs)
        self.cfg.device = next(self.parameters()).device
        return moved
