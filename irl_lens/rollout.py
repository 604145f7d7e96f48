"""Closed-loop rollouts of a base action model in the batched gridworld, with a key/value cache.

Every env of a :class:`~irl_lens.envs.gridworld.BatchedGridPinpad` is one row of the
batch. Each step embeds the current observations (one new position), runs the
transformer with a :class:`~transformer_lens.cache.key_value_cache.TransformerLensKeyValueCache`
so that earlier positions are never recomputed yet every step still attends to the
whole history, and samples (or takes the argmax of) the action distribution. The
outputs equal those of the full-sequence forward pass over the same observations
(tested).

All rows of a key/value cache share one length, so one cache serves one batch of
episodes started together; rows whose episode has ended keep stepping (the env ignores
their actions) until every episode is over or ``max_steps`` is reached.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from irl_lens.envs.gridworld import N_CELLS, BatchedGridPinpad
from irl_lens.envs.pinpad import MAX_STEPS
from irl_lens.models.base import ActionModel

logger = logging.getLogger(__name__)


@dataclass
class GridRollout:
    """What happened in a batch of closed-loop episodes (``-1`` / 0 after an episode ends)."""

    agent_pos: np.ndarray  # [n_envs, n_steps] agent cell observed at step t
    action: np.ndarray  # [n_envs, n_steps]
    subgoal: np.ndarray  # [n_envs, n_steps] true subgoal label at step t
    target_colour: np.ndarray  # [n_envs, n_steps]
    reward: np.ndarray  # [n_envs, n_steps]
    entered: list[list[int]]  # colours entered, in order, per episode
    length: np.ndarray  # [n_envs]
    success: np.ndarray  # [n_envs] bool


def grid_obs_tokens(env: BatchedGridPinpad) -> torch.Tensor:
    """The model's observation tokens ``[n_envs, 1, 50]`` for the envs' current states."""
    tok = np.empty((env.n_envs, N_CELLS + 1), dtype=np.int64)
    tok[:, :N_CELLS] = env.layout
    tok[:, N_CELLS] = env.agent_pos
    return torch.from_numpy(tok)[:, None, :]


@torch.no_grad()
def rollout_grid(
    model: ActionModel,
    env: BatchedGridPinpad,
    *,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    max_steps: int = MAX_STEPS,
) -> GridRollout:
    """Run ``model`` as the policy in ``env`` (already reset) until every episode ends."""
    if max_steps > model.cfg.n_ctx:
        raise ValueError(f"max_steps={max_steps} exceeds the model's context n_ctx={model.cfg.n_ctx}")
    n = env.n_envs
    device = next(model.parameters()).device
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, n)
    rec = {k: np.full((n, max_steps), -1, dtype=np.int64)
           for k in ("agent_pos", "action", "subgoal", "target_colour")}
    reward = np.zeros((n, max_steps), dtype=np.float32)
    entered: list[list[int]] = [[] for _ in range(n)]
    for t in range(max_steps):
        live = ~env.done
        if not live.any():
            break
        target = env.target_colour()
        rec["agent_pos"][live, t] = env.agent_pos[live]
        rec["subgoal"][live, t] = np.where(target >= 0, target // 2, -1)[live]
        rec["target_colour"][live, t] = target[live]
        out = model(grid_obs_tokens(env).to(device), past_kv_cache=cache)[:, -1]
        logits = model.split(out).action_params  # [n_envs, n_actions]
        if greedy:
            actions = logits.argmax(-1)
        else:
            actions = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator)[:, 0]
        a = actions.cpu().numpy()
        prev = env.agent_pos.copy()
        _, r, _, _, _ = env.step(a)
        rec["action"][live, t] = a[live]
        reward[:, t] = r
        moved = live & (env.agent_pos != prev)
        codes = env.layout[np.arange(n), env.agent_pos].astype(np.int64)
        for i in np.flatnonzero(moved & (codes >= 1) & (codes <= 8)):
            entered[i].append(int(codes[i]) - 1)
    return GridRollout(
        agent_pos=rec["agent_pos"], action=rec["action"], subgoal=rec["subgoal"],
        target_colour=rec["target_colour"], reward=reward, entered=entered,
        length=env.t.copy(), success=env.success.copy(),
    )
