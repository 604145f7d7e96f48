"""Closed-loop rollouts in the batched gridworld: the engine's gridworld adapter and record.

:class:`GridAdapter` binds the one episode loop of :class:`~irl_lens.rollout.engine.RolloutEngine`
to a :class:`~irl_lens.envs.gridworld_batch.BatchedGridPinpad`: the model reads observation tokens
(49 cell codes + the agent's cell, :func:`obs_tokens`; only the agent cell changes during an
episode, so the tokens are updated in place), the action head is a categorical over the 4
moves (sampled by inverse CDF, or its argmax), and the subgoal label is the target colour's
pair. :class:`GridRolloutEngine` is the engine with this adapter; :class:`EngineRollout` is
what it records.

:func:`rollout_grid` is a thin view of the engine for the pretraining evaluation (the
model's own policy, no intervention) and :func:`free_run_grid` lets the model walk with no
task enforced. The outputs equal those of the full-sequence forward pass over the same
observations (tested in ``tests/test_engine.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from irl_lens.envs.expert import GridExpert
from irl_lens.envs.gridworld_batch import BatchedGridPinpad
from irl_lens.envs.gridworld_layout import N_CELLS, NEXT_CELL, WALL
from irl_lens.envs.pinpad import MAX_STEPS
from irl_lens.models.base import ActionModel
from irl_lens.rollout.engine import EnvAdapter, EpisodeBatch, RolloutEngine, Tape, reset_seeded
from irl_lens.rollout.stepper import make_stepper

logger = logging.getLogger(__name__)

__all__ = [
    "EngineRollout",
    "GridAdapter",
    "GridExpertLabels",
    "GridRollout",
    "GridRolloutEngine",
    "free_run_grid",
    "grid_obs_tokens",
    "obs_tokens",
    "rollout_grid",
    "seeded_env",
]


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
    return reset_seeded(BatchedGridPinpad(n_envs, task=task), seed, stream)


class GridAdapter(EnvAdapter[EngineRollout]):
    """The gridworld for the episode loop: observation tokens in, one of 4 moves out."""

    time_limit = MAX_STEPS
    env: BatchedGridPinpad

    @classmethod
    def check_model(cls, model: ActionModel) -> None:
        if model.model_cfg.action_kind != "discrete":
            raise ValueError(
                "RolloutEngine steps the gridworld: the model must have "
                f"discrete actions, not {model.model_cfg.action_kind!r}"
            )

    def __init__(self, env: BatchedGridPinpad, model: ActionModel, max_steps: int, device):
        super().__init__(env, model, max_steps, device)
        n = env.n_envs
        self.rec = {
            k: np.full((n, max_steps), -1, dtype=np.int64)
            for k in ("agent_pos", "subgoal", "target_colour", "n_done")
        }
        self.actions = np.zeros(n, dtype=np.int64)  # what env.step reads (done rows: ignored)
        self.rows: np.ndarray | None = None  # the batch rows self.tok belongs to
        self.tok = torch.empty(0)

    def empty_actions(self) -> np.ndarray:
        return np.full((self.env.n_envs, self.max_steps), -1, dtype=np.int64)

    def observe(self, t: int, rows: np.ndarray) -> None:
        env, rec = self.env, self.rec
        target = env.target_colour()[rows]
        rec["agent_pos"][rows, t] = env.agent_pos[rows]
        rec["target_colour"][rows, t] = target
        rec["subgoal"][rows, t] = np.where(target >= 0, target // 2, -1)
        rec["n_done"][rows, t] = env.n_done[rows]

    def inputs(self, rows: np.ndarray) -> Int[Tensor, "rows 1 50"]:
        if rows is not self.rows:  # a new batch of rows (start, compaction): layouts again
            self.rows, self.tok = rows, obs_tokens(self.env, rows).to(self.device)
        self.tok[:, 0, N_CELLS] = torch.from_numpy(self.env.agent_pos[rows]).to(self.device)
        return self.tok

    def act(self, head: Tensor, greedy: bool, generator) -> tuple[Tensor, Tensor]:
        log_probs = torch.log_softmax(head, dim=-1)  # [rows, n_actions]
        if greedy:
            a = log_probs.argmax(-1)
        else:
            u = torch.rand(len(head), 1, generator=generator).to(head.device)
            a = (log_probs.exp().cumsum(-1) < u).sum(-1).clamp_(max=head.shape[-1] - 1)
        return a, log_probs.gather(-1, a[:, None])[:, 0]

    def step(self, rows: np.ndarray, actions: np.ndarray) -> np.ndarray:
        self.actions[rows] = actions
        _, r, _, _, _ = self.env.step(self.actions)
        return r

    def result(self, tape: Tape) -> EngineRollout:
        env, rec = self.env, self.rec
        return EngineRollout(
            layer=tape.layer,
            layout=env.layout.copy(),
            agent_pos=rec["agent_pos"],
            action=tape.action,
            action_logp=tape.action_logp,
            subgoal=rec["subgoal"],
            target_colour=rec["target_colour"],
            n_done=rec["n_done"],
            reward=tape.reward,
            length=tape.length,
            success=env.success.copy(),
            final_agent_pos=env.agent_pos.copy(),
            final_n_done=env.n_done.copy(),
            resid=tape.resid,
            logits=tape.head,
            seconds=tape.seconds,
        )


class GridRolloutEngine(RolloutEngine[EngineRollout]):
    """Closed-loop gridworld rollouts of a base model split at ``layer`` (default ``L // 2``).

    Example::

        engine = GridRolloutEngine(model, layer=2)
        ro = engine.run(seeded_env(256, task="post"), controller_fn=switcher,
                        generator=torch.Generator().manual_seed(0))
        ro.success.mean()
    """

    def __init__(self, model: ActionModel, layer: int | None = None, fast: bool = True) -> None:
        super().__init__(model, layer, fast, adapter=GridAdapter)


class GridExpertLabels:
    """The clean expert's move at the envs' current states: a shortest-path move toward each
    env's target colour (:class:`~irl_lens.envs.expert.GridExpert` with ``eps = 0``), ties
    broken as the clean data broke them (``tie_break``: ``random``, the paper's expert, drawn
    from a generator seeded with ``seed``; or ``first``). Returns ``int64[n_envs]``."""

    def __init__(self, tie_break: str = "random", seed: int = 0) -> None:
        self.expert = GridExpert(eps=0.0, tie_break=tie_break)
        self.rng = np.random.default_rng(seed)

    def __call__(self, env: BatchedGridPinpad) -> np.ndarray:
        return self.expert.act(env, self.rng)


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
    ro = GridRolloutEngine(model, layer=model.cfg.n_layers).run(
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
    n = len(agent_pos)
    device = next(model.parameters()).device
    # the whole model on each new position (any architecture); the hooked forward, as before
    stepper = make_stepper(model, model.cfg.n_layers, n, model.cfg.n_ctx, fast=False)
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
        out = stepper.upper(stepper.lower(torch.from_numpy(tok)[:, None, :].to(device)))
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
