"""gridworld-pinpad: layouts, the Gymnasium env and a batched NumPy env with identical rules.

The environment of Kobayashi et al. 2025, Appendix A: on a 7 x 7 grid with 8 coloured
cells and 4 walls, step onto the colours of a task in order. The layout (colours, walls,
agent start) is resampled every episode.

Three layers, from cheap to convenient:

* **Layouts** are ``uint8[49]`` arrays of *cell codes* (:data:`EMPTY`, ``1 + colour``,
  :data:`WALL`), indexed by ``cell = row * 7 + col``; the agent position is a separate
  cell index. ``(layout, agent_pos)`` is the compact state models read directly;
  :func:`encode_observation` expands it into the paper's one-hot observation.
* :class:`GridPinpadEnv` is the single-episode ``gymnasium.Env`` (registered as
  ``irl_lens/GridPinpad-v0``).
* :class:`BatchedGridPinpad` steps thousands of episodes at once with vectorised NumPy
  and is what data generation and RL use. Seeded the same way, env ``i`` of the batch
  replays exactly the episode ``GridPinpadEnv(task).reset(seed=seeds[i])`` produces
  (tests check this step by step).

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
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from jaxtyping import Bool, Float32, Int64, UInt8

from irl_lens.envs.pinpad import (
    GRID_SIZE,
    MAX_STEPS,
    N_COLOURS,
    N_WALLS,
    PRETRAIN_TASKS,
    Task,
    TaskSpec,
    format_task,
    parse_task,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ACTION_NAMES",
    "AGENT_CHANNEL",
    "DOWN",
    "EMPTY",
    "LEFT",
    "N_ACTIONS",
    "N_CELLS",
    "N_CELL_CODES",
    "NEXT_CELL",
    "OBS_CHANNELS",
    "RIGHT",
    "UP",
    "WALL",
    "BatchedGridPinpad",
    "GridPinpadEnv",
    "colour_code",
    "decode_observation",
    "encode_observation",
    "encode_observations",
    "is_solvable",
    "sample_layout",
    "sample_task",
    "validate_layout",
]

# --------------------------------------------------------------------------- constants

N_CELLS = GRID_SIZE * GRID_SIZE
"""Number of cells, 49. A cell is indexed ``row * GRID_SIZE + col``."""

EMPTY = 0
"""Cell code of an empty cell (the agent's start cell is empty too)."""

WALL = 1 + N_COLOURS
"""Cell code of a wall cell, 9. Colour ``c`` has cell code ``1 + c`` (1..8)."""

N_CELL_CODES = WALL + 1
"""Number of distinct cell codes, 10: empty, 8 colours, wall."""

UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3
N_ACTIONS = 4
ACTION_NAMES = ("up", "right", "down", "left")
_DELTAS = ((-1, 0), (0, 1), (1, 0), (0, -1))  # (d_row, d_col) per action

OBS_CHANNELS = N_COLOURS + N_WALLS + 1
"""Channels per cell of the one-hot observation, 13: 8 colours, 4 walls, agent."""

AGENT_CHANNEL = N_COLOURS + N_WALLS
"""Observation channel (12) marking the agent's cell."""


def _next_cell_table() -> np.ndarray:
    table = np.empty((N_CELLS, N_ACTIONS), dtype=np.int64)
    for cell in range(N_CELLS):
        row, col = divmod(cell, GRID_SIZE)
        for action, (dr, dc) in enumerate(_DELTAS):
            r, c = row + dr, col + dc
            inside = 0 <= r < GRID_SIZE and 0 <= c < GRID_SIZE
            table[cell, action] = r * GRID_SIZE + c if inside else cell
    table.flags.writeable = False
    return table


NEXT_CELL: Int64[np.ndarray, "49 4"] = _next_cell_table()
"""``NEXT_CELL[cell, action]``: the cell a move leads to ignoring walls; off-grid -> same cell.

Walls are then handled by looking the destination up in the layout."""

# Plain-Python neighbour lists (no self loops) for the small graph searches below, which
# run per layout inside Python loops where NumPy's per-call overhead would dominate.
_NEIGHBOURS: tuple[tuple[int, ...], ...] = tuple(
    tuple(sorted({int(n) for n in NEXT_CELL[cell]} - {cell})) for cell in range(N_CELLS)
)


def colour_code(colour: int) -> int:
    """Cell code of a colour: ``1 + colour``."""
    return 1 + int(colour)


# -------------------------------------------------------------------------- observations


def encode_observations(
    layouts: UInt8[np.ndarray, "*batch 49"], agent_pos: Int64[np.ndarray, "*batch"]
) -> UInt8[np.ndarray, "*batch 7 7 13"]:
    """One-hot observations for any batch shape.

    Channel ``c`` (0..7) marks colour ``c``; channel ``8 + k`` marks the ``k``-th wall
    cell in raster (row-major) order, so the four walls are told apart as the paper's
    ``G*G*(W+O+1)`` = 637 size implies; channel 12 marks the agent. Empty cells are all
    zero apart from the agent channel. Layouts must be valid (4 walls, see
    :func:`validate_layout`).
    """
    layouts = np.asarray(layouts)
    agent_pos = np.asarray(agent_pos)
    lead = layouts.shape[:-1]
    if layouts.shape[-1] != N_CELLS or agent_pos.shape != lead:
        raise ValueError(
            f"layouts must have shape [..., {N_CELLS}] and agent_pos the leading shape; "
            f"got {layouts.shape} and {agent_pos.shape}"
        )
    wall = layouts == WALL
    wall_rank = np.cumsum(wall, axis=-1, dtype=np.int16) - 1  # [*batch, 49]
    # channel of the object in each cell; empty cells -> -1 (matches no channel)
    channel = np.where(wall, N_COLOURS + wall_rank, layouts.astype(np.int16) - 1)
    obs = (channel[..., None] == np.arange(OBS_CHANNELS, dtype=np.int16)).astype(np.uint8)
    flat = obs.reshape(-1, N_CELLS, OBS_CHANNELS)  # [batch, 49, 13], a view
    flat[np.arange(flat.shape[0]), agent_pos.reshape(-1), AGENT_CHANNEL] = 1
    return obs.reshape(*lead, GRID_SIZE, GRID_SIZE, OBS_CHANNELS)


def encode_observation(
    layout: UInt8[np.ndarray, "49"], agent_pos: int
) -> UInt8[np.ndarray, "7 7 13"]:
    """One-hot observation ``uint8[7, 7, 13]`` of one layout; see :func:`encode_observations`."""
    return encode_observations(np.asarray(layout), np.asarray(agent_pos, dtype=np.int64))


def decode_observation(
    obs: UInt8[np.ndarray, "*batch 7 7 13"],
) -> tuple[UInt8[np.ndarray, "*batch 49"], Int64[np.ndarray, "*batch"]]:
    """Invert :func:`encode_observations`: one-hot observations -> ``(layouts, agent_pos)``.

    Works for one observation (returns a ``[49]`` layout and a 0-d ``agent_pos`` array)
    or any batch. Raises ``ValueError`` if a cell holds two objects or there is not
    exactly one agent.
    """
    obs = np.asarray(obs)
    if obs.shape[-3:] != (GRID_SIZE, GRID_SIZE, OBS_CHANNELS):
        raise ValueError(f"observation must end in shape (7, 7, 13), got {obs.shape}")
    flat = obs.reshape(*obs.shape[:-3], N_CELLS, OBS_CHANNELS)  # [*batch, 49, 13]
    objects = flat[..., :AGENT_CHANNEL].astype(np.int64)
    if (objects.sum(-1) > 1).any():
        raise ValueError("invalid observation: a cell holds more than one colour/wall")
    if (flat[..., AGENT_CHANNEL].astype(np.int64).sum(-1) != 1).any():
        raise ValueError("invalid observation: there must be exactly one agent cell")
    layout = np.zeros(flat.shape[:-1], dtype=np.uint8)
    is_colour = objects[..., :N_COLOURS].any(-1)
    layout[is_colour] = 1 + objects[..., :N_COLOURS].argmax(-1)[is_colour]
    layout[objects[..., N_COLOURS:].any(-1)] = WALL
    agent_pos = flat[..., AGENT_CHANNEL].argmax(-1).astype(np.int64)
    return layout, agent_pos


# ----------------------------------------------------------------------------- layouts


def validate_layout(layout: np.ndarray, agent_pos: int) -> tuple[np.ndarray, int]:
    """Check a hand-built layout and return it as ``(uint8[49] copy, int agent_pos)``.

    A valid layout has exactly one cell of each colour, exactly :data:`N_WALLS` walls,
    every other cell empty, and the agent on an empty cell. Solvability is *not*
    required (tests build dead ends on purpose). Raises ``ValueError`` otherwise.
    """
    arr = np.asarray(layout)
    if arr.shape != (N_CELLS,):
        raise ValueError(f"layout must have shape ({N_CELLS},), got {arr.shape}")
    if arr.min() < 0 or arr.max() >= N_CELL_CODES:
        raise ValueError(f"layout cell codes must lie in 0..{N_CELL_CODES - 1}")
    arr = arr.astype(np.uint8)
    counts = np.bincount(arr, minlength=N_CELL_CODES)
    for c in range(N_COLOURS):
        if counts[colour_code(c)] != 1:
            raise ValueError(
                f"layout must hold colour {c} exactly once, found {counts[colour_code(c)]}"
            )
    if counts[WALL] != N_WALLS:
        raise ValueError(f"layout must hold exactly {N_WALLS} walls, found {counts[WALL]}")
    pos = int(agent_pos)
    if not 0 <= pos < N_CELLS:
        raise ValueError(f"agent_pos must lie in 0..{N_CELLS - 1}, got {pos}")
    if arr[pos] != EMPTY:
        raise ValueError(f"agent_pos {pos} must be an empty cell, holds code {arr[pos]}")
    return arr.copy(), pos


def _solvable_cells(colour_cells: Sequence[int], blocked: set[int], agent: int, task: Task) -> bool:
    """Solvability test on cell lists; ``blocked`` = walls and all colour cells.

    Label the connected components of the free cells (empty cells, which include the
    agent start). A segment ``pos -> colour c`` can be walked without entering another
    colour iff ``pos`` is next to ``c``'s cell, or some free component touches both. One
    flood fill per layout instead of one search per segment keeps resets cheap.
    """
    component = [-1] * N_CELLS
    n_comp = 0
    for start in range(N_CELLS):
        if component[start] != -1 or start in blocked:
            continue
        component[start] = n_comp
        stack = [start]
        while stack:
            cell = stack.pop()
            for nb in _NEIGHBOURS[cell]:
                if component[nb] == -1 and nb not in blocked:
                    component[nb] = n_comp
                    stack.append(nb)
        n_comp += 1

    def touching(cell: int) -> set[int]:
        comps = {component[nb] for nb in _NEIGHBOURS[cell] if component[nb] != -1}
        if component[cell] != -1:
            comps.add(component[cell])
        return comps

    pos = agent
    for colour in task:
        target = colour_cells[colour]
        if target not in _NEIGHBOURS[pos] and not (touching(pos) & touching(target)):
            return False
        pos = target
    return True


def is_solvable(layout: UInt8[np.ndarray, "49"], agent_pos: int, task: Sequence[int]) -> bool:
    """Whether every segment of ``task`` can be walked without failing.

    Segment ``k`` goes from the previous position (the agent start, then the cell of
    ``task[k-1]``) to the cell of ``task[k]``, moving in 4 directions with walls **and
    all other colour cells** as obstacles (entering another colour would end the
    episode); the target cell itself is enterable. The time limit is not considered.
    """
    cells = np.asarray(layout).tolist()
    colour_cells = [0] * N_COLOURS
    blocked = set()
    for i, code in enumerate(cells):
        if code != EMPTY:
            blocked.add(i)
        if 1 <= code <= N_COLOURS:
            colour_cells[code - 1] = i
    return _solvable_cells(colour_cells, blocked, int(agent_pos), tuple(task))


def sample_layout(rng: np.random.Generator, task: Sequence[int]) -> tuple[np.ndarray, int]:
    """Sample a random solvable layout for ``task``; returns ``(uint8[49] layout, agent_pos)``.

    Draw ``8 + 4 + 1`` distinct cells uniformly (``rng.choice(49, 13, replace=False)``):
    the first 8 get colours 0..7, the next 4 walls, the last is the agent start. If the
    task cannot be completed on that layout (:func:`is_solvable`), draw again. The
    result is uniform over solvable layouts, and all randomness comes from ``rng``.
    """
    task = tuple(task)
    n_obj = N_COLOURS + N_WALLS
    while True:
        cells = rng.choice(N_CELLS, n_obj + 1, replace=False).tolist()
        if _solvable_cells(cells[:N_COLOURS], set(cells[:n_obj]), cells[n_obj], task):
            break
    layout = np.zeros(N_CELLS, dtype=np.uint8)
    layout[cells[:N_COLOURS]] = np.arange(1, N_COLOURS + 1, dtype=np.uint8)
    layout[cells[N_COLOURS:n_obj]] = WALL
    return layout, cells[n_obj]


def sample_task(rng: np.random.Generator) -> Task:
    """Draw one of the 16 :data:`~irl_lens.envs.pinpad.PRETRAIN_TASKS` uniformly."""
    return PRETRAIN_TASKS[int(rng.integers(len(PRETRAIN_TASKS)))]


def _draw_episode(
    rng: np.random.Generator, fixed_task: Task | None, task_override: Task | None
) -> tuple[Task, np.ndarray, int]:
    """The one place episode randomness is drawn, shared by both envs so they agree.

    Order: the task first (only if neither an override nor a fixed task is given), then
    the layout.
    """
    if task_override is not None:
        task = task_override
    elif fixed_task is not None:
        task = fixed_task
    else:
        task = sample_task(rng)
    layout, agent_pos = sample_layout(rng, task)
    return task, layout, agent_pos


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
    :func:`decode_observation` recovers ``(layout, agent_pos)``.

    ## Rewards

    | Event                                   | Reward |
    |-----------------------------------------|--------|
    | entering the last colour of the task    | 1      |
    | anything else                           | 0      |

    ## Starting State

    Task: fixed by ``task=...``; if ``task is None`` drawn uniformly from the 16
    pretraining tasks (Table A1) with ``self.np_random`` at every reset;
    ``reset(options={"task": "0-1-2-3"})`` overrides it for one episode. Layout and start
    from :func:`sample_layout` with ``self.np_random`` (task first, then layout).
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
            task, layout, agent_pos = _draw_episode(self.np_random, self.fixed_task, override)
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


class BatchedGridPinpad:
    """Many gridworld-pinpad episodes stepped at once with vectorised NumPy.

    Same rules, same randomness, same info as :class:`GridPinpadEnv`, but no
    observations are built unless asked for: the state *is* ``(layout, agent_pos)``, which
    models embed directly (:meth:`observations` gives the one-hot form).

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
            seeds = [int(seed) + i for i in range(n)] if np.ndim(seed) == 0 else list(seed)
            if len(seeds) != n:
                raise ValueError(f"need one seed per env ({n}), got {len(seeds)}")
            self.rngs = [seeding.np_random(int(s))[0] for s in seeds]
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
            task, new_layouts[j], new_pos[j] = _draw_episode(
                self.rngs[i], self.fixed_task, override
            )
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
        """One-hot observations of the current states (as :class:`GridPinpadEnv` returns)."""
        return encode_observations(self.layout, self.agent_pos)
