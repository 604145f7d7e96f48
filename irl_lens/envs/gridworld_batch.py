"""gridworld-pinpad batched: thousands of episodes stepped at once with vectorised NumPy.

:class:`BatchedGridPinpad` is what data generation and RL use. It follows the rules of
:class:`~irl_lens.envs.gridworld.GridPinpadEnv` (written out in
:mod:`irl_lens.envs.gridworld`) with the same helpers from
:mod:`~irl_lens.envs.gridworld_layout`, so that, seeded the same way, env ``i`` of the batch
replays exactly the episode ``GridPinpadEnv(task).reset(seed=seeds[i])`` produces (tests
check this step by step).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gymnasium.utils import seeding
from jaxtyping import Bool, Float32, Int64, UInt8

from irl_lens.envs.gridworld_layout import (
    EMPTY,
    N_ACTIONS,
    N_CELLS,
    NEXT_CELL,
    WALL,
    draw_episode,
    encode_observations,
    validate_layout,
)
from irl_lens.envs.pinpad import (
    MAX_STEPS,
    N_COLOURS,
    PRETRAIN_TASKS,
    Task,
    TaskSpec,
    env_rngs,
    parse_task,
)

__all__ = ["BatchedGridPinpad"]


class BatchedGridPinpad:
    """Many gridworld-pinpad episodes stepped at once with vectorised NumPy.

    Same rules, same randomness, same info as
    :class:`~irl_lens.envs.gridworld.GridPinpadEnv`, but no observations are built unless
    asked for: the state *is* ``(layout, agent_pos)``, which models embed directly
    (:meth:`observations` gives the one-hot form).

    **Seeding.** Each env ``i`` owns a ``np.random.Generator`` made exactly as Gymnasium
    makes ``self.np_random`` (``gymnasium.utils.seeding.np_random(seed)``) and draws its
    episodes with the same code (task, then layout). Hence with ``reset(seed=seeds)``,
    env ``i`` replays ``GridPinpadEnv(task).reset(seed=seeds[i])`` and every later
    unseeded reset of it (:meth:`reset_envs`) continues that stream as the single env's
    ``reset()`` would. ``reset(seed=s)`` with one int seeds env ``i`` with ``s + i``.

    **Finished envs.** Once an env terminates or truncates (``done[i]``) it is frozen:
    :meth:`step` leaves its state unchanged and reports reward 0, ``terminated`` False,
    ``truncated`` False for it, so each episode reports its end exactly once. Call
    :meth:`reset_done` (or :meth:`reset_envs`) to start new episodes there.

    **State arrays** (``n`` = ``n_envs``; read them, don't write them):

    | Attribute      | Type                 | Meaning                                      |
    |----------------|----------------------|----------------------------------------------|
    | ``layout``     | ``uint8[n, 49]``     | cell codes                                   |
    | ``agent_pos``  | ``int64[n]``         | agent cell                                   |
    | ``task_colours`` | ``int64[n, max_len]`` | tasks, padded with -1                      |
    | ``task_len``   | ``int64[n]``         | task lengths                                 |
    | ``n_done``     | ``int64[n]``         | task colours completed                       |
    | ``t``          | ``int64[n]``         | steps taken this episode                     |
    | ``done``       | ``bool[n]``          | episode over (terminated or truncated)       |
    | ``visited``    | ``bool[n, 8]``       | colours entered this episode                 |
    | ``success``    | ``bool[n]``          | task completed                               |
    | ``episode_uid``| ``int64[n]``         | process-unique id of each env's current episode; |
    |                |                      | changes on every reset, so caches (the expert's  |
    |                |                      | distance maps) know when to recompute            |

    Example::

        env = BatchedGridPinpad(4096)
        agent_pos, info = env.reset(seed=0)
        for _ in range(100):
            agent_pos, reward, terminated, truncated, info = env.step(actions)
            env.reset_done()
    """

    _uid_counter = 0  # class-wide, so episode ids are unique across instances

    def __init__(self, n_envs: int, task: TaskSpec | None = None):
        if int(n_envs) < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        self.n_envs = n = int(n_envs)
        self.fixed_task: Task | None = None if task is None else parse_task(task)
        max_len = (
            len(self.fixed_task)
            if self.fixed_task is not None
            else max(len(t) for t in PRETRAIN_TASKS)
        )
        self.rngs: list[np.random.Generator] | None = None
        self.tasks: list[Task] = [self.fixed_task or PRETRAIN_TASKS[0]] * n
        self.layout = np.zeros((n, N_CELLS), dtype=np.uint8)
        self.agent_pos = np.zeros(n, dtype=np.int64)
        self.task_colours = np.full((n, max_len), -1, dtype=np.int64)
        self.task_len = np.ones(n, dtype=np.int64)
        self.n_done = np.zeros(n, dtype=np.int64)
        self.t = np.zeros(n, dtype=np.int64)
        self.done = np.ones(n, dtype=bool)
        self.visited = np.zeros((n, N_COLOURS), dtype=bool)
        self.success = np.zeros(n, dtype=bool)
        self.episode_uid = np.full(n, -1, dtype=np.int64)
        self._arange = np.arange(n)
        self._cell_offset = self._arange * N_CELLS  # index into layout.reshape(-1)
        self._colour_offset = self._arange * N_COLOURS  # index into visited.reshape(-1)

    # -- resets ------------------------------------------------------------------------

    def reset(
        self,
        seed: int | Sequence[int] | None = None,
        tasks: Sequence[TaskSpec] | None = None,
    ) -> tuple[Int64[np.ndarray, " n_envs"], dict[str, np.ndarray]]:
        """Reset every env.

        Args:
            seed: ``None`` (fresh random generators on the first call, otherwise continue
                each env's stream), one int ``s`` (env ``i`` gets seed ``s + i``) or one
                seed per env.
            tasks: optional per-env tasks for these episodes, like the single env's
                ``options={"task": ...}``.

        Returns:
            ``(agent_pos int64[n_envs], info)``.
        """
        n = self.n_envs
        if seed is not None:
            self.rngs = env_rngs(seed, n)
        return self.reset_envs(np.ones(n, dtype=bool), tasks=tasks)

    def reset_done(self) -> tuple[Int64[np.ndarray, " n_envs"], dict[str, np.ndarray]]:
        """Start new episodes in the envs that are done (continuing their RNG streams)."""
        return self.reset_envs(self.done)

    def reset_envs(
        self,
        mask: Bool[np.ndarray, " n_envs"] | Sequence[int],
        tasks: Sequence[TaskSpec] | None = None,
    ) -> tuple[Int64[np.ndarray, " n_envs"], dict[str, np.ndarray]]:
        """Start new episodes in the envs selected by ``mask`` (bool[n_envs] or indices).

        Each selected env draws from its own generator, exactly like an unseeded
        ``GridPinpadEnv.reset()``. ``tasks`` gives one task per *selected* env. Returns
        ``(agent_pos, info)`` for all envs.
        """
        if self.rngs is None:
            self.rngs = [seeding.np_random(None)[0] for _ in range(self.n_envs)]
        idx = self._indices(mask)
        if tasks is not None and len(tasks) != len(idx):
            raise ValueError(f"need one task per reset env ({len(idx)}), got {len(tasks)}")
        new_layouts = np.empty((len(idx), N_CELLS), dtype=np.uint8)
        new_pos = np.empty(len(idx), dtype=np.int64)
        new_tasks = []
        for j, i in enumerate(idx.tolist()):  # per-env generators: a Python loop by design
            override = None if tasks is None else parse_task(tasks[j])
            task, new_layouts[j], new_pos[j] = draw_episode(self.rngs[i], self.fixed_task, override)
            new_tasks.append(task)
        self._start(idx, new_layouts, new_pos, new_tasks)
        return self.agent_pos.copy(), self.info()

    def set_state(
        self,
        layouts: UInt8[np.ndarray, "n 49"],
        agent_pos: Sequence[int] | np.ndarray,
        tasks: Sequence[TaskSpec],
        envs: Bool[np.ndarray, " n_envs"] | Sequence[int] | None = None,
    ) -> tuple[Int64[np.ndarray, " n_envs"], dict[str, np.ndarray]]:
        """Start hand-built episodes (validated, need not be solvable) in ``envs``.

        ``layouts``, ``agent_pos`` and ``tasks`` give one entry per selected env
        (default: all envs). The envs' generators are untouched. Mirrors
        ``GridPinpadEnv.reset(options={"layout": ..., "agent_pos": ..., "task": ...})``.
        """
        idx = self._indices(np.ones(self.n_envs, dtype=bool) if envs is None else envs)
        layouts = np.asarray(layouts)
        agent_pos = np.asarray(agent_pos).reshape(-1)
        if len(layouts) != len(idx) or len(agent_pos) != len(idx) or len(tasks) != len(idx):
            raise ValueError(
                f"set_state needs {len(idx)} layouts, agent positions and tasks; got "
                f"{len(layouts)}, {len(agent_pos)} and {len(tasks)}"
            )
        checked = [validate_layout(lay, pos) for lay, pos in zip(layouts, agent_pos, strict=True)]
        new_layouts = np.stack([lay for lay, _ in checked])
        new_pos = np.array([pos for _, pos in checked], dtype=np.int64)
        self._start(idx, new_layouts, new_pos, [parse_task(t) for t in tasks])
        return self.agent_pos.copy(), self.info()

    def _indices(self, mask: np.ndarray | Sequence[int]) -> np.ndarray:
        arr = np.asarray(mask)
        if arr.dtype == bool:
            if arr.shape != (self.n_envs,):
                raise ValueError(f"mask must have shape ({self.n_envs},), got {arr.shape}")
            return np.flatnonzero(arr)
        arr = arr.astype(np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_envs):
            raise ValueError(f"env indices must lie in 0..{self.n_envs - 1}")
        return arr

    def _start(
        self, idx: np.ndarray, layouts: np.ndarray, agent_pos: np.ndarray, tasks: list[Task]
    ) -> None:
        longest = max((len(t) for t in tasks), default=0)
        if longest > self.task_colours.shape[1]:  # grow the padded task table
            grown = np.full((self.n_envs, longest), -1, dtype=np.int64)
            grown[:, : self.task_colours.shape[1]] = self.task_colours
            self.task_colours = grown
        for j, i in enumerate(idx.tolist()):
            self.tasks[i] = tasks[j]
            self.task_colours[i] = -1
            self.task_colours[i, : len(tasks[j])] = tasks[j]
            self.task_len[i] = len(tasks[j])
        self.layout[idx] = layouts
        self.agent_pos[idx] = agent_pos
        self.n_done[idx] = 0
        self.t[idx] = 0
        self.done[idx] = False
        self.visited[idx] = False
        self.success[idx] = False
        start = BatchedGridPinpad._uid_counter
        self.episode_uid[idx] = np.arange(start, start + len(idx))
        BatchedGridPinpad._uid_counter = start + len(idx)

    # -- stepping ----------------------------------------------------------------------

    def step(
        self, actions: Int64[np.ndarray, " n_envs"]
    ) -> tuple[
        Int64[np.ndarray, " n_envs"],
        Float32[np.ndarray, " n_envs"],
        Bool[np.ndarray, " n_envs"],
        Bool[np.ndarray, " n_envs"],
        dict[str, np.ndarray],
    ]:
        """Step every env (frozen ones do not move; see the class docstring).

        Returns ``(agent_pos, reward, terminated, truncated, info)`` as arrays; ``info``
        has the single env's keys, each an array over envs.
        """
        actions = np.asarray(actions)
        if actions.shape != (self.n_envs,):
            raise ValueError(f"actions must have shape ({self.n_envs},), got {actions.shape}")
        if actions.min() < 0 or actions.max() >= N_ACTIONS:
            raise ValueError(f"actions must lie in 0..{N_ACTIONS - 1}")
        active = ~self.done
        nxt = NEXT_CELL[self.agent_pos, actions]  # [n_envs]
        code = self.layout.reshape(-1)[self._cell_offset + nxt]  # [n_envs] cell code there
        moved = active & (code != WALL) & (nxt != self.agent_pos)
        np.copyto(self.agent_pos, nxt, where=moved)
        entered = moved & (code != EMPTY)  # moved onto a colour cell
        colour = code.astype(np.int64) - 1
        target = self._target()
        correct = entered & (colour == target)
        wrong = entered & ~correct
        self.visited.reshape(-1)[(self._colour_offset + colour)[entered]] = True
        self.n_done += correct
        success = correct & (self.n_done == self.task_len)
        terminated = wrong | success
        self.t += active
        truncated = active & ~terminated & (self.t >= MAX_STEPS)
        self.success |= success
        self.done |= terminated | truncated
        reward = success.astype(np.float32)
        return self.agent_pos.copy(), reward, terminated, truncated, self.info()

    def _target(self) -> np.ndarray:
        """Next colour per env (-1 once successful)."""
        col = np.minimum(self.n_done, self.task_colours.shape[1] - 1)
        target = self.task_colours[self._arange, col]
        return np.where(self.n_done >= self.task_len, -1, target)

    def info(self) -> dict[str, np.ndarray]:
        """The single env's info keys as arrays over envs (fresh copies)."""
        target = self._target()
        return {
            "subgoal": np.where(target < 0, -1, target // 2),
            "target_colour": target,
            "n_done": self.n_done.copy(),
            "completed_subgoals": self.n_done // 2,
            "visited": self.visited.copy(),
            "is_success": self.success.copy(),
            "t": self.t.copy(),
            "agent_pos": self.agent_pos.copy(),
        }

    def target_colour(self) -> Int64[np.ndarray, " n_envs"]:
        """The next colour each env must enter (-1 where the task is complete)."""
        return self._target()

    def observations(self) -> UInt8[np.ndarray, "n_envs 7 7 13"]:
        """One-hot observations of the current states (as ``GridPinpadEnv`` returns)."""
        return encode_observations(self.layout, self.agent_pos)
