"""Unit tests for ant-pinpad: arena geometry, rules, determinism, observations and paths.

Rules are checked one at a time on a hand-drawn map (see :func:`parse_map`) by teleporting
the torso with :meth:`BatchedAntPinpad.set_torso` and stepping with zero torques (one step,
0.05 s, moves the torso only millimetres, so the teleport decides the cell). Expected
values (cell centres, observation slices, shortest paths) are computed here from first
principles, not with the module's own helpers. Small env counts and step counts keep the
file at a few seconds on two cores.
"""

# ruff: noqa: E402  (MUJOCO_GL must be set before the first `import mujoco`)
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; ant.py defaults to it as well

import subprocess
import sys
import warnings
from collections import deque
from pathlib import Path

import gymnasium
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from irl_lens.envs.ant import AntPinpadEnv
from irl_lens.envs.ant_arena import WALL_HEIGHT, build_arena
from irl_lens.envs.ant_batch import END_REASONS, BatchedAntPinpad
from irl_lens.envs.ant_figure import trajectory_figure
from irl_lens.envs.ant_layout import (
    ANT_MAX_STEPS,
    ANT_OBS_DIM,
    ANT_POST_TASK,
    ANT_PRETRAIN_TASKS,
    CELL_SIZE,
    cell_centres,
    cell_of,
    direction_map,
    is_ant_solvable,
    sample_ant_layout,
)

ANT_ID = "irl_lens/AntPinpad-v0"
G = 4
HALF = G * CELL_SIZE / 2  # the arena spans [-HALF, HALF]^2 (5.0 m with 2.5 m cells)
EMPTY_CODE, WALL_CODE = 0, 5
EAST, NORTH, WEST, SOUTH = 0, 1, 2, 3
STEP = {EAST: (1, 0), NORTH: (0, 1), WEST: (-1, 0), SOUTH: (0, -1)}  # (d_col, d_row)


def centre(cell: int, cell_size: float = CELL_SIZE) -> np.ndarray:
    """World (x, y) of a cell's centre, written out: cell = row * 4 + col, x along col."""
    col, row = cell % G, cell // G
    half = G * cell_size / 2
    return np.array([-half + (col + 0.5) * cell_size, -half + (row + 0.5) * cell_size])


def parse_map(text: str) -> tuple[np.ndarray, int]:
    """Top row first (y grows upwards): ``'.'`` empty, ``'0'..'3'`` colour, ``'#'`` wall,
    ``'A'`` start -> ``(uint8[16] layout, start cell)``."""
    rows = [line.split() for line in text.strip().splitlines()]
    assert len(rows) == G and all(len(r) == G for r in rows), rows
    layout = np.zeros(G * G, dtype=np.uint8)
    start = -1
    for r, chars in enumerate(rows):
        row = G - 1 - r
        for col, ch in enumerate(chars):
            cell = row * G + col
            if ch == "#":
                layout[cell] = WALL_CODE
            elif ch.isdigit():
                layout[cell] = 1 + int(ch)
            elif ch == "A":
                start = cell
    return layout, start


def bfs_distances(layout: np.ndarray, source: int) -> dict[int, int]:
    """Moves from ``source`` to every cell reachable through empty cells (the last move may
    enter a non-empty cell, which is then not expanded)."""
    dist = {source: 0}
    queue = deque([source])
    while queue:
        cell = queue.popleft()
        if cell != source and layout[cell] != EMPTY_CODE:
            continue
        col, row = cell % G, cell // G
        for dc, dr in STEP.values():
            c, r = col + dc, row + dr
            nb = r * G + c
            if 0 <= c < G and 0 <= r < G and nb not in dist:
                dist[nb] = dist[cell] + 1
                queue.append(nb)
    return dist


def solvable(layout: np.ndarray, start: int, task) -> bool:
    """Each segment of ``task`` reaches its colour without touching the wall or another colour."""
    pos = start
    for colour in task:
        goal = int(np.flatnonzero(layout == 1 + colour)[0])
        if goal not in bfs_distances(layout, pos):
            return False
        pos = goal
    return True


def symlog(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


# -- cells and arena geometry ---------------------------------------------------------------


def test_cell_centres_and_cell_of_agree():
    centres = cell_centres()
    assert centres.shape == (16, 2)
    for cell in range(16):
        np.testing.assert_allclose(centres[cell], centre(cell))
    # x grows with the column, y with the row
    assert centres[1, 0] - centres[0, 0] == pytest.approx(CELL_SIZE)
    assert centres[4, 1] - centres[0, 1] == pytest.approx(CELL_SIZE)
    assert centres[1, 1] == centres[0, 1] and centres[4, 0] == centres[0, 0]
    np.testing.assert_array_equal(cell_of(centres), np.arange(16))
    # any point strictly inside a cell maps back to it
    offsets = np.random.default_rng(0).uniform(-0.49, 0.49, (16, 5, 2)) * CELL_SIZE
    np.testing.assert_array_equal(
        cell_of(centres[:, None] + offsets), np.broadcast_to(np.arange(16)[:, None], (16, 5))
    )
    points = np.array([[-2.99, -2.99], [2.99, 2.99], [0.01, -0.01], [-0.01, 0.01], [0.3, -1.2]])
    np.testing.assert_array_equal(cell_of(points), [0, 15, 6, 9, 6])
    np.testing.assert_array_equal(cell_of(np.array([[10.0, 10.0], [-10.0, 10.0]])), [15, 12])
    # another cell size
    np.testing.assert_allclose(cell_centres(1.0)[5], centre(5, 1.0))
    np.testing.assert_array_equal(cell_of(cell_centres(1.0), 1.0), np.arange(16))


@pytest.mark.parametrize("cell_size", [CELL_SIZE, 1.0])
def test_boundary_walls_enclose_the_grid(cell_size):
    model = build_arena(cell_size).compile()
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    names = [model.geom(g).name for g in range(model.ngeom)]
    boundary = [g for g, name in enumerate(names) if name.startswith("boundary")]
    assert len(boundary) == 4
    torso = model.geom("torso_geom").id
    for g in boundary:
        collide = (model.geom_contype[g] & model.geom_conaffinity[torso]) | (
            model.geom_contype[torso] & model.geom_conaffinity[g]
        )
        assert collide, names[g]
    half = G * cell_size / 2
    geomid = np.zeros(1, dtype=np.int32)
    angles = np.arange(8) * np.pi / 4 + 0.1  # off the diagonals, so no ray ends in a corner
    for cell in range(16):
        for a in angles:
            start = np.array([*centre(cell, cell_size), 0.1])
            vec = np.array([np.cos(a), np.sin(a), 0.0])
            dist = mujoco.mj_ray(model, data, start, vec, None, True, -1, geomid)
            # the ray leaves the square [-half, half]^2 exactly on a boundary wall's inner face
            steps = [(np.sign(v) * half - p) / v for p, v in zip(start[:2], vec[:2], strict=True)]
            to_edge = min(steps)
            assert names[geomid[0]].startswith("boundary"), (cell, a, names[geomid[0]])
            assert dist == pytest.approx(to_edge, abs=1e-9)
        # the walls are low: a ray above WALL_HEIGHT escapes
        above = np.array([*centre(cell, cell_size), WALL_HEIGHT + 0.05])
        assert mujoco.mj_ray(model, data, above, np.array([1.0, 0, 0]), None, True, -1, geomid) < 0
    # tiles and the wall cell start hidden below the floor in the compiled arena
    for name in ["tile_0", "tile_1", "tile_2", "tile_3", "wall_0"]:
        assert model.body(name).pos[2] < -1


LAYOUT_A = """
. . . .
. # . .
2 3 . .
A 0 1 .
"""
LAYOUT_B = """
3 . . A
. . . #
. . 1 .
. 2 0 .
"""


def test_set_episode_places_tiles_and_wall_per_env():
    env = BatchedAntPinpad(2)
    layouts = [parse_map(LAYOUT_A), parse_map(LAYOUT_B)]
    for i, (layout, start) in enumerate(layouts):
        env.set_episode(i, "0-1-2", layout, start, seed=i)
    for i, (layout, start) in enumerate(layouts):
        model = env._models[i]
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        for c in range(4):
            cell = int(np.flatnonzero(layout == 1 + c)[0])
            body = model.body(f"tile_{c}").id
            np.testing.assert_allclose(model.body_pos[body][:2], centre(cell))
            assert 0 <= model.body_pos[body][2] < 0.01
            np.testing.assert_allclose(data.xpos[body][:2], centre(cell))  # kinematics see it
        wall_cell = int(np.flatnonzero(layout == WALL_CODE)[0])
        wall = model.body("wall_0").id
        np.testing.assert_allclose(model.body_pos[wall][:2], centre(wall_cell))
        geom = model.body_geomadr[wall]
        assert data.geom_xpos[geom][2] - model.geom_size[geom][2] == pytest.approx(0.0)
        assert data.geom_xpos[geom][2] + model.geom_size[geom][2] == pytest.approx(WALL_HEIGHT)
        np.testing.assert_allclose(model.geom_size[geom][:2], CELL_SIZE / 2)  # fills its cell
        assert env.cell[i] == start and env.layout[i].tolist() == layout.tolist()
    # the shared compiled model keeps everything hidden: each env edits its own copy
    assert env.model.body("tile_0").pos[2] < -1 and env.model.body("wall_0").pos[2] < -1
    other = BatchedAntPinpad(1)
    assert other._models[0].body("tile_0").pos[2] < -1


def test_tiles_do_not_collide_and_the_wall_does():
    env = BatchedAntPinpad(1)
    layout, start = parse_map(LAYOUT_A)
    env.set_episode(0, "0-1", layout, start)
    model = env._models[0]
    tiles = [model.body_geomadr[model.body(f"tile_{c}").id] for c in range(4)]
    wall = model.body_geomadr[model.body("wall_0").id]
    for g in tiles:
        assert model.geom_contype[g] == 0 and model.geom_conaffinity[g] == 0
    assert model.geom_contype[wall] and model.geom_conaffinity[wall]

    def contact_geoms(cell: int, z: float) -> set[int]:
        data = mujoco.MjData(model)
        data.qpos[:] = env.qpos[0]
        data.qpos[:3] = [*centre(cell), z]
        mujoco.mj_forward(model, data)
        return {int(g) for k in range(data.ncon) for g in data.contact[k].geom}

    # torso sphere (radius 0.25) dipping into the wall box (top at 0.3): a contact
    assert int(wall) in contact_geoms(9, 0.4)
    # torso sphere pressed into the floor through colour 0's tile: the floor only
    touched = contact_geoms(1, 0.2)
    assert model.geom("floor").id in touched
    assert not touched & {int(g) for g in tiles}


# -- rules ----------------------------------------------------------------------------------


def ant_env(task: str, text: str = LAYOUT_A, n_envs: int = 1) -> BatchedAntPinpad:
    env = BatchedAntPinpad(n_envs)
    layout, start = parse_map(text)
    for i in range(n_envs):
        env.set_episode(i, task, layout, start, seed=i)
    return env


def teleport_and_step(env, cell=None, offset=(0.0, 0.0), z=None, xy=None):
    """Put env 0's torso at ``xy`` (or a cell centre + offset), then one zero-torque step."""
    if xy is None and cell is not None:
        xy = centre(cell) + np.asarray(offset)
    if xy is not None:
        env.set_torso(0, xy[0], xy[1], z)
    _, reward, terminated, truncated, info = env.step(np.zeros((env.n_envs, 8)))
    return float(reward[0]), bool(terminated[0]), bool(truncated[0]), info


# In LAYOUT_A: start 0, colour 0 at cell 1, colour 1 at 2, colour 2 at 4, colour 3 at 5,
# the wall at 9. A move is a cell (teleport to its centre), (cell, (dx, dy)) or None (stay).
# (name, task, moves, expected (reward, terminated, n_done, subgoal, is_success, cell))
RULE_SCENARIOS = [
    ("empty_cell", "0-1", [8], (0.0, False, 0, 0, False, 8)),
    ("enter_next_advances", "0-1-3", [1], (0.0, False, 1, 1, False, 1)),
    (
        "stay_in_colour_no_retrigger",
        "0-1-3",
        [1, None, (1, (0.4, -0.4))],
        (0.0, False, 1, 1, False, 1),
    ),
    ("second_colour_advances", "0-1-3", [1, 2], (0.0, False, 2, 3, False, 2)),
    ("success", "0-1", [1, 2], (1.0, True, 2, -1, True, 2)),
    ("success_three", "0-1-3", [1, 2, 5], (1.0, True, 3, -1, True, 5)),
    ("wrong_colour", "0-1", [4], (0.0, True, 0, 0, False, 4)),
    ("colour_out_of_order", "0-1", [2], (0.0, True, 0, 0, False, 2)),
    ("reenter_done_colour_fails", "0-1-3", [1, 0, 1], (0.0, True, 1, 1, False, 1)),
    ("reenter_after_repeat_target", "0-1-0", [1, 2, 6, 2], (0.0, True, 2, 0, False, 2)),
    ("wall_cell", "0-1", [9], (0.0, True, 0, 0, False, 9)),
    ("wall_cell_after_progress", "0-1-3", [1, 9], (0.0, True, 1, 1, False, 9)),
]


@pytest.mark.parametrize(
    ("name", "task", "moves", "expected"),
    [pytest.param(name, t, m, e, id=name) for name, t, m, e in RULE_SCENARIOS],
)
def test_rules(name, task, moves, expected):
    env = ant_env(task)
    for k, move in enumerate(moves):
        cell, offset = (move, (0.0, 0.0)) if not isinstance(move, tuple) else move
        reward, terminated, truncated, info = teleport_and_step(env, cell, offset)
        if k < len(moves) - 1:
            assert not terminated and reward == 0.0, (k, move)
    assert not truncated
    assert (reward, terminated, int(info["n_done"][0])) == expected[:3]
    assert int(info["subgoal"][0]) == int(info["target_colour"][0]) == expected[3]
    assert bool(info["is_success"][0]) == expected[4]
    assert int(info["cell"][0]) == expected[5] == int(cell_of(env.xy[0]))
    assert env.done[0] == terminated
    reason = END_REASONS[int(info["end_reason"][0])]
    if not terminated:
        assert reason == "running"
    else:
        assert reason == (
            "success" if expected[4] else "wall" if "wall" in name else "wrong_colour"
        )


def test_repeat_colour_task_succeeds_on_return():
    env = ant_env("0-1-0")
    for cell, n_done in [(1, 1), (0, 1), (2, 2)]:
        reward, terminated, _, info = teleport_and_step(env, cell)
        assert (reward, terminated, int(info["n_done"][0])) == (0.0, False, n_done)
    reward, terminated, _, info = teleport_and_step(env, 1)  # straight back into colour 0
    assert (reward, terminated, bool(info["is_success"][0])) == (1.0, True, True)
    np.testing.assert_array_equal(env.visited[0], [True, True, False, False])


@pytest.mark.parametrize(
    ("z", "ends"), [(1.5, True), (0.95, False)], ids=["above_1.0", "below_1.0"]
)
def test_torso_too_high_ends(z, ends):
    env = ant_env("0-1")
    reward, terminated, truncated, info = teleport_and_step(env, 8, z=z)
    assert (reward, terminated, truncated) == (0.0, ends, False)
    assert (env.qpos[0, 2] > 1.0) == ends
    assert END_REASONS[int(info["end_reason"][0])] == ("too_high" if ends else "running")
    assert int(info["n_done"][0]) == 0 and not info["is_success"][0]


@pytest.mark.parametrize(
    ("z", "ends"), [(0.15, True), (0.26, False)], ids=["below_0.2", "above_0.2"]
)
def test_torso_too_low_ends(z, ends):
    # With contacts the floor pushes a 0.25 m torso sphere back above 0.2 within a step, so
    # the lower bound is reachable only by tunnelling; switch contacts off in this env's model
    # to let gravity take the torso through 0.2 and test the rule itself.
    env = ant_env("0-1")
    shared_flags = env.model.opt.disableflags
    env._models[0].opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_CONTACT
    assert env.model.opt.disableflags == shared_flags  # env 0's model is its own copy
    reward, terminated, truncated, info = teleport_and_step(env, 8, z=z)
    assert (env.qpos[0, 2] < 0.2) == ends
    assert END_REASONS[int(info["end_reason"][0])] == ("too_low" if ends else "running")
    assert (reward, terminated, truncated) == (0.0, ends, False)


def test_leaving_the_arena_ends():
    env = ant_env("0-1")
    reward, terminated, _, info = teleport_and_step(env, xy=(HALF + 0.6, centre(7)[1]))
    assert (reward, terminated) == (0.0, True)
    assert int(info["cell"][0]) == 7  # clipped to the arena, an empty cell: only `outside` fired
    assert END_REASONS[int(info["end_reason"][0])] == "wall"


def test_frozen_after_termination():
    env = ant_env("0-1", n_envs=2)
    reward, terminated, _, _ = teleport_and_step(env, 4)  # env 0 enters a wrong colour
    assert terminated and not env.done[1]
    frozen = {k: getattr(env, k)[0].copy() for k in ["qpos", "qvel", "t", "n_done", "cell"]}
    moving = env.qpos[1].copy()
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 2, 8))
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        assert reward[0] == 0.0 and not terminated[0] and not truncated[0]
    for k, v in frozen.items():
        np.testing.assert_array_equal(getattr(env, k)[0], v, err_msg=k)
    assert env.done[0] and not info["is_success"][0]
    assert np.abs(env.qpos[1] - moving).max() > 1e-3  # env 1 kept moving beside it
    assert int(info["t"][1]) == 4
    assert END_REASONS[int(info["end_reason"][0])] == "wrong_colour"  # kept while frozen
    env.reset_envs(np.array([0]))
    assert env.end_reason[0] == 0 and not env.done[0]


def test_frozen_after_success_keeps_reward_zero():
    env = ant_env("0-1")
    teleport_and_step(env, 1)
    reward, terminated, _, _ = teleport_and_step(env, 2)
    assert (reward, terminated) == (1.0, True)
    before = env.qpos[0].copy()
    reward, terminated, truncated, info = teleport_and_step(env)
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert bool(info["is_success"][0]) and int(info["subgoal"][0]) == -1
    np.testing.assert_array_equal(env.qpos[0], before)


def test_truncation_at_time_limit():
    env = ant_env("0-1")
    env.t[0] = ANT_MAX_STEPS - 2
    reward, terminated, truncated, info = teleport_and_step(env)
    assert (terminated, truncated, int(info["t"][0])) == (False, False, ANT_MAX_STEPS - 1)
    reward, terminated, truncated, info = teleport_and_step(env)
    assert (reward, terminated, truncated, int(info["t"][0])) == (0.0, False, True, ANT_MAX_STEPS)
    assert env.done[0] and END_REASONS[int(info["end_reason"][0])] == "timeout"
    reward, terminated, truncated, info = teleport_and_step(env)
    assert (reward, terminated, truncated, int(info["t"][0])) == (0.0, False, False, ANT_MAX_STEPS)


def test_success_on_the_last_step_is_termination_not_truncation():
    env = ant_env("0-1")
    teleport_and_step(env, 1)
    env.t[0] = ANT_MAX_STEPS - 1
    reward, terminated, truncated, _ = teleport_and_step(env, 2)
    assert (reward, terminated, truncated) == (1.0, True, False)


def test_gym_env_step_after_end_raises():
    env = AntPinpadEnv(task="0-1")
    layout, start = parse_map(LAYOUT_A)
    env.reset(seed=0, options={"layout": layout, "start": start})
    env.core.set_torso(0, *centre(4))
    _, reward, terminated, truncated, info = env.step(np.zeros(8, dtype=np.float32))
    assert (reward, terminated, truncated, info["subgoal"]) == (0.0, True, False, 0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(8, dtype=np.float32))


# -- determinism ----------------------------------------------------------------------------


def rollout_obs(seed: int, n_envs: int = 3, n_steps: int = 20) -> tuple[np.ndarray, np.ndarray]:
    env = BatchedAntPinpad(n_envs)
    obs, _ = env.reset(seed=seed)
    actions = np.random.default_rng(123).uniform(-1, 1, (n_steps, n_envs, 8))
    out = [obs]
    for a in actions:
        out.append(env.step(a)[0])
        env.reset_done()
    return np.stack(out), env.layout.copy()


def test_same_seed_same_rollout():
    obs_a, layout_a = rollout_obs(7)
    obs_b, layout_b = rollout_obs(7)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(layout_a, layout_b)
    assert np.abs(obs_a[-1] - obs_a[0]).max() > 0.01  # the ants did move
    obs_c, layout_c = rollout_obs(8)
    assert not np.array_equal(obs_a[0], obs_c[0])
    assert not np.array_equal(layout_a, layout_c)


def test_gym_env_matches_batched_env_zero():
    for seed in [0, 5]:
        env = AntPinpadEnv()
        obs, info = env.reset(seed=seed)
        batched = BatchedAntPinpad(1)
        b_obs, b_info = batched.reset(seed=seed)
        np.testing.assert_array_equal(obs, b_obs[0])
        np.testing.assert_array_equal(env.layout, batched.layout[0])
        assert env.task == batched.tasks[0] and info["subgoal"] == b_info["subgoal"][0]
        for a in np.random.default_rng(seed).uniform(-0.3, 0.3, (8, 8)).astype(np.float32):
            obs, reward, terminated, truncated, info = env.step(a)
            b_obs, b_reward, b_terminated, _, b_info = batched.step(a[None])
            np.testing.assert_array_equal(obs, b_obs[0])
            assert (reward, terminated) == (b_reward[0], b_terminated[0])
            assert info["cell"] == b_info["cell"][0] and info["t"] == b_info["t"][0]
            if terminated or truncated:
                break
    # a batched env i is seeded with seed + i
    two = BatchedAntPinpad(2)
    two_obs, _ = two.reset(seed=5)
    np.testing.assert_array_equal(two_obs[1], BatchedAntPinpad(1).reset(seed=6)[0][0])


# -- observations ---------------------------------------------------------------------------


def expected_observations(qpos, qvel, layout) -> np.ndarray:
    side = G * CELL_SIZE
    rows = []
    for q, v, lay in zip(qpos, qvel, layout, strict=True):
        xy = q[:2]
        parts = [symlog(np.concatenate([q[2:], v])), xy / HALF]
        for code in [1, 2, 3, 4, WALL_CODE]:
            parts.append((centre(int(np.flatnonzero(lay == code)[0])) - xy) / side)
        col, row = np.floor((xy + HALF) / CELL_SIZE).astype(int)
        parts.append((xy - centre(row * G + col)) / (CELL_SIZE / 2))
        rows.append(np.concatenate(parts))
    return np.array(rows)


def test_observations_match_the_state():
    env = BatchedAntPinpad(3)
    obs, _ = env.reset(seed=3)
    for a in np.random.default_rng(0).uniform(-1, 1, (4, 3, 8)):
        obs, *_ = env.step(a)
    assert obs.shape == (3, ANT_OBS_DIM) and obs.dtype == np.float32
    assert env.qpos.shape == (3, 15) and env.qvel.shape == (3, 14)
    np.testing.assert_allclose(
        obs, expected_observations(env.qpos, env.qvel, env.layout), atol=1e-6
    )
    assert np.abs(obs[:, 27:29]).max() <= 1 and np.abs(obs[:, 39:41]).max() <= 1
    assert np.abs(obs[:, 29:39]).max() <= 1
    np.testing.assert_array_equal(env.observations(), obs)


def test_observation_slices_by_hand():
    env = ant_env("0-1")
    # positions below in metres of a 2.0 m cell; every observation slice is scale-free, so
    # the arena's real cell size (CELL_SIZE) changes none of the expected values
    k = CELL_SIZE / 2.0
    env.set_torso(0, 0.4 * k, -1.6 * k)
    obs = env.observations()[0]
    np.testing.assert_allclose(obs[27:29], [0.1, -0.4], atol=1e-6)  # xy / 4
    # colour 0's cell (col 1, row 0) has centre (-1, -3); divided by the side, 8 m
    np.testing.assert_allclose(obs[29:31], [-0.175, -0.175], atol=1e-6)
    np.testing.assert_allclose(obs[31:33], [0.075, -0.175], atol=1e-6)  # colour 1 at (1, -3)
    np.testing.assert_allclose(obs[33:35], [-0.425, 0.075], atol=1e-6)  # colour 2 at (-3, -1)
    np.testing.assert_allclose(obs[35:37], [-0.175, 0.075], atol=1e-6)  # colour 3 at (-1, -1)
    np.testing.assert_allclose(obs[37:39], [-0.175, 0.325], atol=1e-6)  # wall at (-1, 1)
    # cell 6 (col 2, row 1) has centre (1, -1): (0.4 - 1) / 1 = -0.6
    np.testing.assert_allclose(obs[39:41], [-0.6, -0.6], atol=1e-6)
    np.testing.assert_allclose(obs[0], symlog(env.qpos[0, 2]), rtol=1e-6)  # torso height first
    np.testing.assert_allclose(obs[13:27], symlog(env.qvel[0]), rtol=1e-5, atol=1e-7)


# -- shortest paths and layouts -------------------------------------------------------------


def check_direction_map(layout: np.ndarray, target: int) -> None:
    direction, distance = direction_map(layout, target)
    assert direction.shape == distance.shape == (16,)
    goal = int(np.flatnonzero(layout == 1 + target)[0])
    reach = bfs_distances(layout, goal)  # grid moves are symmetric
    assert direction[goal] == -1 and distance[goal] == 0
    where = f"layout {layout.tolist()}, target {target}"
    for cell in range(16):
        if layout[cell] != EMPTY_CODE:
            continue
        if cell not in reach:
            assert direction[cell] == -1 and distance[cell] == -1, (where, cell)
            continue
        assert distance[cell] == reach[cell], (where, cell)
        pos, moves = cell, 0
        while pos != goal:
            d = int(direction[pos])
            assert d in STEP, (where, cell, pos)
            dc, dr = STEP[d]
            col, row = pos % G + dc, pos // G + dr
            assert 0 <= col < G and 0 <= row < G, (cell, pos)
            pos = row * G + col
            assert pos == goal or layout[pos] == EMPTY_CODE, (where, cell, pos)
            moves += 1
        assert moves == distance[cell], cell
    # a blocked cell (the colour just entered) first steps to a free cell on a shortest path
    for cell in range(16):
        if cell == goal or layout[cell] == EMPTY_CODE or direction[cell] < 0:
            continue
        dc, dr = STEP[int(direction[cell])]
        nb = (cell // G + dr) * G + cell % G + dc
        assert nb == goal or (layout[nb] == EMPTY_CODE and nb in reach), (where, cell, nb)
        assert distance[cell] == distance[nb] + 1


# (name, map): hand-drawn layouts for direction_map, each target colour is checked
DIRECTION_LAYOUTS = [
    (
        "open",
        """
        . . . 3
        . # . .
        1 . . 2
        . . 0 .
        """,
    ),
    (
        "detour",
        """
        . . . .
        0 # 3 .
        . 2 1 .
        . . . .
        """,
    ),
    (
        # the NW corner is boxed in by the wall and colour 2
        "enclosed_corner",
        """
        . 2 . .
        # . . 3
        . . 1 .
        . . . 0
        """,
    ),
    (
        # cell 5 ties between its free south neighbour and colour 1 to the west
        "tie_beside_colour",
        """
        . . . 3
        . . . #
        1 . . .
        0 . 2 .
        """,
    ),
]


@pytest.mark.parametrize("target", range(4))
@pytest.mark.parametrize("name", [name for name, _ in DIRECTION_LAYOUTS])
def test_direction_map_distances_are_shortest(name, target):
    layout, _ = parse_map(dict(DIRECTION_LAYOUTS)[name])
    direction, distance = direction_map(layout, target)
    assert direction.shape == distance.shape == (16,)
    assert direction.dtype == distance.dtype == np.int64
    goal = int(np.flatnonzero(layout == 1 + target)[0])
    assert direction[goal] == -1 and distance[goal] == 0
    reach = bfs_distances(layout, goal)
    free = [cell for cell in reach if layout[cell] == EMPTY_CODE]
    assert free, "a target with no free neighbour makes this case vacuous"
    for cell in free:
        assert distance[cell] == reach[cell], cell
        assert direction[cell] in STEP, cell
    # same inputs, same map (ties are broken by direction index, not by chance)
    again = direction_map(layout.copy(), target)
    np.testing.assert_array_equal(again[0], direction)
    np.testing.assert_array_equal(again[1], distance)


def test_direction_map_paths_avoid_the_wall_and_other_colours():
    for _, text in DIRECTION_LAYOUTS:
        layout, _ = parse_map(text)
        for target in range(4):
            check_direction_map(layout, target)


def test_is_ant_solvable_rejects_a_boxed_in_colour():
    # colour 0 in the SW corner behind the wall and colour 1: unreachable from anywhere
    layout, start = parse_map(
        """
        . . . 3
        . . 2 .
        1 . A .
        0 # . .
        """
    )
    assert not solvable(layout, start, (2, 0))
    assert is_ant_solvable(layout, start, (2,))
    assert not is_ant_solvable(layout, start, (2, 0))


def test_is_ant_solvable_agrees_on_simple_cases():
    layout, start = parse_map(LAYOUT_A)
    assert is_ant_solvable(layout, start, (0, 1, 3)) and solvable(layout, start, (0, 1, 3))
    # the start (cell 0) has only colours 0 and 2 as neighbours: any other first colour fails
    assert is_ant_solvable(layout, start, (2, 3)) and solvable(layout, start, (2, 3))
    assert not is_ant_solvable(layout, start, (3,)) and not solvable(layout, start, (3,))
    assert not is_ant_solvable(layout, start, (1, 0)) and not solvable(layout, start, (1, 0))


@pytest.mark.parametrize(
    "task", [*ANT_PRETRAIN_TASKS, ANT_POST_TASK], ids=lambda t: "-".join(map(str, t))
)
def test_sample_ant_layout_shape(task):
    rng = np.random.default_rng(sum(task) + 10 * len(task))
    for _ in range(5):
        layout, start = sample_ant_layout(rng, task)
        assert layout.dtype == np.uint8 and layout.shape == (16,)
        assert sorted(layout[layout > 0].tolist()) == [1, 2, 3, 4, WALL_CODE]
        assert layout[start] == EMPTY_CODE
        assert is_ant_solvable(layout, start, task)


def test_sample_ant_layout_is_solvable_for_every_table_a2_task():
    rng = np.random.default_rng(0)
    for task in [*ANT_PRETRAIN_TASKS, ANT_POST_TASK]:
        for _ in range(25):
            layout, start = sample_ant_layout(rng, task)
            assert solvable(layout, start, task), (task, layout.tolist(), start)


# -- Gymnasium contract, lazy import, figures -----------------------------------------------


def test_check_env_through_make():
    env = gymnasium.make(ANT_ID)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum) value")
        check_env(env.unwrapped)
    obs, info = env.reset(seed=0, options={"task": "post"})
    assert env.unwrapped.task == (0, 1, 2, 3) and obs.shape == (ANT_OBS_DIM,)
    layout, start = parse_map(LAYOUT_A)
    env.reset(seed=1, options={"task": "0-1-3", "layout": layout, "start": start})
    np.testing.assert_array_equal(env.unwrapped.layout, layout)
    assert env.unwrapped.core.cell[0] == start


def test_import_irl_lens_does_not_import_mujoco():
    code = (
        "import sys, gymnasium, irl_lens, irl_lens.envs\n"
        f"assert {ANT_ID!r} in gymnasium.registry\n"
        "assert 'mujoco' not in sys.modules, 'mujoco imported'\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_trajectory_figure_holds_the_path():
    layout, _ = parse_map(LAYOUT_A)
    xy = np.array([[-2.25, -2.25], [-1.5, -2.1], [-0.75, -2.3]])
    fig = trajectory_figure(layout, xy)
    torso = [tr for tr in fig.data if tr.name == "torso"]
    assert len(torso) == 1
    np.testing.assert_allclose(torso[0].x, xy[:, 0])
    np.testing.assert_allclose(torso[0].y, xy[:, 1])
    filled = {((s.x0 + s.x1) / 2, (s.y0 + s.y1) / 2) for s in fig.layout.shapes if s.type == "rect"}
    expected = {tuple(np.round(centre(c), 6)) for c in np.flatnonzero(layout)}
    assert {tuple(np.round(p, 6)) for p in filled} == expected


def test_render_rgb_array():
    env = AntPinpadEnv(render_mode="rgb_array")
    env.reset(seed=0)
    image = env.render()
    assert image.dtype == np.uint8 and image.shape == (240, 320, 3)
    assert image.std() > 5
    # the same ant with the tiles elsewhere renders differently: the per-env model is drawn
    layout_a, _ = parse_map(LAYOUT_A)
    layout_b, _ = parse_map(LAYOUT_B.replace("A", "."))
    images = []
    for layout in [layout_a, layout_b]:
        env.core.set_episode(0, "0-1", layout, 10, seed=0)
        images.append(env.render().astype(int))
    assert np.abs(images[0] - images[1]).max() > 50
    assert AntPinpadEnv().render() is None


def test_initial_state_is_inside_the_joint_limits_and_settles():
    from irl_lens.envs.ant_arena import start_pose

    env = BatchedAntPinpad(64, n_threads=1)
    env.reset(seed=1)
    model = env.model
    joints = [model.joint(f"{k}_{i}").id for i in range(1, 5) for k in ("hip", "ankle")]
    lo, hi = model.jnt_range[joints].T
    q = env.qpos[:, 7:15]
    assert ((q >= lo) & (q <= hi)).all()  # no limit is violated at t = 0
    np.testing.assert_array_less(np.abs(q - start_pose(model)[7:15]), 0.1 + 1e-12)
    assert np.abs(q - start_pose(model)[7:15]).max() > 0.05  # the noise is there
    np.testing.assert_allclose(env.qpos[:, 2], 0.75)
    # Dropped from 0.75 m with no torque, every ant lands and stays in its cell: none is
    # thrown out of the arena or above 1.0 m (with ankles outside their range, 1 in 4 was).
    start_cell = env.cell.copy()
    for _ in range(40):
        _, _, term, trunc, _ = env.step(np.zeros((64, 8)))
        assert not (term | trunc).any()
    np.testing.assert_array_equal(env.cell, start_cell)
