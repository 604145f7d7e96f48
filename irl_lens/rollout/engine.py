"""The rollout engine: the frozen base model split at layer ``l``, stepped with a key/value cache.

Every env of a :class:`~irl_lens.envs.gridworld.BatchedGridPinpad` is one row of the batch.
At each step ``t`` the engine

1. embeds the current observations and runs the **lower half** (blocks ``< l``) on the new
   position only, reading earlier positions from the key/value cache: ``e_t`` at layer ``l``;
2. asks an optional ``controller_fn(StepState)`` for a controller and applies it,
   ``e_hat_t = controller(e_t)`` (e.g. ``e_t + U_t e_t``);
3. runs the **upper half** (blocks ``>= l``, final norm, unembed) on ``e_hat_t``, samples (or
   takes the argmax of) the action and steps every env at once;
4. records actions, log-probabilities, subgoal labels, rewards and, when asked, the
   residuals ``e_t`` and the action logits.

The outputs equal those of the full-sequence forward pass over the recorded observations
with the same controller attached through :func:`irl_lens.hooks.intervene` (tested).

**Controller interface.** ``controller_fn(state) -> controller | None`` is called once per
step with a :class:`StepState`: the pre-control residual of the live rows, which env each
row is (``env_index``), the env itself (read-only: labels, ``n_done``, tasks) and ``t``.
A stateful controller (ground-truth switching, a metacontroller's GRU state and latent
``z``, an RL policy) keeps per-env arrays of size ``n_envs`` and indexes them with
``state.env_index``; rows are dropped from the batch as their episodes end, so row ``i``
is not env ``i``. See :class:`GroundTruthSwitcher` for an example.

**Both environments.** :mod:`irl_lens.rollout.ant` is this engine's ant-pinpad twin (same
steppers, MuJoCo envs, Gaussian torques). :func:`env_kit` returns the engine, seeded env,
ground-truth switcher and task parser of a model's environment, and :func:`run_batches`
runs any number of seeded episodes through it, so analyses are written once for both.

**Speed.** The key/value cache is preallocated (no ``torch.cat`` per step), finished
episodes are dropped from the batch (rows compacted, cache rows gathered) once a quarter
of the rows are done, observation tokens are updated in place, and residuals and logits
are only kept when asked. All rows of a cache share one length, so one call serves one
batch of episodes started together; the key/value cache holds at most ``n_ctx`` steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from irl_lens.envs.gridworld import N_CELLS, BatchedGridPinpad
from irl_lens.envs.pinpad import MAX_STEPS, N_SUBGOALS, parse_task
from irl_lens.hooks import Controller, check_layer
from irl_lens.models.base import ActionModel
from irl_lens.models.metacontroller import StepCarry

logger = logging.getLogger(__name__)

__all__ = [
    "ControllerFn",
    "EngineRollout",
    "EnvKit",
    "GroundTruthSwitcher",
    "RolloutEngine",
    "StepState",
    "engine_benchmark",
    "env_kit",
    "obs_tokens",
    "pair_subgoals",
    "run_batches",
    "seeded_env",
]


# ----------------------------------------------------------------------------- steppers
#
# A stepper runs one new position through the lower half (observation -> e_t at layer l) or
# the upper half (e_hat_t -> unembed), remembering keys and values of earlier positions.
# Two implementations give the same numbers (tested):
#
# * _HookedStepper calls the model's own TransformerLens forward (start_at_layer /
#   stop_at_layer / past_kv_cache), so every hook attached to the model fires as usual.
# * _FastStepper computes the same blocks from the same weights with fused matmuls and a
#   cache of already-rotated keys (TransformerLens re-rotates every cached key at every
#   step). It is used when the model has no hooks attached and a plain pre-LN rotary
#   architecture; otherwise the engine falls back to _HookedStepper.


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


def _fast_path_problem(model: ActionModel) -> str | None:
    """Why :class:`_FastStepper` cannot stand in for the model's forward, or ``None``."""
    from irl_lens.hooks import hook_count

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


# ---------------------------------------------------------------------------- records


@dataclass
class StepState:
    """What ``controller_fn`` sees at step ``t`` (rows = the envs still in the batch)."""

    t: int
    """Time step = position in the episode (0-based)."""
    resid: Float[Tensor, "rows d_model"]
    """Residual stream ``e_t`` at the engine's layer, before any control."""
    env_index: Int[np.ndarray, " rows"]
    """The env each row belongs to (ascending)."""
    env: BatchedGridPinpad
    """The envs, in their state before this step's action (read, don't write)."""
    layer: int
    """The layer ``l`` the controller acts at."""


ControllerFn = Callable[[StepState], Controller | None]
"""Called once per step; returns the controller for this step's rows, or ``None``."""


class EpisodeBatch:
    """Shape helpers of a batch of recorded episodes (``reward [n_envs, n_steps]``, ``length``),
    shared by :class:`EngineRollout` and the ant engine's record."""

    reward: np.ndarray
    length: np.ndarray

    @property
    def n_envs(self) -> int:
        return self.reward.shape[0]

    @property
    def n_steps(self) -> int:
        return self.reward.shape[1]

    @property
    def valid(self) -> np.ndarray:
        """``bool[n_envs, n_steps]``: step t happened in episode i."""
        return np.arange(self.n_steps)[None, :] < self.length[:, None]


@dataclass
class EngineRollout(EpisodeBatch):
    """What happened in a batch of episodes. Per-step arrays are ``[n_envs, n_steps]``.

    Steps after an episode ended hold ``-1`` (ints) or 0 (floats); ``valid`` marks real steps.
    """

    layer: int
    layout: np.ndarray  # [n_envs, 49] uint8 cell codes
    agent_pos: np.ndarray  # [n_envs, n_steps] int64: agent cell observed at step t
    action: np.ndarray  # [n_envs, n_steps] int64
    action_logp: np.ndarray  # [n_envs, n_steps] float32: log p(a_t | o_1:t) of the taken action
    subgoal: np.ndarray  # [n_envs, n_steps] int64: true subgoal label at step t
    target_colour: np.ndarray  # [n_envs, n_steps] int64
    n_done: np.ndarray  # [n_envs, n_steps] int64: task colours completed before step t
    reward: np.ndarray  # [n_envs, n_steps] float32
    length: np.ndarray  # [n_envs] int64
    success: np.ndarray  # [n_envs] bool
    final_agent_pos: np.ndarray  # [n_envs] int64: agent cell after the last action
    final_n_done: np.ndarray  # [n_envs] int64
    resid: Tensor | None = None  # [n_envs, n_steps, d_model] float32 e_t (before control)
    logits: Tensor | None = None  # [n_envs, n_steps, n_action_outputs] float32
    seconds: float = 0.0

    def obs_tokens(self) -> Int[Tensor, "n_envs n_steps 50"]:
        """The observation tokens the model read, for a full-sequence forward pass.

        Padding steps repeat the last observed cell (their outputs are meaningless).
        """
        pos = np.where(self.agent_pos >= 0, self.agent_pos, self.final_agent_pos[:, None])
        lay = np.broadcast_to(
            self.layout[:, None, :].astype(np.int64), (self.n_envs, self.n_steps, N_CELLS)
        )
        return torch.from_numpy(np.concatenate([lay, pos[..., None]], axis=-1))

    def model_inputs(self) -> Tensor:
        """What the base model reads for a full-sequence forward pass (:meth:`obs_tokens`)."""
        return self.obs_tokens()

    def episode(self, i: int) -> dict:
        """Episode ``i`` as a JSON-ready record (layout, path, true subgoals, success)."""
        n = int(self.length[i])
        return {
            "layout": self.layout[i].tolist(),
            "agent_pos": self.agent_pos[i, :n].tolist(),
            "final_agent_pos": int(self.final_agent_pos[i]),
            "subgoal": self.subgoal[i, :n].tolist(),
            "success": bool(self.success[i]),
        }

    def entered(self) -> list[list[int]]:
        """Colours entered, in order, per episode (moves onto a colour cell)."""
        nxt = np.concatenate([self.agent_pos[:, 1:], np.full((self.n_envs, 1), -1)], axis=1)
        last = np.arange(self.n_steps)[None, :] == (self.length[:, None] - 1)
        nxt = np.where(last, self.final_agent_pos[:, None], nxt)
        moved = self.valid & (nxt != self.agent_pos) & (nxt >= 0)
        codes = np.take_along_axis(self.layout.astype(np.int64), np.maximum(nxt, 0), axis=1)
        hit = moved & (codes >= 1) & (codes <= 8)
        out: list[list[int]] = [[] for _ in range(self.n_envs)]
        for i, t in zip(*np.nonzero(hit), strict=True):  # row-major: in time order per env
            out[i].append(int(codes[i, t]) - 1)
        return out


def obs_tokens(env: BatchedGridPinpad, rows: np.ndarray | None = None) -> Int[Tensor, "rows 1 50"]:
    """The model's observation tokens ``[rows, 1, 50]`` (49 cell codes + agent cell)."""
    rows = np.arange(env.n_envs) if rows is None else rows
    tok = np.empty((len(rows), N_CELLS + 1), dtype=np.int64)
    tok[:, :N_CELLS] = env.layout[rows]
    tok[:, N_CELLS] = env.agent_pos[rows]
    return torch.from_numpy(tok)[:, None, :]


def seeded_env(n_envs: int, task=None, seed: int = 0, stream: int = 0) -> BatchedGridPinpad:
    """A reset :class:`BatchedGridPinpad` whose episodes depend only on ``(seed, stream)``."""
    env = BatchedGridPinpad(n_envs, task=task)
    seeds = np.random.SeedSequence([seed, stream]).generate_state(n_envs)
    env.reset(seed=[int(s) for s in seeds])
    return env


# ----------------------------------------------------------------------------- engine


class RolloutEngine:
    """Closed-loop rollouts of a base model split at ``layer`` (default ``L // 2``).

    Example::

        engine = RolloutEngine(model, layer=2)
        ro = engine.run(env, controller_fn=switcher, generator=torch.Generator().manual_seed(0))
        ro.success.mean()
    """

    def __init__(self, model: ActionModel, layer: int | None = None, fast: bool = True) -> None:
        n_layers = model.cfg.n_layers
        self.model = model
        self.layer = n_layers // 2 if layer is None else check_layer(layer, n_layers)
        self.fast = fast
        if model.model_cfg.action_kind != "discrete":
            raise ValueError(
                "RolloutEngine steps the gridworld: the model must have "
                f"discrete actions, not {model.model_cfg.action_kind!r}"
            )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _stepper(self, n: int, max_len: int) -> _HookedStepper | _FastStepper:
        problem = _fast_path_problem(self.model) if self.fast else "fast=False"
        if problem is None:
            return _FastStepper(self.model, self.layer, n, max_len)
        logger.debug("rollout engine: stepping through the hooked forward (%s)", problem)
        return _HookedStepper(self.model, self.layer, n, max_len)

    def _start(self, env, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, started)``: the env index of each batch row (the live episodes), and
        which envs take part; checks ``max_steps`` and that every live episode is at t = 0."""
        if not 1 <= max_steps <= self.model.cfg.n_ctx:
            raise ValueError(f"max_steps={max_steps} must lie in 1..n_ctx={self.model.cfg.n_ctx}")
        rows = np.flatnonzero(~env.done)
        if (env.t[rows] != 0).any():
            raise ValueError(
                "the engine starts episodes at position 0: reset the env's live "
                "episodes first (env.reset, reset_done or reset_envs)"
            )
        started = np.zeros(env.n_envs, dtype=bool)
        started[rows] = True
        return rows, started

    @torch.no_grad()
    def run(
        self,
        env: BatchedGridPinpad,
        *,
        controller_fn: ControllerFn | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
        max_steps: int = MAX_STEPS,
        record_resid: bool = False,
        record_logits: bool = False,
        compact: bool = True,
    ) -> EngineRollout:
        """Run every live episode of ``env`` (already reset) to its end or ``max_steps``.

        Args:
            env: freshly reset envs; those already done at the start are left out
                (length 0).
            controller_fn: called each step, see :class:`StepState`; ``None`` = base model.
            greedy: argmax actions instead of sampling.
            generator: a CPU ``torch.Generator`` for the action samples (same seed, same
                episodes, on any device).
            max_steps: at most this many steps (<= the model's ``n_ctx``).
            record_resid: keep ``e_t`` at the layer (``[n_envs, n_steps, d_model]``).
            record_logits: keep the action logits.
            compact: drop finished episodes from the batch (faster; same results).
        """
        model, layer, device = self.model, self.layer, self.device
        rows, started = self._start(env, max_steps)
        t0 = time.perf_counter()
        n = env.n_envs
        rec = {
            k: np.full((n, max_steps), -1, dtype=np.int64)
            for k in ("agent_pos", "action", "subgoal", "target_colour", "n_done")
        }
        logp_rec = np.zeros((n, max_steps), dtype=np.float32)
        reward = np.zeros((n, max_steps), dtype=np.float32)
        resid_rec = torch.zeros(n, max_steps, model.cfg.d_model) if record_resid else None
        n_out = model.model_cfg.n_action_outputs
        logit_rec = torch.zeros(n, max_steps, n_out) if record_logits else None

        stepper = self._stepper(len(rows), max_steps)
        tok = obs_tokens(env, rows).to(device)  # [rows, 1, 50]; only the agent cell changes
        actions = np.zeros(n, dtype=np.int64)
        for t in range(max_steps):
            live = ~env.done[rows]  # [rows]
            if not live.any():
                break
            if compact and live.sum() <= 0.75 * len(rows):
                keep = np.flatnonzero(live)
                keep_t = torch.from_numpy(keep).to(device)
                rows, tok = rows[keep], tok[keep_t]
                stepper.select(keep_t)
                live = live[keep]
            live_rows = rows[live]
            tok[:, 0, N_CELLS] = torch.from_numpy(env.agent_pos[rows]).to(device)

            # record the state observed at step t
            target = env.target_colour()[live_rows]
            rec["agent_pos"][live_rows, t] = env.agent_pos[live_rows]
            rec["target_colour"][live_rows, t] = target
            rec["subgoal"][live_rows, t] = np.where(target >= 0, target // 2, -1)
            rec["n_done"][live_rows, t] = env.n_done[live_rows]

            e = stepper.lower(tok)  # [rows, 1, d_model]
            controller = None
            if controller_fn is not None:
                controller = controller_fn(StepState(t, e[:, 0], rows, env, layer))
            e_hat = e if controller is None else controller(e)  # [rows, 1, d_model]
            out = stepper.upper(e_hat)  # [rows, d_vocab_out]
            logits = model.split(out).action_params.float()  # [rows, n_actions]
            log_probs = torch.log_softmax(logits, dim=-1)
            if greedy:
                a = log_probs.argmax(-1)
            else:
                u = torch.rand(len(rows), 1, generator=generator).to(device)
                a = (log_probs.exp().cumsum(-1) < u).sum(-1).clamp_(max=n_out - 1)
            lp = log_probs.gather(-1, a[:, None])[:, 0]

            a_np = a.cpu().numpy()
            live_t = torch.from_numpy(np.flatnonzero(live)).to(device)
            rec["action"][live_rows, t] = a_np[live]
            logp_rec[live_rows, t] = lp[live_t].cpu().numpy()
            if resid_rec is not None:
                resid_rec[live_rows, t] = e[live_t, 0].float().cpu()
            if logit_rec is not None:
                logit_rec[live_rows, t] = logits[live_t].cpu()
            actions[rows] = a_np
            _, r, _, _, _ = env.step(actions)
            reward[:, t] = r
        return EngineRollout(
            layer=layer,
            layout=env.layout.copy(),
            agent_pos=rec["agent_pos"],
            action=rec["action"],
            action_logp=logp_rec,
            subgoal=rec["subgoal"],
            target_colour=rec["target_colour"],
            n_done=rec["n_done"],
            reward=reward,
            length=np.where(started, env.t, 0),
            success=env.success.copy(),
            final_agent_pos=env.agent_pos.copy(),
            final_n_done=env.n_done.copy(),
            resid=resid_rec,
            logits=logit_rec,
            seconds=time.perf_counter() - t0,
        )


# --------------------------------------------------------------- ground-truth switching


def pair_subgoals(task) -> list[int]:
    """Subgoal sequence of a pair-structured task: ``0-1-4-5`` -> ``[0, 2]``.

    Raises ``ValueError`` unless the task is made of the colour pairs 0-1, 2-3, 4-5, 6-7.
    """
    colours = parse_task(task)
    pairs = [colours[i : i + 2] for i in range(0, len(colours), 2)]
    if any(len(p) != 2 or p[0] % 2 or p[1] != p[0] + 1 for p in pairs):
        raise ValueError(
            f"task={'-'.join(map(str, colours))!r} is not made of the colour pairs "
            "0-1, 2-3, 4-5, 6-7 (subgoal controllers need such a task)"
        )
    return [p[0] // 2 for p in pairs]


class GroundTruthSwitcher:
    """Picks the supervised controller of the env's current subgoal (paper C.3 evaluation).

    Starts every episode on the task's first subgoal and switches to the next one when the
    env reports the current one done: both colours of the pair entered, i.e. ``n_done``
    increased and is even. After the last subgoal it returns index ``-1`` (no control).
    ``chosen[env, t]`` records the controller index used at every step.

    ``make_controller(index)`` turns a ``[rows]`` index tensor into a controller, e.g.
    ``bank.select``.
    """

    def __init__(self, make_controller: Callable[[Tensor], Controller], max_steps: int = MAX_STEPS):
        self.make_controller = make_controller
        self.max_steps = max_steps
        self.sequence = np.zeros((0, 0), dtype=np.int64)
        self.position = np.zeros(0, dtype=np.int64)
        self.prev_done = np.zeros(0, dtype=np.int64)
        self.chosen = np.zeros((0, max_steps), dtype=np.int64)

    def reset(self, env: BatchedGridPinpad) -> None:
        """Read every env's task; called automatically at ``t = 0``."""
        tasks = env.task_colours
        seqs = [pair_subgoals(tasks[i, : env.task_len[i]].tolist()) for i in range(env.n_envs)]
        width = max(len(s) for s in seqs) + 1
        self.sequence = np.full((env.n_envs, width), -1, dtype=np.int64)
        for i, s in enumerate(seqs):
            self.sequence[i, : len(s)] = s
        self.position = np.zeros(env.n_envs, dtype=np.int64)
        self.prev_done = env.n_done.copy()
        self.chosen = np.full((env.n_envs, self.max_steps), -1, dtype=np.int64)

    def __call__(self, state: StepState) -> Controller:
        if state.t == 0:
            self.reset(state.env)
        rows = state.env_index
        n_done = state.env.n_done[rows]
        finished = (n_done > self.prev_done[rows]) & (n_done % 2 == 0)
        self.position[rows] += finished
        self.prev_done[rows] = n_done
        pos = np.minimum(self.position[rows], self.sequence.shape[1] - 1)
        index = self.sequence[rows, pos]  # [rows]
        self.chosen[rows, state.t] = index
        return self.make_controller(torch.from_numpy(index).to(state.resid.device))


# ------------------------------------------------------------- one interface, both envs


@dataclass(frozen=True)
class EnvKit:
    """Everything an analysis needs to run a base model in its own environment.

    Built by :func:`env_kit` from the model: the gridworld (colour-pair subgoals, the
    gridworld engine) or ant-pinpad (one colour per subgoal, :mod:`irl_lens.rollout.ant`),
    so controllers, steering and prior sampling run unchanged on either.
    """

    name: str
    """``gridworld`` or ``ant``."""
    engine: RolloutEngine
    """The engine at the requested layer (an ``AntRolloutEngine`` on ant)."""
    make_env: Callable
    """``make_env(n_envs, task=None, seed=0, stream=0)``: reset batched envs (seeded)."""
    switcher: Callable
    """Ground-truth switching: ``switcher(make_controller)`` -> a ``controller_fn``."""
    colours_per_subgoal: int
    """2 (gridworld colour pairs) or 1 (every ant colour is a subgoal)."""
    parse_task: Callable
    """The env's task parser (``post`` = its post-training task)."""
    batch: int
    """Episodes stepped side by side (MuJoCo envs are far heavier than gridworld rows)."""
    max_steps: int
    """The env's time limit T (gridworld 100, ant 500)."""

    def subgoal_task(self, g: int) -> list[int]:
        """The one-subgoal task of subgoal ``g`` (gridworld ``[2g, 2g + 1]``, ant ``[g]``)."""
        k = self.colours_per_subgoal
        return list(range(k * g, k * (g + 1)))


def env_kit(model: ActionModel, layer: int | None = None) -> EnvKit:
    """The :class:`EnvKit` of ``model``'s environment (ant: vector observations; imports
    MuJoCo only then)."""
    if model.model_cfg.obs_kind == "vector":
        from irl_lens.envs.ant import ANT_MAX_STEPS, parse_ant_task
        from irl_lens.rollout.ant import AntRolloutEngine, ColourSwitcher, seeded_ant_env

        return EnvKit("ant", AntRolloutEngine(model, layer), seeded_ant_env, ColourSwitcher,
                      1, parse_ant_task, batch=250, max_steps=ANT_MAX_STEPS)  # fmt: skip
    return EnvKit("gridworld", RolloutEngine(model, layer), seeded_env, GroundTruthSwitcher,
                  2, parse_task, batch=1000, max_steps=MAX_STEPS)  # fmt: skip


def run_batches(
    kit: EnvKit,
    n_episodes: int,
    *,
    task=None,
    seed: int = 0,
    stream: int = 0,
    make_fn: Callable[[], ControllerFn | None] | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> list[tuple]:
    """``n_episodes`` seeded episodes in batches of at most ``kit.batch``.

    Batch ``b`` uses the envs of ``(seed, stream + b)`` and a fresh ``make_fn()``
    controller function (``None``: the base model). Returns ``[(rollout, controller_fn)]``
    per batch, so stateful controllers (a switcher's ``chosen``, a driver's ``beta``)
    can be read afterwards.
    """
    if n_episodes < 1:
        raise ValueError(f"episodes={n_episodes} must be >= 1")
    out = []
    for b, start in enumerate(range(0, n_episodes, kit.batch)):
        env = kit.make_env(min(kit.batch, n_episodes - start), task=task, seed=seed,
                           stream=stream + b)  # fmt: skip
        fn = make_fn() if make_fn is not None else None
        out.append((kit.engine.run(env, controller_fn=fn, greedy=greedy, generator=generator), fn))
    return out


# -------------------------------------------------------------------------- benchmark


def engine_benchmark(
    model: ActionModel,
    n_envs: int = 1024,
    *,
    layer: int | None = None,
    min_seconds: float = 3.0,
    max_batches: int = 20,
    controlled: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Throughput of :class:`RolloutEngine` on the pretraining tasks, sampled actions.

    Runs batches of ``n_envs`` episodes (after one small warm-up batch) until
    ``min_seconds`` have passed or ``max_batches`` batches ran. With ``controlled`` a
    random rank-16 controller bank picked by the ground-truth subgoal acts at ``layer``,
    as in supervised-controller evaluation. Returns ``engine/``-namespaced numbers.
    """
    from irl_lens.models.controller import ControllerConfig, build_controller_bank

    engine = RolloutEngine(model, layer)
    fn = None
    if controlled:
        bank = build_controller_bank(ControllerConfig(model.cfg.d_model, N_SUBGOALS), seed=seed)
        with torch.no_grad():  # a non-zero B, so the control path does real work
            bank.B.normal_(0, 0.01, generator=torch.Generator().manual_seed(seed))
        fn = GroundTruthSwitcher(bank.to(engine.device).select)
    generator = torch.Generator().manual_seed(seed)
    engine.run(
        seeded_env(min(64, n_envs), seed=seed, stream=99), controller_fn=fn, generator=generator
    )
    episodes = steps = 0
    elapsed = 0.0
    batches = 0
    while batches < max_batches and (elapsed < min_seconds or batches == 0):
        env = seeded_env(n_envs, seed=seed, stream=100 + batches)
        t0 = time.perf_counter()
        ro = engine.run(env, controller_fn=fn, generator=generator)
        elapsed += time.perf_counter() - t0
        episodes += n_envs
        steps += int(ro.length.sum())
        batches += 1
    return {
        "engine/episodes_per_s": episodes / elapsed,
        "engine/env_steps_per_s": steps / elapsed,
        "engine/mean_length": steps / episodes,
        "engine/n_envs": float(n_envs),
        "engine/layer": float(engine.layer),
        "engine/controlled": float(controlled),
        "engine/fast_path": float(_fast_path_problem(model) is None),
        "engine/seconds": elapsed,
    }


# ------------------------------------------------------------ metacontroller-driven rollouts


class MetacontrollerDriver:
    """Runs a metacontroller's causal part in the engine with a binarised switch (Alg. 1 logic).

    At each step: ``beta_t = f_switch(e_t, h_{t-1}, z_{t-1})``; a *switch* happens when
    ``beta_t >= threshold`` (and always at ``t = 0``), and then a new code comes from
    ``propose(state, sel)`` for the batch rows ``sel`` that switch (their envs are
    ``state.env_index[sel]``, their residuals ``state.resid[sel]``; default: the prior
    ``N(0, I)``); otherwise ``z_{t-1}`` is kept.
    The base model reads ``e_t + U(z_t) e_t``; ``h_t = GRU(e_t, h_{t-1})``.

    Records per env and step: ``beta``, ``switched`` and the code ``z`` in force.
    ``always_switch`` draws a new code every step (the ``beta = 1`` ablation).
    """

    def __init__(
        self,
        mc,
        *,
        threshold: float = 0.5,
        propose: Callable[[StepState, Tensor], Tensor] | None = None,
        generator: torch.Generator | None = None,
        max_steps: int = MAX_STEPS,
        always_switch: bool = False,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold={threshold!r} must lie in (0, 1]")
        self.mc = mc
        self.threshold = threshold
        self.propose = propose or self._prior
        self.generator = generator
        self.max_steps = max_steps
        self.always_switch = always_switch

    def _prior(self, state: StepState, sel: Tensor) -> Tensor:
        z = torch.randn(len(sel), self.mc.cfg.n_z, generator=self.generator)
        return z.to(state.resid.device)

    def reset(self, env: BatchedGridPinpad, device) -> None:
        n = env.n_envs
        self.h = torch.zeros(n, self.mc.cfg.n_h, device=device)
        self.z = torch.zeros(n, self.mc.cfg.n_z, device=device)
        self.beta = np.full((n, self.max_steps), np.nan, dtype=np.float32)
        self.switched = np.zeros((n, self.max_steps), dtype=bool)
        self.codes = np.zeros((n, self.max_steps, self.mc.cfg.n_z), dtype=np.float32)

    def __call__(self, state: StepState) -> Controller:
        if state.t == 0:
            self.reset(state.env, state.resid.device)
        rows = state.env_index
        idx = torch.from_numpy(rows).to(state.resid.device)
        e = state.resid  # [rows, d_model]
        carry = StepCarry(self.h[idx], self.z[idx])
        beta = self.mc.switch_probability(e, carry)
        switch = (beta >= self.threshold) | (state.t == 0) | self.always_switch
        live_np = ~state.env.done[rows]  # finished rows wait in the batch until compaction
        switch &= torch.from_numpy(live_np).to(switch.device)
        z = carry.z
        if bool(switch.any()):
            sel = torch.nonzero(switch).squeeze(1)
            z = z.clone()
            z[sel] = self.propose(state, sel)
        self.z[idx] = z
        self.h[idx] = self.mc.gru_step(e, carry.h)
        live_rows = rows[live_np]
        self.beta[live_rows, state.t] = beta.cpu().numpy()[live_np]
        self.switched[live_rows, state.t] = switch.cpu().numpy()[live_np]
        self.codes[live_rows, state.t] = z.cpu().numpy()[live_np]
        mc = self.mc
        return lambda e3: mc.apply_code(e3, z.unsqueeze(1))
