"""The gridworld-pinpad expert: exact shortest paths by dynamic programming.

The paper's expert (Appendix A) walks a shortest path to the next colour of the task,
choosing uniformly among equally short moves, and with probability ``eps`` takes a
uniformly random *non-terminating* action instead (``eps = 0`` by default; pretraining
tolerates ``eps`` up to 0.2). Its data has no rewards and no subgoal labels, but the
subgoal it is pursuing is well defined: the pair of the colour it is heading to.

How it works:

1. :func:`distance_maps` computes, once per episode, the BFS distance from every cell
   to every colour's cell with walls and *all other colours* as obstacles (walking
   through another colour would end the episode). This is the DP value function of
   "reach colour c"; it does not change during an episode because layouts are static.
2. Each step, the expert looks up the distances of the four cells its moves lead to and
   picks uniformly among the moves reaching the smallest one. That is exactly a
   shortest-path move: the shortest path from ``p`` is ``1 + min`` over its free
   neighbours, and no-op moves (off-grid, into a wall) are never minimal.
3. With probability ``eps`` it instead picks uniformly among the *non-terminating*
   actions: those that neither enter a colour other than the current target nor step
   into an empty cell from which the target cannot be reached (such a cell, reached
   across the colour the agent stands on, may be a pocket whose every exit is a wrong
   colour, so entering it would force a failure later). No-ops into walls or the grid
   edge are allowed, and so is entering the target itself. Hence an expert with any
   ``eps`` never fails a task; it can only run out of time.

:class:`GridExpert` does this for a whole
:class:`~irl_lens.envs.gridworld_batch.BatchedGridPinpad` at once, caching distance maps
per episode (keyed on the env's ``episode_uid``, so resets are noticed without any
bookkeeping by the caller). :func:`expert_action` is the
same policy for one state, e.g. for a :class:`~irl_lens.envs.gridworld.GridPinpadEnv`.

:func:`benchmark` times the batched env and expert data generation.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from jaxtyping import Bool, Float, Int16, Int64, UInt8

from irl_lens.envs.gridworld_batch import BatchedGridPinpad
from irl_lens.envs.gridworld_layout import EMPTY, N_ACTIONS, N_CELLS, NEXT_CELL, WALL
from irl_lens.envs.pinpad import GRID_SIZE, N_COLOURS

logger = logging.getLogger(__name__)

__all__ = [
    "UNREACHABLE",
    "GridExpert",
    "benchmark",
    "distance_maps",
    "expert_action",
    "expert_action_probs",
    "shortest_moves",
]

UNREACHABLE = 10_000
"""Distance given to obstacle cells and cells from which a colour cannot be reached."""

# ---------------------------------------------------------------- bitboard BFS helpers
# A set of cells is a 49-bit mask in a uint64 (bit i = cell i). One BFS layer for all
# envs and colours is then a handful of shifts and ANDs over a [n, 8] uint64 array.

_FULL = np.uint64((1 << N_CELLS) - 1)
_NOT_COL0 = np.uint64(int(_FULL) & ~sum(1 << (r * GRID_SIZE) for r in range(GRID_SIZE)))
_NOT_LAST_COL = np.uint64(
    int(_FULL) & ~sum(1 << (r * GRID_SIZE + GRID_SIZE - 1) for r in range(GRID_SIZE))
)
_ROW = np.uint64(GRID_SIZE)
_ONE = np.uint64(1)
_DIST_BITS = 6  # distances < 64 > N_CELLS


def _expand(reached: np.ndarray) -> np.ndarray:
    """Cells one move away from ``reached`` (as bitmasks), never wrapping around rows."""
    return (
        ((reached << _ROW) & _FULL)  # down (row + 1)
        | (reached >> _ROW)  # up
        | ((reached << _ONE) & _NOT_COL0)  # right: a bit leaving col 6 lands in col 0
        | ((reached >> _ONE) & _NOT_LAST_COL)  # left: a bit leaving col 0 lands in col 6
    )


def _pack_cells(mask: np.ndarray) -> np.ndarray:
    """bool[..., 49] -> uint64[...] bitmask (bit i = cell i)."""
    padded = np.zeros((*mask.shape[:-1], 64), dtype=bool)
    padded[..., :N_CELLS] = mask
    return np.packbits(padded, axis=-1, bitorder="little").view("<u8")[..., 0]


def distance_maps(layouts: UInt8[np.ndarray, "n 49"]) -> Int16[np.ndarray, "n 8 49"]:
    """BFS distance from every cell to every colour, for a batch of layouts.

    ``out[i, c, cell]`` is the number of moves from ``cell`` to colour ``c``'s cell in
    layout ``i``, walking only over empty cells (the target cell itself is 0). Walls,
    the other colour cells, and cells that cannot reach ``c`` get :data:`UNREACHABLE`.
    The agent's cell is empty in a layout, so it is covered.

    Vectorised breadth-first search: ``reached_k`` is the set of cells within distance
    ``k`` (a bitmask per env and colour), and ``reached_{k+1} = reached_k | (neighbours
    of reached_k & empty cells)``, until nothing changes. A cell's distance is the
    number of layers that do not yet contain it; those counts are accumulated in
    bit-sliced form (6 bit planes, one ripple-carry add per layer) and unpacked once.
    """
    layouts = np.asarray(layouts)
    if layouts.ndim != 2 or layouts.shape[1] != N_CELLS:
        raise ValueError(f"layouts must have shape [n, {N_CELLS}], got {layouts.shape}")
    n = len(layouts)
    codes = np.arange(1, N_COLOURS + 1, dtype=layouts.dtype)
    is_colour = layouts[:, None, :] == codes[None, :, None]  # [n, 8, 49]
    if not is_colour.any(-1).all():
        raise ValueError("every layout must contain every colour")
    colour_cell = is_colour.argmax(-1).astype(np.uint64)  # [n, 8]
    free = _pack_cells(layouts == EMPTY)[:, None]  # [n, 1] passable cells
    reached = _ONE << colour_cell  # [n, 8] distance-0 layer: the colour's own cell
    planes = [np.zeros_like(reached) for _ in range(_DIST_BITS)]  # count of layers missed
    for _ in range(N_CELLS):
        # add 1 to the counter of every cell not yet reached (bit-sliced ripple carry)
        carry = ~reached & _FULL
        for plane in planes:
            plane ^= carry
            carry &= ~plane  # carry survives where the plane flipped 1 -> 0
        grown = reached | (_expand(reached) & free)
        if np.array_equal(grown, reached):
            break
        reached = grown
    stacked = np.stack([reached, *planes])  # [1 + bits, n, 8]
    bits = np.unpackbits(
        stacked.astype("<u8").view(np.uint8).reshape(*stacked.shape, 8),
        axis=-1,
        bitorder="little",
    )[..., :N_CELLS]  # [1 + bits, n, 8, 49]
    dist = np.zeros((n, N_COLOURS, N_CELLS), dtype=np.int16)
    for j in range(_DIST_BITS):
        dist += bits[1 + j].astype(np.int16) << j
    dist[bits[0] == 0] = UNREACHABLE
    return dist


# ---------------------------------------------------------------------- action choice


TIE_BREAKS = ("random", "first")
"""How the expert chooses among equally short moves (see :class:`GridExpert`)."""


def check_tie_break(tie_break: str) -> str:
    if tie_break not in TIE_BREAKS:
        allowed = ", ".join(TIE_BREAKS)
        raise ValueError(f"tie_break={tie_break!r} is not allowed; use one of {allowed}")
    return tie_break


def _lowest_good_move(good: Bool[np.ndarray, "n 4"]) -> Int64[np.ndarray, " n"]:
    """The ``tie_break="first"`` rule: the lowest-numbered shortest-path move."""
    return good.argmax(axis=1)


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps (probability of a random action) must be in [0, 1], got {eps}")
    return eps


def shortest_moves(
    dest_dist: Int16[np.ndarray, "... 4"],
) -> tuple[Bool[np.ndarray, "... 4"], Int16[np.ndarray, "..."]]:
    """``(moves, best)``: the moves whose destination is closest to the target, and that
    distance (the shortest path is ``1 + best``; ``best >= UNREACHABLE``: none exists).

    ``dest_dist[..., a]`` is the target distance of the cell move ``a`` leads to. No-op
    moves (off-grid, into a wall) are never minimal, so these are the shortest-path moves.
    """
    best = dest_dist.min(axis=-1)
    return dest_dist == best[..., None], best


def _move_masks(
    dist_to_target: Int16[np.ndarray, "n 49"],
    layouts: UInt8[np.ndarray, "n 49"],
    agent_pos: Int64[np.ndarray, " n"],
    target: Int64[np.ndarray, " n"],
) -> tuple[Bool[np.ndarray, "n 4"], Bool[np.ndarray, "n 4"]]:
    """``(good, explore_ok)``: the shortest-path moves, and the moves exploration may take."""
    n = len(agent_pos)
    rows = np.arange(n)[:, None]
    dest = NEXT_CELL[agent_pos]  # [n, 4] cell each move leads to (ignoring walls)
    dest_dist = dist_to_target[rows, dest]  # [n, 4]; walls/other colours are UNREACHABLE
    shortest, best = shortest_moves(dest_dist)
    reachable = best[:, None] < UNREACHABLE  # [n, 1]; False only in hand-built dead ends
    dest_code = layouts[rows, dest]  # [n, 4]
    stays = (dest == agent_pos[:, None]) | (dest_code == WALL)  # no-op moves
    # "never enter a wrong colour": no-ops, empty cells, or the target itself
    no_wrong_entry = (
        stays | (dest_code == EMPTY) | (dest_code.astype(np.int64) - 1 == target[:, None])
    )
    # exploration must also keep the target reachable: an empty cell cut off from the
    # target (behind the colour the agent stands on) can be a pocket whose every exit is
    # a wrong colour, which would force a failure a few steps later
    explore_ok = np.where(reachable, stays | (dest_dist < UNREACHABLE), no_wrong_entry)
    good = np.where(reachable, shortest, no_wrong_entry)
    return good, explore_ok


def _choose_actions(
    dist_to_target: Int16[np.ndarray, "n 49"],
    layouts: UInt8[np.ndarray, "n 49"],
    agent_pos: Int64[np.ndarray, " n"],
    target: Int64[np.ndarray, " n"],
    eps: float,
    rng: np.random.Generator,
    tie_break: str = "random",
) -> Int64[np.ndarray, " n"]:
    """Shared by :class:`GridExpert` and :func:`expert_action` so both act identically."""
    n = len(agent_pos)
    good, explore_ok = _move_masks(dist_to_target, layouts, agent_pos, target)
    score = rng.random((n, N_ACTIONS))  # drawn for both rules: same rng stream either way
    if tie_break == "first":
        actions = _lowest_good_move(good)
    else:
        actions = np.where(good, score, -1.0).argmax(axis=1)  # uniform among the good moves
    if eps > 0.0:
        explore = rng.random(n) < eps
        score = rng.random((n, N_ACTIONS))
        random_safe = np.where(explore_ok, score, -1.0).argmax(axis=1)
        actions = np.where(explore, random_safe, actions)
    return actions.astype(np.int64)


def expert_action_probs(
    dist_to_target: Int16[np.ndarray, "n 49"],
    layouts: UInt8[np.ndarray, "n 49"],
    agent_pos: Int64[np.ndarray, " n"],
    target: Int64[np.ndarray, " n"],
    eps: float = 0.0,
    tie_break: str = "random",
) -> Float[np.ndarray, "n 4"]:
    """The expert's exact action distribution in each state (what :func:`_choose_actions` samples).

    ``(1 - eps)`` spread evenly over the shortest-path moves (all on the lowest-numbered
    one for ``tie_break="first"``) plus ``eps`` spread evenly over the moves exploration
    may take. Its row-wise maximum, averaged over a dataset, is the best accuracy any
    model *that knows the task* can reach: the known-task ceiling.
    """
    eps = _check_eps(eps)
    tie_break = check_tie_break(tie_break)
    good, explore_ok = _move_masks(dist_to_target, layouts, agent_pos, target)
    if tie_break == "first":
        good = np.eye(N_ACTIONS, dtype=bool)[_lowest_good_move(good)]
    p_good = good / good.sum(axis=1, keepdims=True)
    p_explore = explore_ok / np.maximum(explore_ok.sum(axis=1, keepdims=True), 1)
    return (1.0 - eps) * p_good + eps * p_explore


def expert_action(
    layout: UInt8[np.ndarray, "49"],
    agent_pos: int,
    target_colour: int,
    rng: np.random.Generator,
    eps: float = 0.0,
) -> int:
    """The expert's action in one state (recomputes the distance map; fine for one env).

    Args:
        layout: ``uint8[49]`` cell codes.
        agent_pos: agent cell.
        target_colour: the colour to reach next (``info["target_colour"]``), 0..7.
        rng: source of the tie-breaking and exploration randomness.
        eps: probability of a uniformly random non-terminating action instead.
    """
    eps = _check_eps(eps)
    target_colour = int(target_colour)
    if not 0 <= target_colour < N_COLOURS:
        raise ValueError(f"target_colour must be in 0..{N_COLOURS - 1}, got {target_colour}")
    layouts = np.asarray(layout, dtype=np.uint8)[None]
    dist = distance_maps(layouts)[:, target_colour]  # [1, 49]
    pos = np.array([int(agent_pos)], dtype=np.int64)
    target = np.array([target_colour], dtype=np.int64)
    return int(_choose_actions(dist, layouts, pos, target, eps, rng)[0])


class GridExpert:
    """Shortest-path expert for a :class:`~irl_lens.envs.gridworld_batch.BatchedGridPinpad`.

    Distance maps ``[n_envs, 8, 49]`` are cached and recomputed only for envs whose
    ``episode_uid`` changed since the last call (i.e. that were reset), so the caller
    just alternates ``env.step(expert.act(env, rng))`` and ``env.reset_done()``. One
    expert may serve one env at a time; switching envs simply refreshes the cache.

    Args:
        eps: probability, per step and env, of a uniformly random non-terminating action
            instead of a shortest-path move. Must be in ``[0, 1]``.
        tie_break: how to choose among equally short moves: ``random`` (uniformly, the
            paper's expert) or ``first`` (always the lowest-numbered one: a deterministic
            expert, the gridworld analogue of the ant expert's Gaussian mean).

    Example::

        env, expert = BatchedGridPinpad(4096), GridExpert(eps=0.0)
        rng = np.random.default_rng(0)
        env.reset(seed=0)
        while not env.done.all():
            env.step(expert.act(env, rng))
    """

    def __init__(self, eps: float = 0.0, tie_break: str = "random"):
        self.eps = _check_eps(eps)
        self.tie_break = check_tie_break(tie_break)
        self._dist: np.ndarray | None = None  # [n_envs, 8, 49] int16
        self._uid: np.ndarray | None = None  # [n_envs] episode_uid the maps belong to

    def refresh(self, env: BatchedGridPinpad) -> None:
        """Recompute distance maps for envs with a new episode (called by :meth:`act`)."""
        uid = env.episode_uid
        if self._dist is None or self._uid is None or self._uid.shape != uid.shape:
            self._dist = np.full((env.n_envs, N_COLOURS, N_CELLS), UNREACHABLE, np.int16)
            self._uid = np.full(env.n_envs, -1, dtype=np.int64)
        stale = np.flatnonzero((uid != self._uid) & (uid >= 0))
        if stale.size:
            self._dist[stale] = distance_maps(env.layout[stale])
            self._uid[stale] = uid[stale]

    def act(self, env: BatchedGridPinpad, rng: np.random.Generator) -> Int64[np.ndarray, " n_envs"]:
        """Expert actions for every env (arbitrary but valid for envs that are done)."""
        self.refresh(env)
        assert self._dist is not None
        target = env.target_colour()
        target_row = np.maximum(target, 0)  # finished envs: any row, their action is ignored
        dist = self._dist[np.arange(env.n_envs), target_row]  # [n_envs, 49]
        return _choose_actions(
            dist, env.layout, env.agent_pos, target, self.eps, rng, self.tie_break
        )


def benchmark(n_envs: int = 4096, seconds: float = 5.0) -> dict[str, float]:
    """Time the batched env (random actions) and expert data generation; log and return.

    Returns ``{"env_steps_per_s": ..., "expert_episodes_per_s": ...,
    "expert_steps_per_s": ...}``. Run with
    ``python -c "import logging; logging.basicConfig(level=logging.INFO);
    from irl_lens.envs.expert import benchmark; benchmark()"``.
    """
    rng = np.random.default_rng(0)
    env = BatchedGridPinpad(n_envs)
    env.reset(seed=0)
    actions = rng.integers(0, N_ACTIONS, size=(64, n_envs))
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds / 2:
        for k in range(64):
            env.step(actions[k])
            env.done[:] = False  # keep every env live; we only time step()
        steps += 64 * n_envs
    rate = steps / (time.perf_counter() - start)
    logger.info("batched step: %.3g env steps/s (n_envs=%d, random actions)", rate, n_envs)

    env = BatchedGridPinpad(n_envs)
    expert = GridExpert(eps=0.0)
    env.reset(seed=1)
    episodes = steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds / 2:
        _, _, terminated, truncated, _ = env.step(expert.act(env, rng))
        episodes += int((terminated | truncated).sum())
        steps += n_envs
        env.reset_done()
    elapsed = time.perf_counter() - start
    logger.info(
        "expert data: %.0f episodes/s, %.3g env steps/s (n_envs=%d, pretraining tasks)",
        episodes / elapsed,
        steps / elapsed,
        n_envs,
    )
    return {
        "env_steps_per_s": rate,
        "expert_episodes_per_s": episodes / elapsed,
        "expert_steps_per_s": steps / elapsed,
    }
