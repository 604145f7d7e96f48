"""ant-pinpad: the MuJoCo ant on a 4 x 4 pinpad arena (Kobayashi et al. 2025, App. A.2).

The agent is the standard quadruped Gymnasium ships (``gymnasium/envs/mujoco/assets/ant.xml``,
torque control on 8 joints, ``dt = 5 x 0.01 s``), integrated with MuJoCo's ``implicitfast``
instead of the file's RK4 (3.2x faster; see :func:`~irl_lens.envs.ant_arena.build_arena`).
The arena is built with ``mujoco.MjSpec``: a ``G x G = 4 x 4`` grid of square cells of side
:data:`~irl_lens.envs.ant_layout.CELL_SIZE`, boundary walls around it, 4 coloured floor
tiles (visual only, no collisions) and 1 wall cell (a box that collides).
Tiles and the wall are static bodies compiled once; each env holds a copy of the model in
which they sit where its layout puts them (``body_pos``).

Rules (same as gridworld-pinpad, with the torso centre as the agent's position):

* the torso centre's cell is the agent's cell; a colour is *visited* when the torso centre
  enters its cell from another cell; entering the next task colour advances the task,
  entering any other colour ends the episode as a failure (reward 0); entering the last
  task colour ends it with reward 1;
* the episode also ends (failure) when the torso centre enters the wall cell (or climbs
  over the boundary wall) or the torso height leaves ``[0.2, 1.0]``; it is truncated
  after T = 500 steps.

Initial state (paper): a random free cell, the torso at a uniform point of its central
part (offsets up to :data:`~irl_lens.envs.ant_batch.START_SPREAD` of the cell side from the
centre, so the legs never start inside a wall), height 0.75, a uniformly random yaw, joint
angles and all velocities uniform in ``+-0.1`` around
:func:`~irl_lens.envs.ant_arena.start_pose` (``ant.xml``'s zero pose with each angle moved
0.1 rad inside its joint range: at zero the ankles sit 30 degrees outside theirs, and the
limits threw a quarter of all ants out of the arena or above 1.0 m within 20 steps).

Observation (``float32[41]``, :func:`~irl_lens.envs.ant_layout.ant_observations`):

=========  =====  ==========================================================================
slice      width  meaning
=========  =====  ==========================================================================
0:27       27     symlog of proprioception: torso height, orientation quaternion, 8 joint
                  angles (qpos[2:15]) and all 14 velocities (qvel)
27:29      2      global torso x, y scaled to [-1, 1] over the arena
29:37      8      position of each colour cell's centre relative to the torso, (dx, dy) per
                  colour, divided by the arena side
37:39      2      the same for the wall cell
39:41      2      the torso's coordinate inside its current cell, in [-1, 1]
=========  =====  ==========================================================================

Physics runs through ``mujoco.rollout`` on a thread pool (one thread per core), so a
:class:`~irl_lens.envs.ant_batch.BatchedAntPinpad` of many envs steps without a Python loop
over envs. :class:`AntPinpadEnv` (Gymnasium id ``irl_lens/AntPinpad-v0``) is the same engine
with one env.

The pieces live in one module each: :mod:`~irl_lens.envs.ant_layout` (grid, tasks, layouts,
paths, observations; no MuJoCo), :mod:`~irl_lens.envs.ant_arena` (the MuJoCo model),
:mod:`~irl_lens.envs.ant_batch` (the batched engine and the expert's view),
:mod:`~irl_lens.envs.ant_figure` (a top-down plotly figure; no MuJoCo) and this module
(the Gymnasium env).

Importing this module imports MuJoCo; ``import irl_lens`` does not (the env is registered
with a lazy string entry point). ``MUJOCO_GL`` defaults to ``egl`` for headless rendering
(:mod:`~irl_lens.envs.ant_arena` and :mod:`~irl_lens.envs.ant_batch` set it before
``import mujoco``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from irl_lens.envs.ant_batch import BatchedAntPinpad
from irl_lens.envs.ant_layout import (
    ANT_OBS_DIM,
    ANT_PRETRAIN_TASKS,
    CELL_SIZE,
    is_ant_solvable,
    parse_ant_task,
)
from irl_lens.envs.pinpad import Task, TaskSpec, format_task

__all__ = ["AntPinpadEnv"]


class AntPinpadEnv(gym.Env[np.ndarray, np.ndarray]):
    """ant-pinpad (Kobayashi et al. 2025, App. A.2) as a Gymnasium environment.

    See the module docstring for the arena, rules, initial state and observation.

    * Action: ``Box(-1, 1, (8,), float32)``, torques of the 8 hip/ankle joints.
    * Observation: ``Box(-inf, inf, (41,), float32)``.
    * Reward: 1 when the last task colour is entered, else 0.
    * ``info``: ``subgoal`` (the current target colour; colours are the ant's subgoals;
      -1 after success), ``target_colour``, ``n_done``, ``is_success``, ``t``, ``cell``,
      ``xy``, ``velocity``.
    * ``reset(options=...)``: ``task`` (``"0-1-2-3"``, ``"post"``), or ``layout`` +
      ``start`` for a fixed arena.
    * ``render_mode="rgb_array"``: a 320 x 240 camera image (``MUJOCO_GL=egl`` headless);
      :func:`~irl_lens.envs.ant_figure.trajectory_figure` draws a top-down plotly path
      without a renderer.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: TaskSpec | None = None,
        render_mode: str | None = None,
        cell_size: float = CELL_SIZE,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode {render_mode!r} is not supported; use 'rgb_array' or None"
            )
        self.render_mode = render_mode
        self._core = BatchedAntPinpad(1, task=task, cell_size=cell_size, n_threads=1)
        self.observation_space = spaces.Box(-np.inf, np.inf, (ANT_OBS_DIM,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (self._core.model.nu,), np.float32)

    @property
    def core(self) -> BatchedAntPinpad:
        """The one-env engine (state arrays, expert features)."""
        return self._core

    @property
    def task(self) -> Task:
        return self._core.tasks[0]

    @property
    def layout(self) -> np.ndarray:
        return self._core.layout[0]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"task", "layout", "start"}
        if unknown:
            raise ValueError(
                f"unknown reset option(s) {sorted(unknown)}; allowed: task, layout, start"
            )
        core = self._core
        core.rngs = [self.np_random]
        task = parse_ant_task(options["task"]) if options.get("task") is not None else None
        if options.get("layout") is not None:
            if options.get("start") is None:
                raise ValueError("reset option 'layout' needs 'start' too")
            task = task or core.fixed_task or ANT_PRETRAIN_TASKS[0]
            layout = np.asarray(options["layout"], dtype=np.uint8)
            if not is_ant_solvable(layout, int(options["start"]), task):
                raise ValueError(f"layout is not solvable for task {format_task(task)}")
            core._place(0, task, layout, int(options["start"]), self.np_random)
        else:
            core._start(0, task)
        return core.observations()[0], self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._core.done[0]:
            raise RuntimeError("step() called after the episode ended; call reset() first")
        obs, reward, terminated, truncated, _ = self._core.step(np.asarray(action)[None, :])
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), self._info()

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array":
            return self._core.render(0)
        return None

    def _info(self) -> dict[str, Any]:
        info = self._core.info()
        return {k: (v[0].copy() if np.ndim(v[0]) else v[0].item()) for k, v in info.items()}
