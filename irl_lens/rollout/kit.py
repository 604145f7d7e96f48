"""One interface, both environments: the engine, envs and switcher of a model's environment.

:func:`env_kit` reads the model's observation kind and returns an :class:`EnvKit`: the
gridworld (colour-pair subgoals, :mod:`irl_lens.rollout.grid`) or ant-pinpad (one colour
per subgoal, :mod:`irl_lens.rollout.ant`). :func:`run_batches` runs any number of seeded
episodes through a kit, so analyses (controllers, steering, prior sampling) are written
once for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from irl_lens.envs.pinpad import MAX_STEPS, PRETRAIN_TASKS, parse_task
from irl_lens.models.base import ActionModel
from irl_lens.rollout.engine import ControllerFn, RolloutEngine
from irl_lens.rollout.grid import GridExpertLabels, GridRolloutEngine, seeded_env
from irl_lens.rollout.switchers import GroundTruthSwitcher

__all__ = ["EnvKit", "env_kit", "run_batches"]


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
    """The engine at the requested layer (``GridRolloutEngine`` or ``AntRolloutEngine``)."""
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
    pretrain_tasks: tuple[tuple[int, ...], ...] = ()
    """The tasks of the env's expert data (Table A1 / A2)."""
    expert_labels: Callable | None = None
    """``expert_labels(**kwargs)``: a fresh labeller, ``labeller(env)`` -> the clean expert's
    action at every env's current state (:class:`~irl_lens.rollout.grid.GridExpertLabels`,
    :class:`~irl_lens.rollout.ant.AntExpertLabels`); call it once per env step."""

    def subgoal_task(self, g: int) -> list[int]:
        """The one-subgoal task of subgoal ``g`` (gridworld ``[2g, 2g + 1]``, ant ``[g]``)."""
        k = self.colours_per_subgoal
        return list(range(k * g, k * (g + 1)))


def env_kit(model: ActionModel, layer: int | None = None) -> EnvKit:
    """The :class:`EnvKit` of ``model``'s environment (ant: vector observations; imports
    MuJoCo only then)."""
    if model.model_cfg.obs_kind == "vector":
        # lazy: the ant modules import MuJoCo, which gridworld work must not pay for
        from irl_lens.envs.ant_layout import ANT_MAX_STEPS, ANT_PRETRAIN_TASKS, parse_ant_task
        from irl_lens.rollout.ant import (
            AntExpertLabels,
            AntRolloutEngine,
            ColourSwitcher,
            seeded_ant_env,
        )

        return EnvKit("ant", AntRolloutEngine(model, layer), seeded_ant_env, ColourSwitcher,
                      1, parse_ant_task, batch=250, max_steps=ANT_MAX_STEPS,
                      pretrain_tasks=ANT_PRETRAIN_TASKS, expert_labels=AntExpertLabels)  # fmt: skip
    return EnvKit("gridworld", GridRolloutEngine(model, layer), seeded_env, GroundTruthSwitcher,
                  2, parse_task, batch=1000, max_steps=MAX_STEPS,
                  pretrain_tasks=PRETRAIN_TASKS, expert_labels=GridExpertLabels)  # fmt: skip


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
