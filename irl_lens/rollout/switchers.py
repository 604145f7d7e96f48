"""Controller functions for the rollout engine: who picks the controller at each step.

Each is a ``controller_fn`` (:data:`~irl_lens.rollout.engine.ControllerFn`): called once per
step with a :class:`~irl_lens.rollout.engine.StepState`, it keeps per-env state of size
``n_envs`` (indexed by ``state.env_index``, reset at ``t = 0``) and returns the controller
for this step's rows.

* :class:`GroundTruthSwitcher`: the supervised controller of the env's current subgoal
  (gridworld colour pairs, :func:`pair_subgoals`; paper C.3 evaluation). Ant-pinpad's twin,
  where every colour is a subgoal, is :class:`irl_lens.rollout.ant.ColourSwitcher` (it
  lives beside the MuJoCo env it reads).
* :class:`MetacontrollerDriver`: a metacontroller's causal part with a binarised switch
  (Alg. 1 logic), new codes from the prior or from a policy (internal RL).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from irl_lens.envs.gridworld_batch import BatchedGridPinpad
from irl_lens.envs.pinpad import MAX_STEPS, parse_task
from irl_lens.hooks import Controller
from irl_lens.models.metacontroller import StepCarry
from irl_lens.rollout.engine import BatchedEnv, StepState

__all__ = ["GroundTruthSwitcher", "MetacontrollerDriver", "pair_subgoals"]


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

    def _switch_probability(self, state: StepState, e: Tensor, carry: StepCarry) -> Tensor:
        """``beta_t`` per row: the metacontroller's switching unit."""
        return self.mc.switch_probability(e, carry)

    def _history(self, e: Tensor, h: Tensor) -> Tensor:
        """``h_t`` from ``h_{t-1}``: the metacontroller's GRU."""
        return self.mc.gru_step(e, h)

    def reset(self, env: BatchedEnv, device) -> None:
        n = env.n_envs
        self.h = torch.zeros(n, getattr(self.mc.cfg, "n_h", 1), device=device)
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
        beta = self._switch_probability(state, e, carry)
        switch = (beta >= self.threshold) | (state.t == 0) | self.always_switch
        live_np = ~state.env.done[rows]  # finished rows wait in the batch until compaction
        switch &= torch.from_numpy(live_np).to(switch.device)
        z = carry.z
        if bool(switch.any()):
            sel = torch.nonzero(switch).squeeze(1)
            z = z.clone()
            z[sel] = self.propose(state, sel)
        self.z[idx] = z
        self.h[idx] = self._history(e, carry.h)
        live_rows = rows[live_np]
        self.beta[live_rows, state.t] = beta.cpu().numpy()[live_np]
        self.switched[live_rows, state.t] = switch.cpu().numpy()[live_np]
        self.codes[live_rows, state.t] = z.cpu().numpy()[live_np]
        mc = self.mc
        return lambda e3: mc.apply_code(e3, z.unsqueeze(1))


class FixedIntervalDriver(MetacontrollerDriver):
    """A code model without a switching unit (CompILE, issue 31) in the engine: a new code
    every ``every`` raw steps (``t = 0, every, 2 * every, ...``), written with the model's
    ``apply_code``; ``beta_t`` is recorded as 1 at those steps and 0 elsewhere. The segment
    length is the trained model's (``irl-lens compile`` stores it as
    ``segments/mean_steps``): CompILE's boundary network reads the whole episode, so it
    cannot decide online when a segment ends."""

    def __init__(self, model, *, every: int, **kw) -> None:
        if every < 1:
            raise ValueError(f"every={every!r} must be >= 1")
        super().__init__(model, **kw)
        self.every = every

    def _switch_probability(self, state: StepState, e: Tensor, carry: StepCarry) -> Tensor:
        return torch.full((len(e),), float(state.t % self.every == 0), device=e.device)

    def _history(self, e: Tensor, h: Tensor) -> Tensor:
        return h
