"""ant-pinpad on paper: the 4 x 4 cell grid, tasks, layouts, shortest paths, observations.

Everything about ant-pinpad that needs no physics, so reading ant data, planning paths
and drawing trajectories do not import MuJoCo. The arena's ``G x G = 4 x 4`` cells have
side :data:`CELL_SIZE` and are indexed ``cell = row * 4 + col`` with ``x`` along ``col``;
a layout is a ``uint8[16]`` array of cell codes (:data:`ANT_EMPTY`, ``1 + colour``,
:data:`ANT_WALL`) with 4 colours and 1 wall cell. The MuJoCo model is built in
:mod:`irl_lens.envs.ant_arena`, stepped in :mod:`irl_lens.envs.ant_batch`; the rules are
written out in :mod:`irl_lens.envs.ant`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from irl_lens.envs.pinpad import ANT_N_COLOURS, Task, TaskSpec, parse_task

__all__ = [
    "ANT_EMPTY",
    "ANT_GRID_SIZE",
    "ANT_MAX_STEPS",
    "ANT_N_CELLS",
    "ANT_N_WALLS",
    "ANT_OBS_DIM",
    "ANT_POST_TASK",
    "ANT_PRETRAIN_TASKS",
    "ANT_WALL",
    "CELL_SIZE",
    "DIRECTIONS",
    "TILE_RGBA",
    "ant_observations",
    "cell_centres",
    "cell_of",
    "direction_map",
    "is_ant_solvable",
    "parse_ant_task",
    "sample_ant_layout",
    "symlog",
]

ANT_GRID_SIZE = 4
"""Side length G of the ant arena in cells."""
ANT_N_CELLS = ANT_GRID_SIZE * ANT_GRID_SIZE
ANT_N_WALLS = 1
ANT_MAX_STEPS = 500
"""Time limit T (steps of 0.05 s)."""
ANT_EMPTY = 0
ANT_WALL = ANT_N_COLOURS + 1
"""Cell codes: 0 empty, ``1 + c`` colour ``c``, 5 wall (as in the gridworld, 1 + O for walls)."""
CELL_SIZE = 2.5
"""Cell side in metres. A three-colour task's path is ~8.7 moves on average (p90 13), about
22 m, which the expert walks in ~12 s (T = 25 s). With 1.5 m cells the same expert recipe
reached success 0.368 / 0.224 (pretraining tasks / 0-1-2-3, 500 episodes each); with 2.0 m
cells 0.444 / 0.300: fewer episodes end in the wall (0.19 -> 0.11) or a wrong colour (0.18
-> 0.12), while timeouts rise (0.06 -> 0.12). The 0.7-torque expert trained in 2.0 m cells
ended 0.07 of its episodes by drifting sideways off the grid; the same weights, not
retrained, succeed 0.790 / 0.716 in 2.0 m cells, 0.870 / 0.796 in 2.25 m and 0.908 / 0.860
in 2.5 m (500 episodes each, eval seeds 11 / 12), with fewer endings of every kind,
timeouts included (0.062 -> 0.024)."""
ANT_OBS_DIM = 41
"""Width of the observation (see :func:`ant_observations`)."""

TILE_RGBA = (
    (0.90, 0.20, 0.20, 1.0),
    (0.20, 0.45, 0.90, 1.0),
    (0.95, 0.80, 0.15, 1.0),
    (0.60, 0.25, 0.75, 1.0),
)
"""RGBA of the floor tile of each colour 0..3 (the MuJoCo arena and the top-down figure)."""

DIRECTIONS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.int64)
"""``(d_col, d_row)`` per direction index: 0 east, 1 north, 2 west, 3 south."""


# -- tasks ---------------------------------------------------------------------------------


def _t(spec: str) -> Task:
    return tuple(int(c) for c in spec.split("-"))


ANT_PRETRAIN_TASKS: tuple[Task, ...] = tuple(
    _t(s)
    for s in (
        "0-3-2", "1-0-3", "2-1-0", "3-2-1", "0-2-0", "0-2-1", "0-3-1", "1-0-2",
        "1-3-1", "1-3-2", "2-0-2", "2-0-3", "2-1-3", "3-1-0", "3-1-3", "3-2-0",
    )
)  # fmt: skip
"""The 16 pretraining tasks of Table A2. No task has colour 1 right after colour 0."""

ANT_POST_TASK: Task = (0, 1, 2, 3)
"""The post-training task 0-1-2-3 (contains the unseen transition 0 -> 1)."""


def parse_ant_task(spec: TaskSpec) -> Task:
    """:func:`~irl_lens.envs.pinpad.parse_task` for the ant: colours 0..3, ``post`` = 0-1-2-3."""
    if isinstance(spec, str) and spec.strip().lower() == "post":
        return ANT_POST_TASK
    return parse_task(spec, n_colours=ANT_N_COLOURS)


# -- cells ---------------------------------------------------------------------------------


def cell_centres(cell_size: float = CELL_SIZE) -> np.ndarray:
    """``float64[16, 2]`` world (x, y) of each cell centre; cell = row * 4 + col, x along col."""
    idx = np.arange(ANT_N_CELLS)
    rc = np.stack([idx % ANT_GRID_SIZE, idx // ANT_GRID_SIZE], axis=1)
    return (rc + 0.5) * cell_size - ANT_GRID_SIZE * cell_size / 2


def cell_of(xy: np.ndarray, cell_size: float = CELL_SIZE) -> np.ndarray:
    """Cell index of world positions ``[..., 2]`` (clipped to the arena)."""
    rc = np.floor((xy + ANT_GRID_SIZE * cell_size / 2) / cell_size).astype(np.int64)
    rc = np.clip(rc, 0, ANT_GRID_SIZE - 1)
    return rc[..., 1] * ANT_GRID_SIZE + rc[..., 0]


# -- layouts and shortest paths -------------------------------------------------------------


def _neighbours(cell: int) -> list[tuple[int, int]]:
    """(direction index, neighbour cell) pairs inside the grid."""
    col, row = cell % ANT_GRID_SIZE, cell // ANT_GRID_SIZE
    out = []
    for d, (dc, dr) in enumerate(DIRECTIONS):
        c, r = col + dc, row + dr
        if 0 <= c < ANT_GRID_SIZE and 0 <= r < ANT_GRID_SIZE:
            out.append((d, r * ANT_GRID_SIZE + c))
    return out


_NEIGHBOURS = [_neighbours(c) for c in range(ANT_N_CELLS)]


def direction_map(layout: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid-level shortest paths to colour ``target`` avoiding the wall and other colours.

    Returns ``(direction int64[16], distance int64[16])``: for each cell, the direction
    index (0 east, 1 north, 2 west, 3 south) of the first move of a shortest path to the
    target cell, or -1 (the target itself, or no path); distance in moves (-1 = no path).
    Ties go to the lowest direction index, so the map is deterministic.
    """
    layout = np.asarray(layout)
    goal = int(np.flatnonzero(layout == 1 + target)[0])
    dist = np.full(ANT_N_CELLS, -1, dtype=np.int64)
    dist[goal] = 0
    frontier = [goal]
    while frontier:  # BFS from the goal through free cells
        nxt = []
        for cell in frontier:
            for _, nb in _NEIGHBOURS[cell]:
                if dist[nb] == -1 and layout[nb] == ANT_EMPTY:
                    dist[nb] = dist[cell] + 1
                    nxt.append(nb)
        frontier = nxt
    reached = dist.copy()  # BFS result: blocked cells must not borrow each other's distance
    direction = np.full(ANT_N_CELLS, -1, dtype=np.int64)
    for cell in range(ANT_N_CELLS):
        if cell == goal:
            continue
        best = None
        for d, nb in _NEIGHBOURS[cell]:
            if reached[nb] >= 0 and (best is None or reached[nb] < best[1]):
                best = (d, reached[nb])
        if best is not None:
            direction[cell] = best[0]
            if reached[cell] == -1:  # a blocked cell (e.g. the colour just entered)
                dist[cell] = best[1] + 1
    return direction, dist


def is_ant_solvable(layout: np.ndarray, start: int, task: Sequence[int]) -> bool:
    """Whether each task segment has a path avoiding the wall and all other colours."""
    pos = int(start)
    for colour in task:
        _, dist = direction_map(layout, int(colour))
        if dist[pos] < 0:
            return False
        pos = int(np.flatnonzero(layout == 1 + colour)[0])
    return True


def sample_ant_layout(rng: np.random.Generator, task: Sequence[int]) -> tuple[np.ndarray, int]:
    """A random solvable layout: ``(uint8[16] cell codes, start cell)``.

    Draws 4 + 1 + 1 distinct cells (colours 0..3, the wall, the start) and redraws until
    :func:`is_ant_solvable`.
    """
    while True:
        cells = rng.choice(ANT_N_CELLS, ANT_N_COLOURS + ANT_N_WALLS + 1, replace=False)
        layout = np.zeros(ANT_N_CELLS, dtype=np.uint8)
        layout[cells[:ANT_N_COLOURS]] = 1 + np.arange(ANT_N_COLOURS)
        layout[cells[ANT_N_COLOURS]] = ANT_WALL
        start = int(cells[-1])
        if is_ant_solvable(layout, start, task):
            return layout, start


# -- observations ---------------------------------------------------------------------------


def symlog(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def ant_observations(
    qpos: np.ndarray, qvel: np.ndarray, layout: np.ndarray, cell_size: float = CELL_SIZE
) -> np.ndarray:
    """Observations ``float32[n, 41]`` from ``qpos [n, 15]``, ``qvel [n, 14]``, ``layout [n, 16]``
    (see :mod:`irl_lens.envs.ant` for the slices)."""
    n = len(qpos)
    side = ANT_GRID_SIZE * cell_size
    xy = qpos[:, :2]
    centres = cell_centres(cell_size)
    codes = layout.astype(np.int64)
    # cell index of each object: colours 1..4 then the wall, found per row
    obj_cells = np.empty((n, ANT_N_COLOURS + 1), dtype=np.int64)
    for k, code in enumerate([*range(1, ANT_N_COLOURS + 1), ANT_WALL]):
        obj_cells[:, k] = np.argmax(codes == code, axis=1)
    rel = (centres[obj_cells] - xy[:, None, :]) / side  # [n, 5, 2]
    cell = cell_of(xy, cell_size)
    local = (xy - centres[cell]) / (cell_size / 2)
    obs = np.concatenate(
        [
            symlog(np.concatenate([qpos[:, 2:], qvel], axis=1)),
            xy / (side / 2),
            rel.reshape(n, -1),
            local,
        ],
        axis=1,
    )
    return obs.astype(np.float32)
