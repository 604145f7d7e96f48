"""The rollout engine: stepped halves with a key/value cache equal the full forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from irl_lens.cli.bench import engine_benchmark
from irl_lens.envs.gridworld_batch import BatchedGridPinpad
from irl_lens.envs.gridworld_layout import WALL
from irl_lens.hooks import hook_count, intervene, layer_hook_name
from irl_lens.models.base import build_model
from irl_lens.models.controller import ControllerConfig, build_controller_bank
from irl_lens.rollout.engine import StepState
from irl_lens.rollout.grid import GridRolloutEngine as RolloutEngine
from irl_lens.rollout.grid import grid_obs_tokens, rollout_grid, seeded_env
from irl_lens.rollout.stepper import _fast_path_problem
from irl_lens.rollout.switchers import GroundTruthSwitcher, pair_subgoals

from .conftest import tiny_model_config


def _bank(model, seed=0, scale=0.5):
    bank = build_controller_bank(ControllerConfig(model.cfg.d_model, 4, rank=4), seed=seed)
    with torch.no_grad():
        bank.B.normal_(0, scale, generator=torch.Generator().manual_seed(seed))
    return bank


def _full_forward(model, ro, layer, controller_index, bank):
    """Logits and pre-control residuals of the full-sequence forward with the same control."""
    T = int(ro.length.max())
    obs = ro.obs_tokens()[:, :T]
    seen = {}
    control = bank.select(torch.from_numpy(controller_index[:, :T]))

    def capture(e):
        seen["e"] = e.clone()
        return control(e)

    with torch.no_grad(), intervene(model, layer, capture):
        out = model(obs)
    return model.split(out).action_params, seen["e"], T


@pytest.mark.parametrize("paths", [False, True])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_engine_equals_full_forward(tiny_model, layer, fast, paths):
    if paths:  # the encoder's path features (and their memo, hit at every step)
        tiny_model = build_model(tiny_model_config(path_features=True), seed=0).eval()
    _check_engine_equals_full_forward(tiny_model, layer, fast)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_engine_equals_full_forward_on_a_hawk_base(layer):
    """Issue 32: a recurrent base steps with each block's state instead of a key/value
    cache (rows dropped as episodes end) and equals its full-sequence scan."""
    from irl_lens.models.hawk import HawkActionModel

    model = build_model(tiny_model_config(arch="hawk"), seed=0).eval()
    assert isinstance(model, HawkActionModel) and _fast_path_problem(model) is not None
    _check_engine_equals_full_forward(model, layer, fast=True)


def _check_engine_equals_full_forward(tiny_model, layer: int, fast: bool) -> None:
    bank = _bank(tiny_model)
    switcher = GroundTruthSwitcher(bank.select)
    env = seeded_env(24, task="post", seed=1)
    engine = RolloutEngine(tiny_model, layer, fast=fast)
    ro = engine.run(
        env,
        controller_fn=switcher,
        generator=torch.Generator().manual_seed(0),
        record_resid=True,
        record_logits=True,
        max_steps=40,
    )
    assert len(set(ro.length.tolist())) > 2  # episodes end at different times (compaction)
    logits, resid, T = _full_forward(tiny_model, ro, layer, switcher.chosen, bank)
    valid = torch.from_numpy(ro.valid[:, :T])
    torch.testing.assert_close(ro.logits[:, :T][valid], logits[valid], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ro.resid[:, :T][valid], resid[valid], rtol=1e-4, atol=1e-5)
    # the recorded log-probabilities are those of the recorded actions
    logp = torch.log_softmax(logits, -1).gather(
        -1, torch.from_numpy(ro.action[:, :T]).clamp(min=0)[..., None]
    )[..., 0]
    torch.testing.assert_close(
        torch.from_numpy(ro.action_logp[:, :T])[valid], logp[valid], rtol=1e-4, atol=1e-5
    )
    assert hook_count(tiny_model) == 0


def test_fast_and_hooked_paths_agree_and_compaction_changes_nothing(tiny_model):
    assert _fast_path_problem(tiny_model) is None
    results = []
    for fast, compact in ((True, True), (False, True), (True, False)):
        env = seeded_env(16, task="post", seed=3)
        ro = RolloutEngine(tiny_model, 1, fast=fast).run(
            env, greedy=True, compact=compact, record_logits=True, max_steps=30
        )
        results.append(ro)
    for ro in results[1:]:
        np.testing.assert_array_equal(ro.action, results[0].action)
        np.testing.assert_array_equal(ro.length, results[0].length)
        torch.testing.assert_close(ro.logits, results[0].logits, rtol=1e-4, atol=1e-5)


def test_engine_respects_hooks_already_attached(tiny_model):
    """A hook on the model forces the hooked path, so it acts inside the engine too."""
    with intervene(tiny_model, 1, lambda e: 3 * e):
        assert _fast_path_problem(tiny_model) is not None
        ro = RolloutEngine(tiny_model, 2).run(
            seeded_env(8, seed=0), greedy=True, record_logits=True, max_steps=20
        )
        T = int(ro.length.max())
        with torch.no_grad():
            out = tiny_model.split(tiny_model(ro.obs_tokens()[:, :T])).action_params
    valid = torch.from_numpy(ro.valid[:, :T])
    torch.testing.assert_close(ro.logits[:, :T][valid], out[valid], rtol=1e-4, atol=1e-5)


def test_same_seed_same_episodes(tiny_model):
    runs = []
    for _ in range(2):
        env = seeded_env(32, seed=5)
        runs.append(RolloutEngine(tiny_model).run(env, generator=torch.Generator().manual_seed(9)))
    np.testing.assert_array_equal(runs[0].action, runs[1].action)
    np.testing.assert_array_equal(runs[0].reward, runs[1].reward)


def test_records_match_the_env(tiny_model):
    env = seeded_env(64, seed=2)
    ro = RolloutEngine(tiny_model).run(env, generator=torch.Generator().manual_seed(0))
    valid = ro.valid
    assert (ro.action[valid] >= 0).all() and (ro.action[~valid] == -1).all()
    np.testing.assert_array_equal(ro.subgoal[valid], ro.target_colour[valid] // 2)
    assert (ro.n_done[:, 0] == 0).all()
    np.testing.assert_array_equal(ro.reward.sum(1) > 0, ro.success)
    for i, colours in enumerate(ro.entered()):  # colours entered = colours the env saw visited
        assert sorted(set(colours)) == sorted(np.flatnonzero(env.visited[i]).tolist())
        assert len(colours) == len(set(colours)) or not ro.success[i]
        assert ro.final_n_done[i] <= len(colours)


def test_rollout_grid_keeps_its_interface(tiny_model):
    env = seeded_env(16, seed=0)
    tok = grid_obs_tokens(env)
    assert tok.shape == (16, 1, 50) and (tok[:, 0, 49] == torch.from_numpy(env.agent_pos)).all()
    ro = rollout_grid(tiny_model, env, generator=torch.Generator().manual_seed(0))
    assert ro.action.shape == (16, 100) and len(ro.entered) == 16
    assert env.done.all()
    with pytest.raises(ValueError, match="n_ctx"):
        rollout_grid(tiny_model, seeded_env(2), max_steps=tiny_model.cfg.n_ctx + 1)


def test_pair_subgoals():
    assert pair_subgoals("post") == [0, 1, 2, 3, 0, 1]
    assert pair_subgoals("4-5-0-1") == [2, 0]
    for bad in ("0-3", "0-1-2", "1-2"):
        with pytest.raises(ValueError, match="pairs"):
            pair_subgoals(bad)


def _line_layout():
    """Agent at (0,0); colours 0,1,2,3 to its right on row 0; 4..7 and walls far away."""
    layout = np.zeros(49, dtype=np.uint8)
    layout[[1, 2, 3, 4]] = [1, 2, 3, 4]  # colours 0..3
    layout[[42, 44, 46, 48]] = [5, 6, 7, 8]  # colours 4..7 on the last row
    layout[[28, 30, 32, 34]] = WALL
    return layout


def test_ground_truth_switching_picks_the_right_controller_at_the_right_step():
    env = BatchedGridPinpad(2)
    env.set_state(np.stack([_line_layout()] * 2), [0, 0], ["0-1-2-3", "0-1-2-3"])
    picked = []
    switcher = GroundTruthSwitcher(lambda index: picked.append(index.tolist()) or (lambda e: e))
    # env 0 walks right through 0,1,2,3; env 1 stays (moves up into the border) for 2 steps first
    script = [[1, 0], [1, 0], [1, 1], [1, 1]]
    for t, actions in enumerate(script):
        rows = np.flatnonzero(~env.done)
        switcher(StepState(t, torch.zeros(len(rows), 4), rows, env, layer=1))
        env.step(np.array(actions))
    # env 0: subgoal 0 until both 0 and 1 are entered (after step 1), then subgoal 1
    assert switcher.chosen[0, :4].tolist() == [0, 0, 1, 1]
    assert switcher.chosen[1, :4].tolist() == [0, 0, 0, 0]  # entered colour 0 only at t=2
    assert env.success[0]
    assert picked[0] == [0, 0]


def test_switcher_follows_the_subgoal_label_in_the_engine(tiny_model):
    bank = _bank(tiny_model)
    switcher = GroundTruthSwitcher(bank.select)
    env = seeded_env(32, task="post", seed=4)
    ro = RolloutEngine(tiny_model, 1).run(
        env, controller_fn=switcher, max_steps=30, generator=torch.Generator().manual_seed(1)
    )
    valid = ro.valid
    # for pair tasks, the switched-to controller is the env's current subgoal label
    np.testing.assert_array_equal(switcher.chosen[:, :30][valid], ro.subgoal[valid])


def test_engine_validates_input(tiny_model):
    with pytest.raises(ValueError, match="layer"):
        RolloutEngine(tiny_model, tiny_model.cfg.n_layers + 1)
    with pytest.raises(ValueError, match="max_steps"):
        RolloutEngine(tiny_model).run(seeded_env(2), max_steps=0)
    assert layer_hook_name(tiny_model, RolloutEngine(tiny_model).layer)
    env = seeded_env(4)
    env.step(np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="reset"):
        RolloutEngine(tiny_model).run(env)


def test_engine_benchmark(tiny_model):
    out = engine_benchmark(tiny_model, 32, min_seconds=0.01, max_batches=1)
    assert out["engine/episodes_per_s"] > 0 and out["engine/env_steps_per_s"] > 0
    assert out["engine/n_envs"] == 32
