"""Closed-loop rollouts in ant-pinpad: the engine's MuJoCo adapter, record and switcher.

:class:`AntAdapter` binds the one episode loop of :class:`~irl_lens.rollout.engine.RolloutEngine`
(the same steppers: a key/value cache over the whole episode; blocks ``< l`` give ``e_t``,
an optional controller writes ``e_hat_t``, blocks ``>= l`` and the unembed give the action
head; the same :class:`~irl_lens.rollout.engine.StepState` controller interface, so
supervised controllers and a metacontroller's driver act on ant exactly as on the
gridworld) to a :class:`~irl_lens.envs.ant_batch.BatchedAntPinpad`. What differs is the world:

- observations are the env's ``float32[41]`` vectors (what the ant datasets store), one
  position per env step;
- the action head is a diagonal Gaussian over the 8 torques: ``greedy`` takes its mean
  (the clean data's expert acted on its mean too), otherwise one sample per step; the env
  applies the torques clipped to [-1, 1], the rollout records them as drawn, with their
  log-probability under the head;
- the envs are a :class:`~irl_lens.envs.ant_batch.BatchedAntPinpad` (T = 500), whose subgoal
  label is the target colour itself (every ant colour is a subgoal, so ground-truth
  switching is :class:`ColourSwitcher`).

:class:`AntRolloutEngine` is the engine with this adapter. The outputs equal the
full-sequence forward pass over the recorded observations with the same controller attached
through :func:`irl_lens.hooks.intervene` (tested).

This module imports MuJoCo (through the ant env): import it only for ant work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from irl_lens.envs.ant_batch import END_REASONS, BatchedAntPinpad
from irl_lens.envs.ant_layout import ANT_MAX_STEPS, ANT_OBS_DIM, CELL_SIZE
from irl_lens.envs.pinpad import ANT_N_COLOURS
from irl_lens.hooks import Controller
from irl_lens.models.ant_expert import GaussianAgent, expert_inputs, load_expert
from irl_lens.models.base import ActionModel
from irl_lens.rollout.engine import (
    EnvAdapter,
    EpisodeBatch,
    RolloutEngine,
    StepState,
    Tape,
    reset_seeded,
)

logger = logging.getLogger(__name__)

__all__ = [
    "AntAdapter",
    "AntEngineRollout",
    "AntExpertLabels",
    "AntRolloutEngine",
    "ColourSwitcher",
    "seeded_ant_env",
]


@dataclass
class AntEngineRollout(EpisodeBatch):
    """What happened in a batch of ant episodes. Per-step arrays are ``[n_envs, n_steps, ..]``.

    Steps after an episode ended hold ``-1`` (ints) or 0 (floats); ``valid`` marks real steps.
    """

    layer: int
    layout: np.ndarray  # [n_envs, 16] uint8 cell codes
    task: np.ndarray  # [n_envs, max_task_len] int64 task colours, -1 padded
    obs: np.ndarray  # [n_envs, n_steps, 41] float32: observation read at step t
    xy: np.ndarray  # [n_envs, n_steps, 2] float32: torso position at step t
    action: np.ndarray  # [n_envs, n_steps, 8] float32: torques drawn (the env clips them)
    action_logp: np.ndarray  # [n_envs, n_steps] float32: log p(a_t | o_1:t)
    subgoal: np.ndarray  # [n_envs, n_steps] int64: target colour at step t
    n_done: np.ndarray  # [n_envs, n_steps] int64: task colours completed before step t
    reward: np.ndarray  # [n_envs, n_steps] float32
    length: np.ndarray  # [n_envs] int64
    success: np.ndarray  # [n_envs] bool
    final_n_done: np.ndarray  # [n_envs] int64
    end_reason: np.ndarray  # [n_envs] int64: index into irl_lens.envs.ant_batch.END_REASONS
    resid: Tensor | None = None  # [n_envs, n_steps, d_model] float32 e_t (before control)
    action_params: Tensor | None = None  # [n_envs, n_steps, 16] float32 [mean, log_std]
    seconds: float = 0.0

    def obs_inputs(self) -> Float[Tensor, "n_envs n_steps 41"]:
        """The observations the model read, for a full-sequence forward pass (padding: 0)."""
        return torch.from_numpy(self.obs)

    def model_inputs(self) -> Tensor:
        """What the base model reads for a full-sequence forward pass (:meth:`obs_inputs`)."""
        return self.obs_inputs()

    def episode(self, i: int) -> dict:
        """Episode ``i`` as a JSON-ready record (layout, torso path, true subgoals, success);
        ``xy`` holds the torso position at every step, ``env`` is ``"ant"``."""
        n = int(self.length[i])
        return {
            "env": "ant",
            "layout": self.layout[i].tolist(),
            "xy": self.xy[i, :n].round(3).tolist(),
            "subgoal": self.subgoal[i, :n].tolist(),
            "success": bool(self.success[i]),
            "end_reason": END_REASONS[int(self.end_reason[i])],
        }

    def end_reasons(self) -> dict[str, float]:
        """Fraction of the started episodes that ended each way (:func:`end_reason_shares`)."""
        return end_reason_shares(self.end_reason, self.length)


def end_reason_shares(end_reason: np.ndarray, length: np.ndarray) -> dict[str, float]:
    """Fraction of the started episodes (``length > 0``) that ended each way, by
    ``END_REASONS`` name (``running``: cut off by ``max_steps`` before the env ended them);
    ``end_reason`` and ``length`` per episode, as :class:`AntRollout` holds them (or several
    rollouts' concatenated)."""
    started = length > 0
    n = max(int(started.sum()), 1)
    return {name: float((end_reason[started] == i).sum() / n) for i, name in enumerate(END_REASONS)}


def seeded_ant_env(
    n_envs: int, task=None, seed: int = 0, stream: int = 0, cell_size: float = CELL_SIZE
) -> BatchedAntPinpad:
    """A reset :class:`BatchedAntPinpad` whose episodes depend only on ``(seed, stream)``."""
    return reset_seeded(BatchedAntPinpad(n_envs, task=task, cell_size=cell_size), seed, stream)


class AntAdapter(EnvAdapter[AntEngineRollout]):
    """Ant-pinpad for the episode loop: ``float32[41]`` observations in, 8 torques out."""

    time_limit = ANT_MAX_STEPS
    env: BatchedAntPinpad

    @classmethod
    def check_model(cls, model: ActionModel) -> None:
        cfg = model.model_cfg
        if cfg.action_kind != "continuous" or cfg.obs_kind != "vector":
            raise ValueError(
                "AntRolloutEngine steps ant-pinpad: the model must read vector observations "
                f"and output continuous actions, not {cfg.obs_kind!r} / {cfg.action_kind!r}"
            )
        if cfg.obs_dim != ANT_OBS_DIM:
            raise ValueError(f"model obs_dim={cfg.obs_dim} is not ant-pinpad's {ANT_OBS_DIM}")

    def __init__(self, env: BatchedAntPinpad, model: ActionModel, max_steps: int, device):
        super().__init__(env, model, max_steps, device)
        n, self.n_act = env.n_envs, model.model_cfg.n_actions
        self.obs_rec = np.zeros((n, max_steps, ANT_OBS_DIM), dtype=np.float32)
        self.xy_rec = np.zeros((n, max_steps, 2), dtype=np.float32)
        self.subgoal_rec = np.full((n, max_steps), -1, dtype=np.int64)
        self.done_rec = np.full((n, max_steps), -1, dtype=np.int64)
        self.obs = env.observations()  # [n_envs, 41]
        self.actions = np.zeros((n, self.n_act), dtype=np.float64)  # done rows: ignored

    def empty_actions(self) -> np.ndarray:
        return np.zeros((self.env.n_envs, self.max_steps, self.n_act), dtype=np.float32)

    def observe(self, t: int, rows: np.ndarray) -> None:
        env = self.env
        self.obs_rec[rows, t] = self.obs[rows]
        self.xy_rec[rows, t] = env.xy[rows]
        self.subgoal_rec[rows, t] = env.target_colour()[rows]
        self.done_rec[rows, t] = env.n_done[rows]

    def inputs(self, rows: np.ndarray) -> Float[Tensor, "rows 1 41"]:
        return torch.from_numpy(self.obs[rows]).to(self.device)[:, None, :]

    def act(self, head: Tensor, greedy: bool, generator) -> tuple[Tensor, Tensor]:
        a = self.model.act_continuous(head, greedy, generator)  # head: [rows, 2 * 8] or more
        return a, self.model.action_distribution(head).log_prob(a)

    def step(self, rows: np.ndarray, actions: np.ndarray) -> np.ndarray:
        self.actions[rows] = actions
        self.obs, r, _, _, _ = self.env.step(self.actions)
        return r

    def result(self, tape: Tape) -> AntEngineRollout:
        env = self.env
        return AntEngineRollout(
            layer=tape.layer,
            layout=env.layout.copy(),
            task=env.task_colours.copy(),
            obs=self.obs_rec,
            xy=self.xy_rec,
            action=tape.action,
            action_logp=tape.action_logp,
            subgoal=self.subgoal_rec,
            n_done=self.done_rec,
            reward=tape.reward,
            length=tape.length,
            success=env.success.copy(),
            final_n_done=env.n_done.copy(),
            end_reason=np.where(tape.started, env.end_reason, 0),
            resid=tape.resid,
            action_params=tape.head,
            seconds=tape.seconds,
        )


class AntRolloutEngine(RolloutEngine[AntEngineRollout]):
    """Closed-loop ant rollouts of a base model split at ``layer`` (default ``L // 2``).

    Arguments of :meth:`run` as in :meth:`irl_lens.rollout.engine.RolloutEngine.run`;
    ``greedy`` takes the Gaussian's mean, ``record_logits`` keeps the action head's
    ``[mean, log_std]`` (``action_params``). Example::

        engine = AntRolloutEngine(model, layer=2)
        env = seeded_ant_env(256, task="post", seed=0)
        ro = engine.run(env, controller_fn=ColourSwitcher(bank.select), greedy=True)
        ro.success.mean()
    """

    def __init__(self, model: ActionModel, layer: int | None = None, fast: bool = True) -> None:
        super().__init__(model, layer, fast, adapter=AntAdapter)


class ColourSwitcher:
    """Ground-truth switching on ant-pinpad: the controller of the current target colour.

    Every ant colour is its own subgoal (paper A.2), so controller ``k`` is the one trained
    on steps whose target was colour ``k``; the env's target advances the step after the
    ant enters it, and so does the controller. After success (no target) the index is
    ``-1`` (no control). ``chosen[env, t]`` records the index used at every step.
    """

    def __init__(
        self, make_controller: Callable[[Tensor], Controller], max_steps: int = ANT_MAX_STEPS
    ) -> None:
        self.make_controller = make_controller
        self.max_steps = max_steps
        self.chosen = np.zeros((0, max_steps), dtype=np.int64)

    def __call__(self, state: StepState) -> Controller:
        if state.t == 0:
            self.chosen = np.full((state.env.n_envs, self.max_steps), -1, dtype=np.int64)
        rows = state.env_index
        index = state.env.target_colour()[rows]  # [rows], -1 once successful
        if index.max(initial=-1) >= ANT_N_COLOURS:
            raise ValueError(f"target colour {index.max()} >= {ANT_N_COLOURS}")
        self.chosen[rows, state.t] = index
        return self.make_controller(torch.from_numpy(index).to(state.resid.device))


class AntExpertLabels:
    """The clean expert's action at the envs' current states: what the ant expert (by
    default the one shipped in the package) would do there, its Gaussian's mean as actuator
    commands, exactly as the clean split records it
    (:func:`irl_lens.data.generate_ant.generate_ant`).

    Call once per env step: the expert's canonical frame keeps a hysteresis
    (:func:`~irl_lens.models.ant_expert.expert_inputs`). Returns ``float32[n_envs, 8]``."""

    def __init__(self, expert: GaussianAgent | None = None) -> None:
        self.expert = expert if expert is not None else load_expert()

    @torch.no_grad()
    def __call__(self, env: BatchedAntPinpad) -> np.ndarray:
        view = expert_inputs(env)
        mean = self.expert.distribution(view.x).mean
        return view.controls(env, mean, self.expert.torque_scale).astype(np.float32)
