"""The rollout engine: ONE closed-loop episode loop over an env-adapter protocol.

Every env of a batched environment is one row of the batch. At each step ``t`` the engine

1. turns the current observations into model inputs (:meth:`EnvAdapter.inputs`) and runs
   the **lower half** (blocks ``< l``) on the new position only, reading earlier positions
   from the key/value cache (:mod:`~irl_lens.rollout.stepper`): ``e_t`` at layer ``l``;
2. asks an optional ``controller_fn(StepState)`` for a controller and applies it,
   ``e_hat_t = controller(e_t)`` (e.g. ``e_t + U_t e_t``);
3. runs the **upper half** (blocks ``>= l``, final norm, unembed) on ``e_hat_t``, lets the
   adapter draw the action from the action head (:meth:`EnvAdapter.act`) and steps every
   env at once (:meth:`EnvAdapter.step`);
4. records actions, log-probabilities, rewards and, when asked, the residuals ``e_t`` and
   the action-head outputs (a :class:`Tape`); the adapter records what the env observed
   (:meth:`EnvAdapter.observe`) and builds the environment's record at the end.

The outputs equal those of the full-sequence forward pass over the recorded observations
with the same controller attached through :func:`irl_lens.hooks.intervene` (tested).

**Controller interface.** ``controller_fn(state) -> controller | None`` is called once per
step with a :class:`StepState`: the pre-control residual of the live rows, which env each
row is (``env_index``), the env itself (read-only: labels, ``n_done``, tasks) and ``t``.
A stateful controller (ground-truth switching, a metacontroller's GRU state and latent
``z``, an RL policy) keeps per-env arrays of size ``n_envs`` and indexes them with
``state.env_index``; rows are dropped from the batch as their episodes end, so row ``i``
is not env ``i``. See :class:`~irl_lens.rollout.switchers.GroundTruthSwitcher`.

**Environments.** This module knows no environment: an :class:`EnvAdapter` binds the loop
to one. :mod:`irl_lens.rollout.grid` (the gridworld, categorical actions) and
:mod:`irl_lens.rollout.ant` (ant-pinpad in MuJoCo, Gaussian torques) hold the two we ship
with their engines ``GridRolloutEngine`` and ``AntRolloutEngine``;
:func:`irl_lens.rollout.kit.env_kit` picks the one of a model's environment.

**Speed.** The key/value cache is preallocated (no ``torch.cat`` per step), finished
episodes are dropped from the batch (rows compacted, cache rows gathered) once a quarter
of the rows are done, and residuals and action-head outputs are only kept when asked. All
rows of a cache share one length, so one call serves one batch of episodes started
together; the key/value cache holds at most ``n_ctx`` steps.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from irl_lens.hooks import Controller, check_layer
from irl_lens.models.base import ActionModel
from irl_lens.rollout.stepper import Stepper, _fast_path_problem, make_stepper

__all__ = [
    "BatchedEnv",
    "ControllerFn",
    "EnvAdapter",
    "EpisodeBatch",
    "RolloutEngine",
    "StepState",
    "Tape",
    "reset_seeded",
]


class BatchedEnv(Protocol):
    """What the loop itself reads of a batched environment (both shipped envs have it)."""

    n_envs: int
    done: np.ndarray  # [n_envs] bool: the episode has ended
    t: np.ndarray  # [n_envs] int64: steps taken in the current episode

    def reset(self, seed: int | Sequence[int] | None = None) -> Any:
        """Start a new episode in every env (``seed``: one per env)."""
        ...


E = TypeVar("E", bound=BatchedEnv)


def reset_seeded(env: E, seed: int = 0, stream: int = 0) -> E:
    """Reset every env of ``env`` so its episodes depend only on ``(seed, stream)`` (env
    ``i`` draws from the ``i``-th word of ``SeedSequence([seed, stream])``); returns ``env``."""
    seeds = np.random.SeedSequence([seed, stream]).generate_state(env.n_envs)
    env.reset(seed=[int(s) for s in seeds])
    return env


@dataclass
class StepState:
    """What ``controller_fn`` sees at step ``t`` (rows = the envs still in the batch)."""

    t: int
    """Time step = position in the episode (0-based)."""
    resid: Float[Tensor, "rows d_model"]
    """Residual stream ``e_t`` at the engine's layer, before any control."""
    env_index: Int[np.ndarray, " rows"]
    """The env each row belongs to (ascending)."""
    env: BatchedEnv
    """The envs, in their state before this step's action (read, don't write)."""
    layer: int
    """The layer ``l`` the controller acts at."""


ControllerFn = Callable[[StepState], Controller | None]
"""Called once per step; returns the controller for this step's rows, or ``None``."""


class EpisodeBatch:
    """Shape helpers of a batch of recorded episodes (``reward [n_envs, n_steps]``, ``length``),
    shared by every environment's record."""

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
class Tape:
    """What the loop records for every environment; the adapter turns it into its record.

    Per-step arrays are ``[n_envs, n_steps, ...]``; steps after an episode ended keep their
    fill (``-1`` or 0).
    """

    layer: int
    started: np.ndarray  # [n_envs] bool: the episode was live at the start
    action: np.ndarray  # [n_envs, n_steps, ...] as the adapter allocated it
    action_logp: np.ndarray  # [n_envs, n_steps] float32: log p(a_t | o_1:t) of the taken action
    reward: np.ndarray  # [n_envs, n_steps] float32
    resid: Tensor | None  # [n_envs, n_steps, d_model] float32 e_t (before control)
    head: Tensor | None  # [n_envs, n_steps, n_action_outputs] float32 action-head outputs
    length: np.ndarray | None = None  # [n_envs] int64, set when the loop ends
    seconds: float = 0.0


R = TypeVar("R", bound=EpisodeBatch)


class EnvAdapter(ABC, Generic[R]):
    """Binds the episode loop to one environment; one instance per :meth:`RolloutEngine.run`.

    A subclass says which models it can run (:meth:`check_model`), the env's time limit,
    how observations become model inputs, how the action head becomes actions, how the
    envs step, what to record of each observed state and how to build the record. The
    loop handles the rest (cache, compaction, controllers, log-probabilities, rewards,
    residuals). The env must be a :class:`BatchedEnv`, freshly reset.
    """

    time_limit: ClassVar[int]
    """The env's time limit T: the default ``max_steps`` of a run."""

    def __init__(self, env: Any, model: ActionModel, max_steps: int, device: torch.device):
        self.env, self.model, self.max_steps, self.device = env, model, max_steps, device

    @classmethod
    @abstractmethod
    def check_model(cls, model: ActionModel) -> None:
        """Raise ``ValueError`` unless the model reads this env's observations and acts in it."""

    @abstractmethod
    def empty_actions(self) -> np.ndarray:
        """The action record ``[n_envs, max_steps, ...]`` with its fill for steps not taken."""

    @abstractmethod
    def observe(self, t: int, rows: np.ndarray) -> None:
        """Record what envs ``rows`` (live, ascending) observe at step ``t``."""

    @abstractmethod
    def inputs(self, rows: np.ndarray) -> Tensor:
        """Model inputs ``[rows, 1, ...]`` for the current state of envs ``rows`` (the batch
        rows, live or not), on the engine's device."""

    @abstractmethod
    def act(
        self, head: Float[Tensor, "rows n_action_outputs"], greedy: bool, generator
    ) -> tuple[Tensor, Float[Tensor, " rows"]]:
        """``(actions, log-probabilities)`` of the batch rows from the action head's outputs:
        sampled with ``generator`` (a CPU ``torch.Generator``) or, if ``greedy``, the mode."""

    @abstractmethod
    def step(self, rows: np.ndarray, actions: np.ndarray) -> Float[np.ndarray, " n_envs"]:
        """Step every env, envs ``rows`` with ``actions`` (one per row); return the rewards."""

    @abstractmethod
    def result(self, tape: Tape) -> R:
        """The environment's record of the run."""


class RolloutEngine(Generic[R]):
    """Closed-loop rollouts of a base model split at ``layer`` (default ``L // 2``) in the
    environment of ``adapter``.

    ``GridRolloutEngine`` (:mod:`irl_lens.rollout.grid`) and ``AntRolloutEngine``
    (:mod:`irl_lens.rollout.ant`) fix the adapter. Example::

        engine = RolloutEngine(model, layer=2, adapter=GridAdapter)
        ro = engine.run(env, controller_fn=switcher, generator=torch.Generator().manual_seed(0))
        ro.success.mean()
    """

    def __init__(
        self,
        model: ActionModel,
        layer: int | None = None,
        fast: bool = True,
        *,
        adapter: type[EnvAdapter[R]],
    ) -> None:
        adapter.check_model(model)
        n_layers = model.cfg.n_layers
        self.model = model
        self.layer = n_layers // 2 if layer is None else check_layer(layer, n_layers)
        self.fast = fast
        self.adapter = adapter

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fast_path(self) -> bool:
        """Whether runs use the fused stepper (no hooks attached, a plain rotary model)."""
        return self.fast and _fast_path_problem(self.model) is None

    def _stepper(self, n: int, max_len: int) -> Stepper:
        return make_stepper(self.model, self.layer, n, max_len, fast=self.fast)

    def _start(self, env: BatchedEnv, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
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
        env: BatchedEnv,
        *,
        controller_fn: ControllerFn | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
        max_steps: int | None = None,
        record_resid: bool = False,
        record_logits: bool = False,
        compact: bool = True,
    ) -> R:
        """Run every live episode of ``env`` (already reset) to its end or ``max_steps``.

        Args:
            env: freshly reset envs; those already done at the start are left out
                (length 0).
            controller_fn: called each step, see :class:`StepState`; ``None`` = base model.
            greedy: the action head's mode (argmax, Gaussian mean) instead of sampling.
            generator: a CPU ``torch.Generator`` for the action samples (same seed, same
                episodes, on any device).
            max_steps: at most this many steps (<= the model's ``n_ctx``; default: the
                env's time limit).
            record_resid: keep ``e_t`` at the layer (``[n_envs, n_steps, d_model]``).
            record_logits: keep the action head's outputs (logits, ``[mean, log_std]``).
            compact: drop finished episodes from the batch (faster; same results).
        """
        model, layer, device = self.model, self.layer, self.device
        max_steps = self.adapter.time_limit if max_steps is None else max_steps
        rows, started = self._start(env, max_steps)
        t0 = time.perf_counter()
        n, n_out = env.n_envs, model.model_cfg.n_action_outputs
        adapter = self.adapter(env, model, max_steps, device)
        tape = Tape(
            layer=layer,
            started=started,
            action=adapter.empty_actions(),
            action_logp=np.zeros((n, max_steps), dtype=np.float32),
            reward=np.zeros((n, max_steps), dtype=np.float32),
            resid=torch.zeros(n, max_steps, model.cfg.d_model) if record_resid else None,
            head=torch.zeros(n, max_steps, n_out) if record_logits else None,
        )
        stepper = self._stepper(len(rows), max_steps)
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
            adapter.observe(t, live_rows)  # the state observed at step t

            e = stepper.lower(adapter.inputs(rows))  # [rows, 1, d_model]
            controller = None
            if controller_fn is not None:
                controller = controller_fn(StepState(t, e[:, 0], rows, env, layer))
            e_hat = e if controller is None else controller(e)  # [rows, 1, d_model]
            head = model.split(stepper.upper(e_hat)).action_params.float()  # [rows, n_out]
            a, lp = adapter.act(head, greedy, generator)

            a_np = a.cpu().numpy()
            live_t = torch.from_numpy(np.flatnonzero(live)).to(device)
            tape.action[live_rows, t] = a_np[live]
            tape.action_logp[live_rows, t] = lp[live_t].cpu().numpy()
            if tape.resid is not None:
                tape.resid[live_rows, t] = e[live_t, 0].float().cpu()
            if tape.head is not None:
                tape.head[live_rows, t] = head[live_t].cpu()
            tape.reward[:, t] = adapter.step(rows, a_np)
        tape.length = np.where(started, env.t, 0)
        tape.seconds = time.perf_counter() - t0
        return adapter.result(tape)
