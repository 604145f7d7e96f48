"""Closed-loop rollouts of a base action model in the batched gridworld (no intervention).

A thin view over :class:`irl_lens.rollout.engine.RolloutEngine` for the pretraining evaluation:
every env of a :class:`~irl_lens.envs.gridworld.BatchedGridPinpad` is one row of the batch,
each step runs one new position through the model with a key/value cache, and the
outputs equal those of the full-sequence forward pass over the same observations
(tested in ``tests/test_engine.py``). Use the engine directly for controllers, residual
recording or per-step log-probabilities.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from irl_lens.envs.gridworld import BatchedGridPinpad
from irl_lens.envs.pinpad import MAX_STEPS
from irl_lens.models.base import ActionModel
from irl_lens.rollout.engine import RolloutEngine, obs_tokens

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
    return obs_tokens(env)


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
        raise ValueError(
            f"max_steps={max_steps} exceeds the model's context n_ctx={model.cfg.n_ctx}"
        )
    ro = RolloutEngine(model, layer=model.cfg.n_layers).run(
        env, greedy=greedy, generator=generator, max_steps=max_steps
    )
    return GridRollout(
        agent_pos=ro.agent_pos,
        action=ro.action,
        subgoal=ro.subgoal,
        target_colour=ro.target_colour,
        reward=ro.reward,
        entered=ro.entered(),
        length=ro.length,
        success=ro.success,
    )


@torch.no_grad()
def free_run_grid(
    model: ActionModel,
    layouts: np.ndarray,
    agent_pos: np.ndarray,
    *,
    max_colours: int = 6,
    max_steps: int = MAX_STEPS,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Let the model walk freely (sampled actions) with no task enforced; return the
    colours each episode entered, in order.

    Nothing terminates an episode except entering ``max_colours`` colours (the length of
    the pretraining tasks) or ``max_steps``: this reads the behaviour the model learned
    by itself, e.g. whether entering 2k is followed by entering 2k+1, which a task-
    enforcing env would cut short (the model cannot know which task a fresh episode has).
    Movement follows the gridworld rules (walls and edges are no-ops).
    """
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    from irl_lens.envs.gridworld import N_CELLS, NEXT_CELL, WALL

    n = len(agent_pos)
    device = next(model.parameters()).device
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, n)
    layouts = np.asarray(layouts, dtype=np.int64)
    pos = np.asarray(agent_pos, dtype=np.int64).copy()
    rows = np.arange(n)
    entered: list[list[int]] = [[] for _ in range(n)]
    count = np.zeros(n, dtype=np.int64)
    tok = np.empty((n, N_CELLS + 1), dtype=np.int64)
    tok[:, :N_CELLS] = layouts
    for _ in range(min(max_steps, model.cfg.n_ctx)):
        if (count >= max_colours).all():
            break
        tok[:, N_CELLS] = pos
        out = model(torch.from_numpy(tok)[:, None, :].to(device), past_kv_cache=cache)[:, -1]
        probs = torch.softmax(model.split(out).action_params.float(), -1)
        a = torch.multinomial(probs, 1, generator=generator)[:, 0].cpu().numpy()
        dest = NEXT_CELL[pos, a]
        code = layouts[rows, dest]
        new = np.where(code == WALL, pos, dest)
        is_colour = (new != pos) & (code >= 1) & (code <= 8) & (count < max_colours)
        for i in np.flatnonzero(is_colour):
            entered[i].append(int(code[i]) - 1)
        count += is_colour
        pos = new
    return entered
