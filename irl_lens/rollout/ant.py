"""The ant-pinpad rollout engine: the base model split at layer ``l``, stepped in MuJoCo.

The ant counterpart of :class:`irl_lens.rollout.engine.RolloutEngine`, with the same two steppers
(a key/value cache over the whole episode; blocks ``< l`` give ``e_t``, an optional
controller writes ``e_hat_t``, blocks ``>= l`` and the unembed give the action head) and
the same :class:`~irl_lens.rollout.engine.StepState` controller interface, so supervised
controllers and a metacontroller's driver act on ant exactly as on the gridworld. What
differs is the world:

- observations are the env's ``float32[41]`` vectors (what the ant datasets store), one
  position per env step;
- the action head is a diagonal Gaussian over the 8 torques: ``greedy`` takes its mean
  (the clean data's expert acted on its mean too), otherwise one sample per step; the env
  applies the torques clipped to [-1, 1], the rollout records them as drawn, with their
  log-probability under the head;
- the envs are a :class:`~irl_lens.envs.ant.BatchedAntPinpad` (T = 500), whose subgoal
  label is the target colour itself (every ant colour is a subgoal).

The outputs equal the full-sequence forward pass over the recorded observations with the
same controller attached through :func:`irl_lens.hooks.intervene` (tested).

This module imports MuJoCo (through the ant env): import it only for ant work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from irl_lens.envs.ant import (
    ANT_MAX_STEPS,
    ANT_N_COLOURS,
    ANT_OBS_DIM,
    CELL_SIZE,
    END_REASONS,
    BatchedAntPinpad,
)
from irl_lens.hooks import Controller, check_layer
from irl_lens.models.base import ActionModel
from irl_lens.rollout.engine import ControllerFn, EpisodeBatch, RolloutEngine, StepState

logger = logging.getLogger(__name__)

__all__ = ["AntEngineRollout", "AntRolloutEngine", "ColourSwitcher", "seeded_ant_env"]


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
    end_reason: np.ndarray  # [n_envs] int64: index into irl_lens.envs.ant.END_REASONS
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
        """Fraction of the started episodes that ended each way (``END_REASONS``;
        ``running``: cut off by ``max_steps`` before the env ended them)."""
        started = self.length > 0
        n = max(int(started.sum()), 1)
        return {
            name: float((self.end_reason[started] == i).sum() / n)
            for i, name in enumerate(END_REASONS)
        }


def seeded_ant_env(
    n_envs: int, task=None, seed: int = 0, stream: int = 0, cell_size: float = CELL_SIZE
) -> BatchedAntPinpad:
    """A reset :class:`BatchedAntPinpad` whose episodes depend only on ``(seed, stream)``."""
    env = BatchedAntPinpad(n_envs, task=task, cell_size=cell_size)
    seeds = np.random.SeedSequence([seed, stream]).generate_state(n_envs)
    env.reset(seed=[int(s) for s in seeds])
    return env


class AntRolloutEngine(RolloutEngine):
    """Closed-loop ant rollouts of a base model split at ``layer`` (default ``L // 2``).

    Example::

        engine = AntRolloutEngine(model, layer=2)
        env = seeded_ant_env(256, task="post", seed=0)
        ro = engine.run(env, controller_fn=ColourSwitcher(bank.select), greedy=True)
        ro.success.mean()
    """

    def __init__(self, model: ActionModel, layer: int | None = None, fast: bool = True) -> None:
        cfg = model.model_cfg
        if cfg.action_kind != "continuous" or cfg.obs_kind != "vector":
            raise ValueError(
                "AntRolloutEngine steps ant-pinpad: the model must read vector observations "
                f"and output continuous actions, not {cfg.obs_kind!r} / {cfg.action_kind!r}"
            )
        if cfg.obs_dim != ANT_OBS_DIM:
            raise ValueError(f"model obs_dim={cfg.obs_dim} is not ant-pinpad's {ANT_OBS_DIM}")
        n_layers = model.cfg.n_layers
        self.model = model
        self.layer = n_layers // 2 if layer is None else check_layer(layer, n_layers)
        self.fast = fast

    @torch.no_grad()
    def run(  # type: ignore[override]
        self,
        env: BatchedAntPinpad,
        *,
        controller_fn: ControllerFn | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
        max_steps: int = ANT_MAX_STEPS,
        record_resid: bool = False,
        record_logits: bool = False,
        compact: bool = True,
    ) -> AntEngineRollout:
        """Run every live episode of ``env`` (already reset) to its end or ``max_steps``.

        Arguments as in :meth:`irl_lens.rollout.engine.RolloutEngine.run`; ``greedy`` takes the
        Gaussian's mean, ``record_logits`` keeps the action head's ``[mean, log_std]``.
        """
        model, layer, device = self.model, self.layer, self.device
        rows, started = self._start(env, max_steps)
        t0 = time.perf_counter()
        n, n_act = env.n_envs, model.model_cfg.n_actions
        obs_rec = np.zeros((n, max_steps, ANT_OBS_DIM), dtype=np.float32)
        xy_rec = np.zeros((n, max_steps, 2), dtype=np.float32)
        act_rec = np.zeros((n, max_steps, n_act), dtype=np.float32)
        logp_rec = np.zeros((n, max_steps), dtype=np.float32)
        subgoal_rec = np.full((n, max_steps), -1, dtype=np.int64)
        done_rec = np.full((n, max_steps), -1, dtype=np.int64)
        reward = np.zeros((n, max_steps), dtype=np.float32)
        resid_rec = torch.zeros(n, max_steps, model.cfg.d_model) if record_resid else None
        n_out = model.model_cfg.n_action_outputs
        param_rec = torch.zeros(n, max_steps, n_out) if record_logits else None

        stepper = self._stepper(len(rows), max_steps)
        obs = env.observations()  # [n_envs, 41]
        actions = np.zeros((n, n_act), dtype=np.float64)
        for t in range(max_steps):
            live = ~env.done[rows]  # [rows]
            if not live.any():
                break
            if compact and live.sum() <= 0.75 * len(rows):
                keep = np.flatnonzero(live)
                rows = rows[keep]
                stepper.select(torch.from_numpy(keep).to(device))
                live = live[keep]
            live_rows = rows[live]
            # record the state observed at step t
            obs_rec[live_rows, t] = obs[live_rows]
            xy_rec[live_rows, t] = env.xy[live_rows]
            subgoal_rec[live_rows, t] = env.target_colour()[live_rows]
            done_rec[live_rows, t] = env.n_done[live_rows]

            tok = torch.from_numpy(obs[rows]).to(device)[:, None, :]  # [rows, 1, 41]
            e = stepper.lower(tok)  # [rows, 1, d_model]
            controller = None
            if controller_fn is not None:
                controller = controller_fn(StepState(t, e[:, 0], rows, env, layer))
            e_hat = e if controller is None else controller(e)  # [rows, 1, d_model]
            params = model.split(stepper.upper(e_hat)).action_params.float()  # [rows, 2 * 8]
            mean, log_std = params.chunk(2, dim=-1)
            if greedy:
                a = mean
            else:
                noise = torch.randn(len(rows), n_act, generator=generator).to(device)
                a = mean + log_std.clamp(-5.0, 2.0).exp() * noise
            lp = model.action_distribution(params).log_prob(a)  # [rows]

            live_t = torch.from_numpy(np.flatnonzero(live)).to(device)
            a_np = a.cpu().numpy()
            act_rec[live_rows, t] = a_np[live]
            logp_rec[live_rows, t] = lp[live_t].cpu().numpy()
            if resid_rec is not None:
                resid_rec[live_rows, t] = e[live_t, 0].float().cpu()
            if param_rec is not None:
                param_rec[live_rows, t] = params[live_t].cpu()
            actions[rows] = a_np
            obs, r, _, _, _ = env.step(actions)
            reward[:, t] = r
        return AntEngineRollout(
            layer=layer,
            layout=env.layout.copy(),
            task=env.task_colours.copy(),
            obs=obs_rec,
            xy=xy_rec,
            action=act_rec,
            action_logp=logp_rec,
            subgoal=subgoal_rec,
            n_done=done_rec,
            reward=reward,
            length=np.where(started, env.t, 0),
            success=env.success.copy(),
            final_n_done=env.n_done.copy(),
            end_reason=np.where(started, env.end_reason, 0),
            resid=resid_rec,
            action_params=param_rec,
            seconds=time.perf_counter() - t0,
        )


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
