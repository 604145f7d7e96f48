"""Unit tests for the shortest-path expert, against a plain BFS written here.

The BFS below shares no code with :mod:`irl_lens.envs.expert` (a queue over (row, col)),
so agreement checks the vectorised bitboard distance maps and the action choice.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from irl_lens.data.generate import generate_gridworld
from irl_lens.envs import (
    EMPTY,
    MAX_STEPS,
    POST_TASK,
    PRETRAIN_TASKS,
    UNREACHABLE,
    WALL,
    BatchedGridPinpad,
    GridExpert,
    GridPinpadEnv,
    distance_maps,
    expert_action,
    sample_layout,
    validate_layout,
)
from irl_lens.envs.expert import expert_action_probs
from irl_lens.train.evaluate import known_task_ceiling


def bfs_distances(layout: np.ndarray, colour: int) -> dict[int, int]:
    """Distance from every reachable cell to ``colour``'s cell, over empty cells only."""
    target = int(np.flatnonzero(layout == 1 + colour)[0])
    dist, queue = {target: 0}, deque([target])
    while queue:
        cell = queue.popleft()
        r, c = divmod(cell, 7)
        for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            nb = rr * 7 + cc
            if 0 <= rr < 7 and 0 <= cc < 7 and nb not in dist and layout[nb] == EMPTY:
                dist[nb] = dist[cell] + 1
                queue.append(nb)
    return dist


def segment_length(layout: np.ndarray, start: int, colour: int) -> int:
    """Shortest number of moves from ``start`` (empty or a colour cell) into ``colour``."""
    target = int(np.flatnonzero(layout == 1 + colour)[0])
    dist = bfs_distances(layout, colour)
    r, c = divmod(start, 7)
    best = None
    for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
        nb = rr * 7 + cc
        if 0 <= rr < 7 and 0 <= cc < 7 and (nb == target or nb in dist):
            d = 1 + (0 if nb == target else dist[nb])
            best = d if best is None else min(best, d)
    assert best is not None, "sampled layouts are solvable"
    return best


def optimal_length(layout: np.ndarray, agent: int, task) -> int:
    total, pos = 0, agent
    for colour in task:
        total += segment_length(layout, pos, colour)
        pos = int(np.flatnonzero(layout == 1 + colour)[0])
    return total


def test_distance_maps_match_bfs():
    rng = np.random.default_rng(0)
    layouts = np.stack([sample_layout(rng, POST_TASK)[0] for _ in range(24)])
    maps = distance_maps(layouts)
    assert maps.shape == (24, 8, 49)
    for i, layout in enumerate(layouts):
        for colour in range(8):
            expected = np.full(49, UNREACHABLE)
            for cell, d in bfs_distances(layout, colour).items():
                expected[cell] = d
            assert np.array_equal(maps[i, colour], expected), (i, colour)


@pytest.mark.parametrize("eps", [0.0])
def test_expert_is_optimal_batched(eps):
    """eps=0: every task solved in the sum of the segments' shortest-path lengths.

    20 episodes per pretraining task plus 20 of the post task, two rounds each (the
    second round checks the distance-map cache is refreshed after ``reset_done``).
    """
    tasks = [t for t in (*PRETRAIN_TASKS, POST_TASK) for _ in range(20)]
    env = BatchedGridPinpad(len(tasks))
    expert = GridExpert(eps=eps)
    rng = np.random.default_rng(0)
    env.reset(seed=0, tasks=tasks)
    for _round in range(2):
        start_layout, start_pos = env.layout.copy(), env.agent_pos.copy()
        while not env.done.all():
            env.step(expert.act(env, rng))
        for i, task in enumerate(env.tasks):
            best = optimal_length(start_layout[i], int(start_pos[i]), task)
            if best <= MAX_STEPS:
                assert env.success[i] and env.t[i] == best, (i, task)
            else:  # (rare, post task only) the optimal path exceeds the time limit
                assert not env.success[i] and env.t[i] == MAX_STEPS
        assert env.success.mean() > 0.95
        env.reset_envs(np.ones(env.n_envs, dtype=bool), tasks=tasks)


def test_expert_action_single_env_optimal():
    rng = np.random.default_rng(1)
    for seed in range(10):
        env = GridPinpadEnv(task=None if seed % 2 else "post")
        _, info = env.reset(seed=seed)
        best = optimal_length(env.layout, env.agent_pos, env.task)
        terminated = truncated = False
        while not (terminated or truncated):
            action = expert_action(env.layout, env.agent_pos, info["target_colour"], rng)
            _, reward, terminated, truncated, info = env.step(action)
        if best <= MAX_STEPS:
            assert info["is_success"] and reward == 1.0 and info["t"] == best


@pytest.mark.parametrize("eps", [0.2, 0.5, 1.0])
def test_exploration_never_fails_the_task(eps):
    """Random exploration actions never enter a wrong colour."""
    env = BatchedGridPinpad(256)
    expert = GridExpert(eps=eps)
    rng = np.random.default_rng(2)
    env.reset(seed=3)
    finished = succeeded = 0
    for _ in range(2 * MAX_STEPS):
        _, _, terminated, truncated, info = env.step(expert.act(env, rng))
        assert not (terminated & ~info["is_success"]).any()
        finished += int((terminated | truncated).sum())
        succeeded += int(terminated.sum())
        env.reset_done()
    assert finished > 0
    if eps <= 0.2:  # pretraining data regime: still a near-perfect expert
        assert succeeded / finished > 0.95


def test_ties_broken_uniformly_and_noop_never_chosen():
    # agent in the top-left corner, colour 0 diagonal from it: right and down both optimal
    layout = np.zeros(49, dtype=np.uint8)
    layout[8] = 1  # colour 0 at (1, 1)
    layout[[40, 41, 42, 43, 44, 45, 46]] = [2, 3, 4, 5, 6, 7, 8]
    layout[[30, 31, 32, 33]] = WALL
    layout, agent = validate_layout(layout, 0)
    n = 4000
    env = BatchedGridPinpad(n)
    env.set_state(np.stack([layout] * n), [agent] * n, ["0-1"] * n)
    actions = GridExpert().act(env, np.random.default_rng(3))
    counts = np.bincount(actions, minlength=4)
    assert counts[0] == 0 and counts[3] == 0  # up/left are no-ops at the corner
    assert abs(counts[1] / n - 0.5) < 0.05  # right vs down: uniform


def test_first_tie_break_is_deterministic_lowest_move_and_its_ceiling_is_one():
    # same corner state: right (1) and down (2) tie; "first" always takes 1
    layout = np.zeros(49, dtype=np.uint8)
    layout[8] = 1
    layout[[40, 41, 42, 43, 44, 45, 46]] = [2, 3, 4, 5, 6, 7, 8]
    layout[[30, 31, 32, 33]] = WALL
    layout, agent = validate_layout(layout, 0)
    env = BatchedGridPinpad(256)
    env.set_state(np.stack([layout] * 256), [agent] * 256, ["0-1"] * 256)
    actions = GridExpert(tie_break="first").act(env, np.random.default_rng(3))
    assert (actions == 1).all()
    dist = distance_maps(layout[None])[:, 0]
    probs = expert_action_probs(dist, layout[None], np.array([agent]), np.array([0]),
                                tie_break="first")  # fmt: skip
    np.testing.assert_array_equal(probs, [[0.0, 1.0, 0.0, 0.0]])
    uniform = expert_action_probs(dist, layout[None], np.array([agent]), np.array([0]))
    np.testing.assert_array_equal(uniform, [[0.0, 0.5, 0.5, 0.0]])
    with pytest.raises(ValueError, match="tie_break='last'"):
        GridExpert(tie_break="last")


def test_first_tie_break_dataset_is_solved_and_has_ceiling_one():
    ds = generate_gridworld(300, split="clean", seed=1, tie_break="first", progress=False)
    assert ds.meta["tie_break"] == "first" and ds.meta["success_rate"] == 1.0
    np.testing.assert_array_equal(known_task_ceiling(ds), 1.0)
    random = generate_gridworld(300, split="clean", seed=1, progress=False)
    assert known_task_ceiling(random).mean() < 0.95  # ties are common under the paper's expert
    np.testing.assert_array_equal(ds.lengths, random.lengths)  # both take shortest paths


def test_unreachable_target_acts_safely():
    # colour 0 walled in: the expert cannot reach it, but must never enter another colour
    text = """
    . # 1 . . . .
    # 0 # . . . .
    . # . . . A .
    2 3 4 5 6 7 .
    . . . . . . .
    . . . . . . .
    . . . . . . .
    """
    codes = {"#": WALL, ".": EMPTY, "A": EMPTY}
    chars = text.split()
    layout = np.array([codes.get(ch, 1 + int(ch) if ch.isdigit() else 0) for ch in chars])
    layout, agent = validate_layout(layout.astype(np.uint8), chars.index("A"))
    env = BatchedGridPinpad(64)
    env.set_state(np.stack([layout] * 64), [agent] * 64, ["0-1"] * 64)
    expert, rng = GridExpert(), np.random.default_rng(4)
    while not env.done.all():
        _, _, terminated, _, _ = env.step(expert.act(env, rng))
        assert not terminated.any()
    assert (env.t == MAX_STEPS).all()


def test_eps_validation():
    for eps in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            GridExpert(eps=eps)
        with pytest.raises(ValueError, match="eps"):
            expert_action(np.zeros(49, np.uint8), 0, 0, np.random.default_rng(), eps=eps)
    with pytest.raises(ValueError, match="target_colour"):
        layout, agent = sample_layout(np.random.default_rng(0), (0, 1))
        expert_action(layout, agent, 8, np.random.default_rng())
