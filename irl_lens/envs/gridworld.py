"""gridworld-pinpad as a Gymnasium env; the rules both gridworld envs follow.

The environment of Kobayashi et al. 2025, Appendix A: on a 7 x 7 grid with 8 coloured
cells and 4 walls, step onto the colours of a task in order. The layout (colours, walls,
agent start) is resampled every episode.

Three layers, from cheap to convenient:

* **Layouts** (:mod:`irl_lens.envs.gridworld_layout`) are ``uint8[49]`` arrays of *cell
  codes* (``EMPTY``, ``1 + colour``, ``WALL``), indexed by ``cell = row * 7 + col``; the
  agent position is a separate cell index. ``(layout, agent_pos)`` is the compact state
  models read directly; ``encode_observation`` expands it into the paper's one-hot
  observation.
* :class:`GridPinpadEnv` is the single-episode ``gymnasium.Env`` (registered as
  ``irl_lens/GridPinpad-v0``).
* :class:`~irl_lens.envs.gridworld_batch.BatchedGridPinpad` steps thousands of episodes
  at once with vectorised NumPy and is what data generation and RL use. Seeded the same
  way, env ``i`` of the batch replays exactly the episode
  ``GridPinpadEnv(task).reset(seed=seeds[i])`` produces (tests check this step by step).

Rules, shared by both envs:

* Actions ``0 up (row-1), 1 right (col+1), 2 down (row+1), 3 left (col-1)``. Moving off
  the grid or into a wall is a no-op.
* A colour is *visited* when the agent **enters** its cell from a different cell; a no-op
  while standing on a colour does not count again.
* Entering the next colour of the task advances the task; entering any other colour
  (including one visited before) ends the episode as a failure with reward 0; entering
  the last colour ends it with reward 1.
* Episodes are truncated after :data:`~irl_lens.envs.pinpad.MAX_STEPS` = 100 steps. The
  env truncates itself (registration sets no ``max_episode_steps``) so that the batched
  env, which has no wrappers, has the same semantics.
"""

from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from irl_lens.envs.gridworld_layout import (
    EMPTY,
    N_ACTIONS,
    N_CELLS,
    NEXT_CELL,
    OBS_CHANNELS,
    WALL,
    draw_episode,
    encode_observation,
    sample_task,
    validate_layout,
)
from irl_lens.envs.pinpad import (
    GRID_SIZE,
    MAX_STEPS,
    N_COLOURS,
    PRETRAIN_TASKS,
    Task,
    TaskSpec,
    format_task,
    parse_task,
)

logger = logging.getLogger(__name__)

__all__ = ["GridPinpadEnv"]

# ----------------------------------------------------------------------------- render

_PX = 16  # pixels per cell
_BACKGROUND = (24, 24, 24)
_GRID_LINE = (56, 56, 56)
_WALL_RGB = (96, 96, 96)
_AGENT_RGB = (255, 255, 255)
_PALETTE = np.array(
    [
        (230, 25, 75),  # 0 red
        (245, 130, 48),  # 1 orange
        (255, 225, 25),  # 2 yellow
        (60, 180, 75),  # 3 green
        (70, 240, 240),  # 4 cyan
        (0, 90, 230),  # 5 blue
        (145, 30, 180),  # 6 purple
        (240, 50, 230),  # 7 magenta
    ],
    dtype=np.uint8,
)


def _render_rgb(layout: np.ndarray, agent_pos: int, visited: np.ndarray) -> np.ndarray:
    size = GRID_SIZE * _PX
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = _BACKGROUND
    for cell, code in enumerate(layout.tolist()):
        r, c = divmod(cell, GRID_SIZE)
        block = img[r * _PX : (r + 1) * _PX, c * _PX : (c + 1) * _PX]
        block[0, :] = _GRID_LINE
        block[:, 0] = _GRID_LINE
        if code == WALL:
            block[1:, 1:] = _WALL_RGB
        elif code != EMPTY:
            block[1:, 1:] = _PALETTE[code - 1]
            if visited[code - 1]:  # visited colours get a dark dot in the top-left corner
                block[2:6, 2:6] = 0
        if cell == agent_pos:
            block[5:-4, 5:-4] = _AGENT_RGB
    return img


def _render_ansi(layout: np.ndarray, agent_pos: int, task: Task, n_done: int, t: int) -> str:
    chars = []
    for cell, code in enumerate(layout.tolist()):
        if cell == agent_pos:
            chars.append("A")
        elif code == WALL:
            chars.append("#")
        elif code == EMPTY:
            chars.append(".")
        else:
            chars.append(str(code - 1))
    rows = [" ".join(chars[r * GRID_SIZE : (r + 1) * GRID_SIZE]) for r in range(GRID_SIZE)]
    rows.append(f"task {format_task(task)}  done {n_done}/{len(task)}  t={t}/{MAX_STEPS}")
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------------- single env


class GridPinpadEnv(gym.Env[np.ndarray, np.int64]):
    """gridworld-pinpad (Kobayashi et al. 2025, App. A) as a Gymnasium environment.

    Step onto coloured cells in the order the task gives. The layout (8 colours, 4 walls,
    agent start; no overlaps) is resampled every episode and is always solvable.

    ## Action Space

    ``Discrete(4)``:

    | Num | Action | Effect                                   |
    |-----|--------|------------------------------------------|
    | 0   | up     | row - 1                                  |
    | 1   | right  | col + 1                                  |
    | 2   | down   | row + 1                                  |
    | 3   | left   | col - 1                                  |

    Moving off the grid or into a wall leaves the agent where it is.

    ## Observation Space

    ``Box(0, 1, (7, 7, 13), uint8)``, one-hot per cell ``[row, col, channel]``:

    | Channel | Marks                                                   |
    |---------|---------------------------------------------------------|
    | 0-7     | colour 0..7                                             |
    | 8-11    | the k-th wall cell in raster order (wall k -> 8 + k)     |
    | 12      | the agent                                               |

    This is the paper's ``G*G*(W+O+1)`` = 637 numbers. Which colours were visited and
    the task itself are *not* observed; a sequence model must infer them from history.
    :func:`~irl_lens.envs.gridworld_layout.decode_observation` recovers ``(layout, agent_pos)``.

    ## Rewards

    | Event                                   | Reward |
    |-----------------------------------------|--------|
    | entering the last colour of the task    | 1      |
    | anything else                           | 0      |

    ## Starting State

    Task: fixed by ``task=...``; if ``task is None`` drawn uniformly from the 16
    pretraining tasks (Table A1) with ``self.np_random`` at every reset;
    ``reset(options={"task": "0-1-2-3"})`` overrides it for one episode. Layout and start
    from :func:`~irl_lens.envs.gridworld_layout.sample_layout` with ``self.np_random``
    (task first, then layout).
    ``options={"layout": uint8[49], "agent_pos": int}`` sets a hand-built layout instead
    (validated, need not be solvable).

    ## Episode End

    | Condition                                                   | terminated | truncated |
    |-------------------------------------------------------------|------------|-----------|
    | entered the last task colour (success)                      | True       | False     |
    | entered a colour that is not the next one (failure)         | True       | False     |
    | ``t`` reached ``MAX_STEPS`` = 100 without either            | False      | True      |

    A colour is entered when the agent moves onto it from another cell, so re-entering a
    colour visited earlier fails, while a no-op while standing on a colour does nothing.
    The env truncates itself; the registered id sets no ``max_episode_steps``.

    ## Info

    | Key                    | Type    | Meaning                                        |
    |------------------------|---------|------------------------------------------------|
    | ``subgoal``            | int     | ``target_colour // 2``; -1 after success       |
    | ``target_colour``      | int     | next colour, ``task[n_done]``; -1 after success |
    | ``n_done``             | int     | task colours completed                         |
    | ``completed_subgoals`` | int     | ``n_done // 2``: completed colour pairs        |
    | ``visited``            | bool[8] | colours entered so far this episode            |
    | ``is_success``         | bool    | task completed (True on the final step)        |
    | ``t``                  | int     | steps taken this episode                       |
    | ``agent_pos``          | int     | agent cell, ``row * 7 + col``                  |

    ``completed_subgoals`` counts pairs ``n_done // 2``; it equals the number of
    completed abstract subgoals for pair-structured tasks such as all pretraining tasks
    and the post-training task.

    ## Arguments

    * ``task``: ``None`` (pretraining distribution), ``"post"``, ``"0-1-2-3"`` or a
      sequence of ints; see :func:`~irl_lens.envs.pinpad.parse_task`.
    * ``render_mode``: ``"rgb_array"`` (``uint8[112, 112, 3]``) or ``"ansi"`` (text).

    Stepping after the episode ended raises ``RuntimeError``; call ``reset()``.
    """

    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 4}

    def __init__(self, task: TaskSpec | None = None, render_mode: str | None = None):
        self.fixed_task: Task | None = None if task is None else parse_task(task)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode {render_mode!r} is not supported; use one of "
                f"{self.metadata['render_modes']} or None"
            )
        self.render_mode = render_mode
        self.observation_space = spaces.Box(
            low=0, high=1, shape=(GRID_SIZE, GRID_SIZE, OBS_CHANNELS), dtype=np.uint8
        )
        self.action_space = spaces.Discrete(N_ACTIONS)
        self.task: Task = self.fixed_task or PRETRAIN_TASKS[0]
        self.layout = np.zeros(N_CELLS, dtype=np.uint8)
        self.agent_pos = 0
        self.n_done = 0
        self.t = 0
        self.visited = np.zeros(N_COLOURS, dtype=bool)
        self.success = False
        self.done = True

    # -- gymnasium API ---------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode. ``options`` may hold ``task``, and ``layout`` with ``agent_pos``."""
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"task", "layout", "agent_pos"}
        if unknown:
            raise ValueError(
                f"unknown reset option(s) {sorted(unknown)}; allowed: task, layout, agent_pos"
            )
        override = parse_task(options["task"]) if options.get("task") is not None else None
        if options.get("layout") is not None:
            if options.get("agent_pos") is None:
                raise ValueError("reset option 'layout' needs 'agent_pos' too")
            if override is not None:
                task = override
            elif self.fixed_task is not None:
                task = self.fixed_task
            else:
                task = sample_task(self.np_random)
            layout, agent_pos = validate_layout(options["layout"], options["agent_pos"])
        else:
            if options.get("agent_pos") is not None:
                raise ValueError("reset option 'agent_pos' needs 'layout' too")
            task, layout, agent_pos = draw_episode(self.np_random, self.fixed_task, override)
        self.task = task
        self.layout = layout
        self.agent_pos = int(agent_pos)
        self.n_done = 0
        self.t = 0
        self.visited = np.zeros(N_COLOURS, dtype=bool)
        self.success = False
        self.done = False
        return self._obs(), self._info()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move, then apply the enter-a-colour rule and the time limit."""
        if self.done:
            raise RuntimeError("step() called after the episode ended; call reset() first")
        action = int(action)
        if not 0 <= action < N_ACTIONS:
            raise ValueError(f"action must be in 0..{N_ACTIONS - 1}, got {action}")
        nxt = int(NEXT_CELL[self.agent_pos, action])
        code = int(self.layout[nxt])
        reward, terminated = 0.0, False
        if nxt != self.agent_pos and code != WALL:
            self.agent_pos = nxt
            if code != EMPTY:  # entered a colour cell
                colour = code - 1
                self.visited[colour] = True
                if colour == self.task[self.n_done]:
                    self.n_done += 1
                    if self.n_done == len(self.task):
                        self.success, terminated, reward = True, True, 1.0
                else:
                    terminated = True
        self.t += 1
        truncated = not terminated and self.t >= MAX_STEPS
        self.done = terminated or truncated
        return self._obs(), reward, terminated, truncated, self._info()

    def render(self) -> np.ndarray | str | None:
        """``rgb_array``: ``uint8[112, 112, 3]`` (16 px per cell); ``ansi``: a text grid."""
        if self.render_mode == "rgb_array":
            return _render_rgb(self.layout, self.agent_pos, self.visited)
        if self.render_mode == "ansi":
            return _render_ansi(self.layout, self.agent_pos, self.task, self.n_done, self.t)
        return None

    # -- helpers -----------------------------------------------------------------------

    @property
    def target_colour(self) -> int:
        """The next colour to enter, or -1 once the task is complete."""
        return -1 if self.n_done >= len(self.task) else self.task[self.n_done]

    def _obs(self) -> np.ndarray:
        return encode_observation(self.layout, self.agent_pos)

    def _info(self) -> dict[str, Any]:
        target = self.target_colour
        return {
            "subgoal": -1 if target < 0 else target // 2,
            "target_colour": target,
            "n_done": self.n_done,
            "completed_subgoals": self.n_done // 2,
            "visited": self.visited.copy(),
            "is_success": self.success,
            "t": self.t,
            "agent_pos": self.agent_pos,
        }


# ------------------------------------------------------------------------ batched env
