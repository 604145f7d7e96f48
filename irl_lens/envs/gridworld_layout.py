"""gridworld-pinpad layouts: cell codes, moves, one-hot observations and layout sampling.

The environment of Kobayashi et al. 2025, Appendix A: on a 7 x 7 grid with 8 coloured
cells and 4 walls, step onto the colours of a task in order. The layout (colours, walls,
agent start) is resampled every episode.

**Layouts** are ``uint8[49]`` arrays of *cell codes* (:data:`EMPTY`, ``1 + colour``,
:data:`WALL`), indexed by ``cell = row * 7 + col``; the agent position is a separate cell
index. ``(layout, agent_pos)`` is the compact state models read directly;
:func:`encode_observation` expands it into the paper's one-hot observation.

This module holds what both envs share so that they agree exactly: the constants, the
move table :data:`NEXT_CELL`, the observation encoding, layout validation, the
solvability test and :func:`draw_episode`, the one place episode randomness is drawn. The
envs are :class:`~irl_lens.envs.gridworld.GridPinpadEnv` (Gymnasium, one episode) and
:class:`~irl_lens.envs.gridworld_batch.BatchedGridPinpad` (vectorised NumPy); the rules
are written out in :mod:`irl_lens.envs.gridworld`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jaxtyping import Int64, UInt8

from irl_lens.envs.pinpad import (
    GRID_SIZE,
    N_COLOURS,
    N_WALLS,
    PRETRAIN_TASKS,
    Task,
)

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
    "colour_code",
    "decode_observation",
    "draw_episode",
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


def draw_episode(
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
