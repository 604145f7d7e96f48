"""Key/value-cache steppers: the frozen base model split at layer ``l``, one position at a time.

A stepper runs one new position through the **lower half** (blocks ``< l``: observation ->
``e_t`` at layer ``l``) or the **upper half** (blocks ``>= l``, final norm, unembed:
``e_hat_t`` -> action-head outputs), remembering the keys and values of earlier positions
in a preallocated cache, so a whole batch of episodes is stepped without re-running their
history. Two implementations give the same numbers (tested in ``tests/test_engine.py``):

* :class:`_HookedStepper` calls the model's own TransformerLens forward (``start_at_layer``
  / ``stop_at_layer`` / ``past_kv_cache``), so every hook attached to the model fires as
  usual.
* :class:`_FastStepper` computes the same blocks from the same weights with fused matmuls
  and a cache of already-rotated keys (TransformerLens re-rotates every cached key at every
  step). It is used when the model has no hooks attached and a plain pre-LN rotary
  architecture (:func:`_fast_path_problem`); otherwise :func:`make_stepper` falls back to
  the hooked one.

Both share one length over all rows: a stepper serves one batch of episodes started
together and holds at most ``max_len`` positions; ``select(rows)`` keeps only some rows
(finished episodes dropped from the batch). A recurrent base (the Hawk model, issue 32)
gets :class:`_RecurrentStepper`: each block's state ``h`` replaces the cache.
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from irl_lens.hooks import hook_count
from irl_lens.models.base import ActionModel
from irl_lens.models.hawk import HawkActionModel, HawkState

logger = logging.getLogger(__name__)

__all__ = ["Stepper", "make_stepper"]


class Stepper(Protocol):
    """One batch of episodes stepped through the two halves of the model, one position a call."""

    def lower(self, tok: Tensor) -> Float[Tensor, "rows 1 d_model"]:
        """Observations ``[rows, 1, ...]`` of the new position -> ``e_t`` at the layer."""
        ...

    def upper(self, e_hat: Tensor) -> Float[Tensor, "rows d_vocab_out"]:
        """``e_hat_t`` ``[rows, 1, d_model]`` -> the unembed's outputs for the new position."""
        ...

    def select(self, rows: Tensor) -> None:
        """Keep only these rows (indices into the current rows, ascending)."""
        ...


def make_stepper(
    model: ActionModel, layer: int, n: int, max_len: int, fast: bool = True
) -> Stepper:
    """A stepper for ``n`` rows and at most ``max_len`` positions: the fast one when the
    model allows it (and ``fast``), else the hooked forward."""
    if isinstance(model, HawkActionModel):
        return _RecurrentStepper(model, layer)
    problem = _fast_path_problem(model) if fast else "fast=False"
    if problem is None:
        return _FastStepper(model, layer, n, max_len)
    logger.debug("rollout engine: stepping through the hooked forward (%s)", problem)
    return _HookedStepper(model, layer, n, max_len)


class _StaticKVEntry:
    """One layer's keys and values in a preallocated buffer.

    Duck-types TransformerLens's ``TransformerLensKeyValueCacheEntry`` (``past_keys``,
    ``past_values``, ``frozen``, ``append``) so its attention code runs unchanged, but
    appends write into the buffer instead of concatenating.
    """

    frozen = False

    def __init__(self, n: int, max_len: int, n_heads: int, d_head: int, device, dtype) -> None:
        self.keys = torch.empty(n, max_len, n_heads, d_head, device=device, dtype=dtype)
        self.values = torch.empty_like(self.keys)  # [batch, max_len, n_heads, d_head]
        self.length = 0

    @property
    def past_keys(self) -> Tensor:
        return self.keys[:, : self.length]

    @property
    def past_values(self) -> Tensor:
        return self.values[:, : self.length]

    def append(self, new_keys: Tensor, new_values: Tensor) -> tuple[Tensor, Tensor]:
        end = self.length + new_keys.shape[1]
        if end > self.keys.shape[1]:
            raise ValueError(f"key/value cache is full ({self.keys.shape[1]} positions)")
        self.keys[:, self.length : end] = new_keys
        self.values[:, self.length : end] = new_values
        self.length = end
        return self.keys[:, :end], self.values[:, :end]

    def select(self, rows: Tensor) -> None:
        self.keys = _select_rows(self.keys, rows, self.length, dim=1)
        self.values = _select_rows(self.values, rows, self.length, dim=1)


def _select_rows(buf: Tensor, rows: Tensor, length: int, dim: int) -> Tensor:
    """``buf[rows]`` in a fresh buffer of the same capacity, copying the filled positions only."""
    new = buf.new_empty((len(rows), *buf.shape[1:]))
    torch.index_select(buf.narrow(dim, 0, length), 0, rows, out=new.narrow(dim, 0, length))
    return new


class _HookedStepper:
    """Steps through ``ActionModel.forward`` with a preallocated key/value cache."""

    def __init__(self, model: ActionModel, layer: int, n: int, max_len: int) -> None:
        cfg = model.cfg
        device = next(model.parameters()).device
        n_heads = cfg.n_key_value_heads or cfg.n_heads
        self.model, self.layer = model, layer
        self.entries = [
            _StaticKVEntry(n, max_len, n_heads, cfg.d_head, device, cfg.dtype)
            for _ in range(cfg.n_layers)
        ]

    def __getitem__(self, i: int) -> _StaticKVEntry:  # the model indexes the cache by block
        return self.entries[i]

    def lower(self, tok: Tensor) -> Float[Tensor, "rows 1 d_model"]:
        return self.model(tok, stop_at_layer=self.layer, past_kv_cache=self)

    def upper(self, e_hat: Tensor) -> Float[Tensor, "rows d_vocab_out"]:
        return self.model(e_hat, start_at_layer=self.layer, past_kv_cache=self)[:, -1]

    def select(self, rows: Tensor) -> None:
        for entry in self.entries:
            entry.select(rows)


class _RecurrentStepper:
    """Steps a recurrent base (:class:`~irl_lens.models.hawk.HawkActionModel`) carrying each
    block's state instead of a key/value cache; every hook on the model fires, on the new
    position only (as with :class:`_HookedStepper`)."""

    def __init__(self, model: HawkActionModel, layer: int) -> None:
        self.model, self.layer = model, layer
        self.state: HawkState = [None] * model.cfg.n_layers

    def lower(self, tok: Tensor) -> Float[Tensor, "rows 1 d_model"]:
        return self.model.step_blocks(self.model.embed_obs(tok), 0, self.layer, self.state)

    def upper(self, e_hat: Tensor) -> Float[Tensor, "rows d_vocab_out"]:
        x = self.model.step_blocks(e_hat, self.layer, self.model.cfg.n_layers, self.state)
        return self.model.unembed_step(x)

    def select(self, rows: Tensor) -> None:
        self.state = [None if h is None else h.index_select(0, rows) for h in self.state]


def _fast_path_problem(model: ActionModel) -> str | None:
    """Why :class:`_FastStepper` cannot stand in for the model's forward, or ``None``."""
    if isinstance(model, HawkActionModel):
        return "a recurrent (Hawk) base: stepped with its state, not a key/value cache"
    c = model.cfg
    wanted = {
        "normalization_type": "LN",
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "use_attn_scale": True,
        "n_key_value_heads": None,
        "parallel_attn_mlp": False,
        "attn_only": False,
        "gated_mlp": False,
        "use_normalization_before_and_after": False,
        "original_architecture": None,
        "use_local_attn": False,
        "use_attn_in": False,
        "use_split_qkv_input": False,
        "use_qk_norm": False,
        "dtype": torch.float32,
    }
    for key, value in wanted.items():
        if getattr(c, key, value) != value:
            return f"cfg.{key}={getattr(c, key)!r}"
    for key in ("use_logn_attn", "use_attention_sinks", "use_dynamic_ntk_rope"):
        if getattr(c, key, False):
            return f"cfg.{key}"
    for key in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        if getattr(c, key, -1.0) > 0:
            return f"cfg.{key}"
    if c.rotary_dim is None or c.rotary_dim % 2:
        return "rotary_dim"
    if hook_count(model):
        return "hooks are attached to the model"
    return None


class _FastStepper:
    """The model's blocks for one new position, computed from its weights directly."""

    def __init__(self, model: ActionModel, layer: int, n: int, max_len: int) -> None:
        c = model.cfg
        self.model, self.layer, self.t = model, layer, 0
        self.n_heads, self.d_head, self.rot = c.n_heads, c.d_head, c.rotary_dim
        self.eps = c.eps
        device = next(model.parameters()).device
        attn0 = model.blocks[0].attn
        if attn0.rotary_cos.shape[0] < max_len:
            raise ValueError(
                f"rotary tables hold {attn0.rotary_cos.shape[0]} < {max_len} positions"
            )
        self.cos, self.sin = attn0.rotary_cos, attn0.rotary_sin  # [n_ctx, rotary_dim]
        self.blocks = []
        for block in model.blocks:
            a = block.attn
            w_qkv = torch.cat([a.W_Q, a.W_K, a.W_V], dim=0)  # [3 * n_heads, d_model, d_head]
            self.blocks.append(
                {
                    "ln1": (block.ln1.w, block.ln1.b),
                    "ln2": (block.ln2.w, block.ln2.b),
                    # [3 * n_heads * d_head, d_model], as F.linear wants
                    "w_qkv": w_qkv.permute(0, 2, 1).reshape(-1, c.d_model).contiguous(),
                    "b_qkv": torch.cat([a.b_Q, a.b_K, a.b_V], dim=0).reshape(-1),
                    "w_o": a.W_O.reshape(-1, c.d_model).T.contiguous(),  # [d_model, n_heads*d_head]
                    "b_o": a.b_O,
                    "scale": float(a.attn_scale),
                    "w_in": block.mlp.W_in.T.contiguous(),
                    "b_in": block.mlp.b_in,
                    "w_out": block.mlp.W_out.T.contiguous(),
                    "b_out": block.mlp.b_out,
                    "act": block.mlp.act_fn,
                    # rotated keys and values, [rows, n_heads, max_len, d_head]
                    "k": torch.empty(n, c.n_heads, max_len, c.d_head, device=device),
                    "v": torch.empty(n, c.n_heads, max_len, c.d_head, device=device),
                }
            )
        self.ln_final = (model.ln_final.w, model.ln_final.b)
        self.w_u, self.b_u = model.unembed.W_U.T.contiguous(), model.unembed.b_U

    def _rope(self, x: Tensor) -> Tensor:
        """TransformerLens's GPT-NeoX rotary at position ``self.t``; ``x`` [rows, heads, d_head]."""
        r, half = self.rot, self.rot // 2
        x_rot = x[..., :r]
        flipped = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
        rotated = x_rot * self.cos[self.t] + flipped * self.sin[self.t]
        return torch.cat([rotated, x[..., r:]], dim=-1) if r < x.shape[-1] else rotated

    def _block(self, p: dict, x: Float[Tensor, "rows d_model"]) -> Float[Tensor, "rows d_model"]:
        t, n = self.t, x.shape[0]
        h = F.layer_norm(x, x.shape[-1:], p["ln1"][0], p["ln1"][1], self.eps)
        qkv = F.linear(h, p["w_qkv"], p["b_qkv"]).view(n, 3, self.n_heads, self.d_head)
        q, k, v = self._rope(qkv[:, 0]), self._rope(qkv[:, 1]), qkv[:, 2]
        p["k"][:, :, t] = k
        p["v"][:, :, t] = v
        scores = (q.unsqueeze(2) @ p["k"][:, :, : t + 1].transpose(-1, -2)) / p["scale"]
        z = torch.softmax(scores, dim=-1) @ p["v"][:, :, : t + 1]  # [rows, heads, 1, d_head]
        x = x + F.linear(z.reshape(n, -1), p["w_o"], p["b_o"])
        h = F.layer_norm(x, x.shape[-1:], p["ln2"][0], p["ln2"][1], self.eps)
        return x + F.linear(p["act"](F.linear(h, p["w_in"], p["b_in"])), p["w_out"], p["b_out"])

    def lower(self, tok: Tensor) -> Float[Tensor, "rows 1 d_model"]:
        x = self.model.embed_obs(tok)[:, 0]  # [rows, d_model]
        for p in self.blocks[: self.layer]:
            x = self._block(p, x)
        return x[:, None]

    def upper(self, e_hat: Tensor) -> Float[Tensor, "rows d_vocab_out"]:
        x = e_hat[:, 0]
        for p in self.blocks[self.layer :]:
            x = self._block(p, x)
        self.t += 1
        x = F.layer_norm(x, x.shape[-1:], self.ln_final[0], self.ln_final[1], self.eps)
        return F.linear(x, self.w_u, self.b_u)

    def select(self, rows: Tensor) -> None:
        for p in self.blocks:
            p["k"] = _select_rows(p["k"], rows, self.t, dim=2)
            p["v"] = _select_rows(p["v"], rows, self.t, dim=2)
