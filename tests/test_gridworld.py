"""Unit tests for gridworld-pinpad: task parsing, layouts, observations and the env rules.

Rules are checked one at a time on hand-drawn maps (see :func:`parse_map`), in the
single Gymnasium env and, replaying the same scripts, in the batched env. The batched
env is then compared with the single env step by step on seeded random episodes.
"""

from __future__ import annotations

import warnings
from collections import deque

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from irl_lens.envs import (
    AGENT_CHANNEL,
    EMPTY,
    GRID_PINPAD_ID,
    MAX_STEPS,
    N_CELLS,
    NEXT_CELL,
    POST_TASK,
    PRETRAIN_TASKS,
    SEEN_TASK,
    WALL,
    BatchedGridPinpad,
    GridPinpadEnv,
    decode_observation,
    encode_observation,
    encode_observations,
    format_task,
    is_solvable,
    parse_task,
    register_envs,
    sample_layout,
    subgoal_of_colour,
    validate_layout,
)

UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3


def parse_map(text: str) -> tuple[np.ndarray, int]:
    """``'.'`` empty, ``'0'..'7'`` colour, ``'#'`` wall, ``'A'`` agent -> (layout, agent_pos)."""
    chars = text.split()
    assert len(chars) == N_CELLS, len(chars)
    layout = np.zeros(N_CELLS, dtype=np.uint8)
    agent = -1
    for cell, ch in enumerate(chars):
        if ch == "#":
            layout[cell] = WALL
        elif ch.isdigit():
            layout[cell] = 1 + int(ch)
        elif ch == "A":
            agent = cell
    return validate_layout(layout, agent)


# Agent top-left; colours 0 and 1 to its right, then a wall; colour 2 two cells below it.
RULES_MAP = """
A . 0 1 # . .
. . . . # . .
2 3 . . . . .
. . . . . . .
4 5 6 7 . . .
# # . . . . .
. . . . . . .
"""

# (name, task, actions, expected (reward, terminated, truncated, n_done) after the last step)
SCENARIOS = [
    ("edge_noop", "0-1", [UP, LEFT], (0.0, False, False, 0)),
    ("enter_correct_advances", "0-1-2-3", [RIGHT, RIGHT], (0.0, False, False, 1)),
    ("wall_noop_on_colour", "0-1-2-3", [RIGHT, RIGHT, RIGHT, RIGHT], (0.0, False, False, 2)),
    ("edge_noop_on_colour_no_recount", "0-1-2-3", [RIGHT, RIGHT, UP, UP], (0.0, False, False, 1)),
    ("wrong_colour_fails", "0-1-2-3", [DOWN, DOWN], (0.0, True, False, 0)),
    ("success", "0-1", [RIGHT, RIGHT, RIGHT], (1.0, True, False, 2)),
    ("reenter_visited_fails", "0-1-2-3", [RIGHT, RIGHT, DOWN, UP], (0.0, True, False, 1)),
    ("skip_ahead_fails", "0-1", [RIGHT, DOWN, RIGHT, RIGHT, UP], (0.0, True, False, 0)),
    ("truncation", "0-1", [UP] * MAX_STEPS, (0.0, False, True, 0)),
]


def run_single(task: str, actions: list[int]) -> list[tuple]:
    layout, agent = parse_map(RULES_MAP)
    env = GridPinpadEnv()
    obs, info = env.reset(seed=0, options={"layout": layout, "agent_pos": agent, "task": task})
    out = [(obs, 0.0, False, False, info)]
    for a in actions:
        out.append(env.step(a))
    return out


@pytest.mark.parametrize(("name", "task", "actions", "expected"), SCENARIOS)
def test_rules_single_env(name, task, actions, expected):
    trace = run_single(task, actions)
    # nothing ends before the last scripted step
    for _, _, terminated, truncated, _ in trace[:-1]:
        assert not terminated and not truncated, name
    _, reward, terminated, truncated, info = trace[-1]
    assert (reward, terminated, truncated, info["n_done"]) == expected, name
    assert info["t"] == len(actions)
    assert info["is_success"] == (reward == 1.0)
    assert info["completed_subgoals"] == info["n_done"] // 2


def test_rule_details():
    layout, agent = parse_map(RULES_MAP)
    env = GridPinpadEnv()
    opts = {"layout": layout, "agent_pos": agent, "task": "0-1-2-3"}
    _, info = env.reset(seed=0, options=opts)
    assert info["target_colour"] == 0 and info["subgoal"] == 0 and info["agent_pos"] == 0
    env.step(RIGHT)
    _, _, _, _, info = env.step(RIGHT)  # enter colour 0
    assert info["visited"].tolist() == [True] + [False] * 7
    assert info["target_colour"] == 1 and info["subgoal"] == 0
    _, _, _, _, info = env.step(RIGHT)  # enter colour 1: first subgoal (pair 0-1) complete
    assert info["target_colour"] == 2 and info["subgoal"] == 1
    assert info["completed_subgoals"] == 1
    obs, _, _, _, info = env.step(RIGHT)  # into the wall: no-op
    assert info["agent_pos"] == 3 and decode_observation(obs)[1] == 3

    # wrong colour marks it visited and ends the episode with reward 0
    env.reset(options=opts)
    env.step(DOWN)
    _, reward, terminated, _, info = env.step(DOWN)
    assert terminated and reward == 0.0 and info["visited"][2] and not info["is_success"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(UP)

    # success info
    env.reset(options={**opts, "task": "0-1"})
    env.step(RIGHT)
    env.step(RIGHT)
    _, reward, terminated, _, info = env.step(RIGHT)
    assert reward == 1.0 and terminated and info["is_success"]
    assert info["target_colour"] == -1 and info["subgoal"] == -1


def test_truncation_exactly_at_max_steps():
    layout, agent = parse_map(RULES_MAP)
    env = GridPinpadEnv()
    env.reset(options={"layout": layout, "agent_pos": agent, "task": "0-1"})
    for t in range(1, MAX_STEPS + 1):
        _, _, terminated, truncated, info = env.step(UP)
        assert not terminated
        assert truncated == (t == MAX_STEPS)
        assert info["t"] == t


def test_rules_batched_match_single():
    """Replay every scripted scenario in one batched env; compare each step."""
    layout, agent = parse_map(RULES_MAP)
    n = len(SCENARIOS)
    env = BatchedGridPinpad(n)
    env.set_state(np.stack([layout] * n), [agent] * n, [s[1] for s in SCENARIOS])
    traces = [run_single(task, actions) for _, task, actions, _ in SCENARIOS]
    n_steps = max(len(s[2]) for s in SCENARIOS)
    for k in range(n_steps):
        actions = np.array([s[2][k] if k < len(s[2]) else UP for s in SCENARIOS])
        _, reward, terminated, truncated, info = env.step(actions)
        for i, trace in enumerate(traces):
            if k + 1 >= len(trace):  # script over; if the episode ended it stays frozen
                if trace[-1][2] or trace[-1][3]:
                    assert reward[i] == 0 and not terminated[i] and not truncated[i]
                continue
            obs_s, r_s, term_s, trunc_s, info_s = trace[k + 1]
            assert (reward[i], terminated[i], truncated[i]) == (r_s, term_s, trunc_s)
            assert np.array_equal(env.observations()[i], obs_s)
            for key, value in info_s.items():
                assert np.array_equal(info[key][i], value), (SCENARIOS[i][0], key)


def test_batched_done_envs_are_frozen():
    layout, agent = parse_map(RULES_MAP)
    env = BatchedGridPinpad(2)
    env.set_state(np.stack([layout, layout]), [agent, agent], ["0-1", "0-1"])
    env.step(np.array([DOWN, RIGHT]))
    env.step(np.array([DOWN, RIGHT]))  # env 0 enters colour 2 (wrong), env 1 enters 0
    assert env.done.tolist() == [True, False]
    before = (env.layout.copy(), env.agent_pos.copy(), env.t.copy(), env.visited.copy())
    _, reward, terminated, truncated, _ = env.step(np.array([UP, RIGHT]))  # env 1 succeeds
    assert reward.tolist() == [0.0, 1.0]
    assert terminated.tolist() == [False, True] and not truncated.any()
    assert env.agent_pos[0] == before[1][0] and env.t[0] == before[2][0]
    assert np.array_equal(env.visited[0], before[3][0])
    with pytest.raises(ValueError):
        env.step(np.array([0, 4]))
    with pytest.raises(ValueError):
        env.step(np.array([0]))


# ------------------------------------------------------------------------ seeding


def _episode_signature(env: GridPinpadEnv) -> tuple:
    return env.task, env.layout.tobytes(), env.agent_pos


def test_determinism_under_seed():
    a, b = GridPinpadEnv(), GridPinpadEnv()
    obs_a, _ = a.reset(seed=7)
    obs_b, _ = b.reset(seed=7)
    assert np.array_equal(obs_a, obs_b) and a.task == b.task
    sigs_a = [_episode_signature(a)] + [(a.reset(), _episode_signature(a))[1] for _ in range(5)]
    b.reset(seed=7)
    sigs_b = [_episode_signature(b)] + [(b.reset(), _episode_signature(b))[1] for _ in range(5)]
    assert sigs_a == sigs_b
    assert len(set(sigs_a)) == 6  # unseeded resets continue the stream, new episodes
    # different seeds, different episodes; and task=None covers the pretraining tasks
    tasks = {GridPinpadEnv().reset(seed=s)[0].tobytes() for s in range(20)}
    assert len(tasks) == 20
    env = GridPinpadEnv()
    seen = {(env.reset(seed=s), env.task)[1] for s in range(200)}
    assert seen == set(PRETRAIN_TASKS)


@pytest.mark.parametrize("task", [None, "post"])
def test_batched_equals_single_random_episodes(task):
    """Env i of the batch == GridPinpadEnv(task).reset(seed=seeds[i]), for two episodes."""
    n = 50
    seeds = list(range(1000, 1000 + n))
    batched = BatchedGridPinpad(n, task=task)
    singles = [GridPinpadEnv(task=task) for _ in range(n)]
    b_pos, b_info = batched.reset(seed=seeds)
    s_resets = [env.reset(seed=s) for env, s in zip(singles, seeds, strict=True)]
    rng = np.random.default_rng(0)
    for _episode in range(2):
        b_obs = batched.observations()
        for i, (obs, info) in enumerate(s_resets):
            assert np.array_equal(b_obs[i], obs)
            assert b_pos[i] == info["agent_pos"]
            for key, value in info.items():
                assert np.array_equal(b_info[key][i], value), key
            assert batched.tasks[i] == singles[i].task
        live = np.ones(n, dtype=bool)
        while live.any():
            actions = rng.integers(0, 4, size=n)
            _, reward, terminated, truncated, b_info = batched.step(actions)
            b_obs = batched.observations()
            for i in np.flatnonzero(live):
                obs, r, term, trunc, info = singles[i].step(actions[i])
                assert np.array_equal(b_obs[i], obs)
                assert (reward[i], terminated[i], truncated[i]) == (r, term, trunc)
                for key, value in info.items():
                    assert np.array_equal(b_info[key][i], value), key
                if term or trunc:
                    live[i] = False
        assert batched.done.all()
        b_pos, b_info = batched.reset_done()  # continues each env's generator
        s_resets = [env.reset() for env in singles]


def test_batched_int_seed_and_task_override():
    batched = BatchedGridPinpad(3)
    batched.reset(seed=5, tasks=["post", "0-1", (2, 3)])
    assert batched.tasks == [POST_TASK, (0, 1), (2, 3)]
    assert batched.task_colours.shape[1] >= len(POST_TASK)
    assert batched.task_len.tolist() == [12, 2, 2]
    for i in range(3):
        single = GridPinpadEnv()
        single.reset(seed=5 + i, options={"task": batched.tasks[i]})
        assert np.array_equal(single.layout, batched.layout[i])
        assert single.agent_pos == batched.agent_pos[i]
    uid = batched.episode_uid.copy()
    batched.reset_envs(np.array([1]))
    assert batched.episode_uid[1] != uid[1] and batched.episode_uid[0] == uid[0]
    with pytest.raises(ValueError, match="one seed per env"):
        batched.reset(seed=[1, 2])


# ---------------------------------------------------------------------- gymnasium


def test_check_env_direct_and_through_make():
    register_envs()
    register_envs()  # idempotent
    assert gymnasium.registry[GRID_PINPAD_ID].max_episode_steps is None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Not able to test alternative render")
        check_env(GridPinpadEnv())
        check_env(GridPinpadEnv(task="post", render_mode="rgb_array"))
    env = gymnasium.make(GRID_PINPAD_ID)
    check_env(env.unwrapped)
    env = gymnasium.make(GRID_PINPAD_ID, task="0-1-2-3", render_mode="ansi")
    env.reset(seed=0)
    assert env.unwrapped.task == (0, 1, 2, 3)
    assert isinstance(env.render(), str)


def test_render():
    env = GridPinpadEnv(render_mode="rgb_array")
    env.reset(seed=0)
    img = env.render()
    assert img.shape == (112, 112, 3) and img.dtype == np.uint8
    env = GridPinpadEnv(render_mode="ansi")
    env.reset(seed=0)
    text = env.render()
    lines = text.strip().splitlines()
    assert len(lines) == 8 and text.count("A") == 1 and text.count("#") == 4
    assert format_task(env.task) in lines[-1]
    assert GridPinpadEnv().render() is None
    with pytest.raises(ValueError, match="render_mode"):
        GridPinpadEnv(render_mode="human")


def test_reset_options_validation():
    env = GridPinpadEnv()
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"colour": 1})
    layout, agent = parse_map(RULES_MAP)
    with pytest.raises(ValueError, match="agent_pos"):
        env.reset(options={"layout": layout})
    with pytest.raises(ValueError, match="empty cell"):
        env.reset(options={"layout": layout, "agent_pos": 2})
    bad = layout.copy()
    bad[bad == 1] = EMPTY  # remove colour 0
    with pytest.raises(ValueError, match="colour 0"):
        env.reset(options={"layout": bad, "agent_pos": agent})
    with pytest.raises(ValueError, match="out of range"):
        env.reset(options={"task": "0-9"})


# --------------------------------------------------------------------------- tasks


def test_tasks_table():
    assert len(PRETRAIN_TASKS) == 16 and len(set(PRETRAIN_TASKS)) == 16
    assert format_task(PRETRAIN_TASKS[0]) == "0-1-4-5-0-1"
    assert format_task(PRETRAIN_TASKS[-1]) == "6-7-4-5-2-3"
    for task in (*PRETRAIN_TASKS, POST_TASK):
        assert all(
            task[2 * k] % 2 == 0 and task[2 * k + 1] == task[2 * k] + 1
            for k in range(len(task) // 2)
        )
    assert [subgoal_of_colour(c) for c in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_parse_task():
    assert parse_task("0-1-4-5") == (0, 1, 4, 5)
    with pytest.raises(ValueError, match="spaces"):
        parse_task(" post ")  # a stray space is a typo: refused, not guessed
    assert parse_task([2, 3]) == (2, 3)
    assert parse_task(np.array([6, 7])) == (6, 7)
    assert parse_task(format_task(POST_TASK)) == POST_TASK
    assert parse_task("seen") == SEEN_TASK == parse_task("0-1-4-5-2-3-6-7-4-5-0-1")


def test_task_blind_ceilings_follow_the_tasks_prefix_tree():
    from irl_lens.envs.ant_layout import ANT_POST_TASK, ANT_PRETRAIN_TASKS
    from irl_lens.envs.pinpad import task_blind_ceilings

    ant = task_blind_ceilings(ANT_PRETRAIN_TASKS)  # 4 first colours, then 2 and 2 successors
    assert ant == {"success": 1 / 16, "colours_per_episode": 0.4375,
                   "next_correct_after_0": 0.25, "next_correct_after_1": 0.5,
                   "next_correct_after_2": 0.5}  # fmt: skip
    grid = task_blind_ceilings(PRETRAIN_TASKS)  # a pair's second colour is never in doubt
    assert grid["success"] == 1 / 16 and grid["colours_per_episode"] == 0.875
    assert [grid[f"next_correct_after_{k}"] for k in range(6)] == [0.25, 1, 0.5, 1, 0.5, 1]
    # a task the expert data never continue that way: the base stops where it departs
    post = task_blind_ceilings([ANT_POST_TASK], ANT_PRETRAIN_TASKS)
    assert post["success"] == 0 and post["colours_per_episode"] == 0.25
    assert task_blind_ceilings([(0, 1)], [(0, 1), (0, 1), (2, 3)])["success"] == 2 / 3
    with pytest.raises(ValueError, match="beyond 0..3"):
        parse_task("seen", n_colours=4)


def test_the_seen_task_chains_only_pretraining_transitions_and_post_only_new_ones():
    def transitions(task):
        sub = [subgoal_of_colour(c) for c in task[::2]]
        return set(zip(sub[:-1], sub[1:], strict=True))

    seen_in_pretraining = set().union(*(transitions(t) for t in PRETRAIN_TASKS))
    assert len(SEEN_TASK) == len(POST_TASK) and SEEN_TASK not in PRETRAIN_TASKS
    assert transitions(SEEN_TASK) <= seen_in_pretraining
    assert not transitions(POST_TASK) & seen_in_pretraining
    cases = {
        "0-9": "colour 9 is out of range 0..7",
        "": "empty",
        "0-a": "'a' is not a colour number",
        "1-1-2": "colour 1 is repeated",
        "0--1": "not a colour number",
    }
    for spec, message in cases.items():
        with pytest.raises(ValueError, match=message) as err:
            parse_task(spec)
        assert "\n" not in str(err.value) and repr(spec) in str(err.value)
    for spec in ([], [0, 8], [0.5], [-1]):
        with pytest.raises(ValueError):
            parse_task(spec)
    assert parse_task("0-3", n_colours=4) == (0, 3)


# ------------------------------------------------------------- layouts / observations


def reachable_by_bfs(layout: np.ndarray, start: int, colour: int) -> bool:
    """Plain BFS, independent of the package: may we walk start -> colour cell?"""
    target = int(np.flatnonzero(layout == 1 + colour)[0])
    seen, queue = {start}, deque([start])
    while queue:
        cell = queue.popleft()
        if cell == target:
            return True
        r, c = divmod(cell, 7)
        for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            nb = rr * 7 + cc
            if 0 <= rr < 7 and 0 <= cc < 7 and nb not in seen:
                if layout[nb] == EMPTY or nb == target:
                    seen.add(nb)
                    queue.append(nb)
    return False


def test_sampled_layouts_are_valid_and_solvable():
    rng = np.random.default_rng(0)
    for k in range(200):
        task = (*PRETRAIN_TASKS, POST_TASK)[k % 17]
        layout, agent = sample_layout(rng, task)
        validate_layout(layout, agent)
        pos = agent
        for colour in task:
            assert reachable_by_bfs(layout, pos, colour)
            pos = int(np.flatnonzero(layout == 1 + colour)[0])
    # is_solvable agrees with the plain BFS on unfiltered random layouts, too
    for _ in range(300):
        cells = rng.choice(N_CELLS, 13, replace=False)
        layout = np.zeros(N_CELLS, dtype=np.uint8)
        layout[cells[:8]] = np.arange(1, 9)
        layout[cells[8:12]] = WALL
        task = POST_TASK
        pos, expected = int(cells[12]), True
        for colour in task:
            expected &= reachable_by_bfs(layout, pos, colour)
            pos = int(cells[colour])
        assert is_solvable(layout, int(cells[12]), task) == expected


def test_unsolvable_layout_detected():
    boxed = """
    0 1 . . . . .
    2 . . . . . .
    . . . . . . .
    . . . # 3 # .
    . . # 4 # . A
    . . . 5 . . .
    . . . . 6 7 .
    """
    layout, agent = parse_map(boxed)
    # colour 4 is enclosed by walls and colour 5; colour 0 by colours 1 and 2
    assert not is_solvable(layout, agent, (4, 5))
    assert not is_solvable(layout, agent, (3, 4))
    assert is_solvable(layout, agent, (5, 4))  # from colour 5 it is one step
    assert not is_solvable(layout, agent, (0, 1))
    assert is_solvable(layout, agent, (1, 0)) and is_solvable(layout, agent, (2, 0))


def test_observation_encoding_round_trip():
    rng = np.random.default_rng(1)
    layouts, agents = zip(*(sample_layout(rng, POST_TASK) for _ in range(32)), strict=True)
    layouts, agents = np.stack(layouts), np.array(agents)
    obs = encode_observations(layouts, agents)
    assert obs.shape == (32, 7, 7, 13) and obs.dtype == np.uint8
    assert np.all(obs[..., :AGENT_CHANNEL].sum(axis=(1, 2)) == 1)  # each object once
    assert np.all(obs[..., AGENT_CHANNEL].sum(axis=(1, 2)) == 1)
    dec_layout, dec_agent = decode_observation(obs)
    assert np.array_equal(dec_layout, layouts) and np.array_equal(dec_agent, agents)
    single = encode_observation(layouts[3], agents[3])
    assert np.array_equal(single, obs[3])
    lay, pos = decode_observation(single)
    assert np.array_equal(lay, layouts[3]) and int(pos) == agents[3]
    # walls are numbered in raster order
    layout, agent = parse_map(RULES_MAP)
    grid = encode_observation(layout, agent)
    wall_cells = [(0, 4), (1, 4), (5, 0), (5, 1)]
    for k, (r, c) in enumerate(wall_cells):
        assert grid[r, c, 8 + k] == 1
    assert grid[0, 2, 0] == 1 and grid[0, 0, AGENT_CHANNEL] == 1
    assert GridPinpadEnv().observation_space.contains(grid)
    with pytest.raises(ValueError):
        decode_observation(np.zeros((7, 7, 13), dtype=np.uint8))


def test_next_cell_table():
    assert NEXT_CELL[0].tolist() == [0, 1, 7, 0]  # up/left off-grid are no-ops
    assert NEXT_CELL[48].tolist() == [41, 48, 48, 47]
    assert NEXT_CELL[24].tolist() == [17, 25, 31, 23]
