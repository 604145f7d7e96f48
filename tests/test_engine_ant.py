"""The ant rollout engine: stepped halves in MuJoCo equal the full forward pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from irl_lens.envs.ant_batch import END_REASONS
from irl_lens.envs.ant_layout import ANT_OBS_DIM
from irl_lens.hooks import hook_count, intervene
from irl_lens.models.base import build_model
from irl_lens.models.controller import ControllerConfig, build_controller_bank
from irl_lens.rollout.ant import AntRolloutEngine, ColourSwitcher, seeded_ant_env
from tests.conftest import tiny_model_config


@pytest.fixture()
def ant_model():
    cfg = tiny_model_config(
        obs_kind="vector", obs_dim=ANT_OBS_DIM, action_kind="continuous", n_actions=8, n_ctx=500
    )
    return build_model(cfg, seed=0).eval()


def _bank(model, seed=0, scale=0.5):
    bank = build_controller_bank(ControllerConfig(model.cfg.d_model, 4, rank=4), seed=seed)
    with torch.no_grad():
        bank.B.normal_(0, scale, generator=torch.Generator().manual_seed(seed))
    return bank


@pytest.mark.parametrize(
    "paths", [False, True, "heading", "future", "mixture", "colour", "underfoot"]
)
@pytest.mark.parametrize("fast", [True, False])
def test_ant_engine_equals_full_forward(ant_model, fast, paths):
    if paths:  # issue 32's path (and heading) features, computed in the encoder at every step
        cfg = tiny_model_config(obs_kind="vector", obs_dim=ANT_OBS_DIM, action_kind="continuous",
                                n_actions=8, n_ctx=500, path_features=True,
                                heading_features=paths == "heading",
                                underfoot_features=paths == "underfoot",
                                future_horizon=25 if paths == "future" else 0,
                                action_mixtures=3 if paths == "mixture" else 1,
                                next_colour_weight=1.0 if paths == "colour" else 0.0)  # fmt: skip
        ant_model = build_model(cfg, seed=0).eval()
    bank = _bank(ant_model)
    switcher = ColourSwitcher(bank.select)
    env = seeded_ant_env(6, task="post", seed=1)
    ro = AntRolloutEngine(ant_model, 1, fast=fast).run(
        env, controller_fn=switcher, generator=torch.Generator().manual_seed(0),
        record_resid=True, record_logits=True, max_steps=40,
    )  # fmt: skip
    T = int(ro.length.max())
    assert T > 1 and (ro.length > 0).all()
    seen = {}
    control = bank.select(torch.from_numpy(switcher.chosen[:, :T]))

    def capture(e):
        seen["e"] = e.clone()
        return control(e)

    with torch.no_grad(), intervene(ant_model, 1, capture):
        params = ant_model.split(ant_model(ro.obs_inputs()[:, :T])).action_params
    valid = torch.from_numpy(ro.valid[:, :T])
    torch.testing.assert_close(ro.action_params[:, :T][valid], params[valid], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ro.resid[:, :T][valid], seen["e"][valid], rtol=1e-4, atol=1e-5)
    # the recorded log-probabilities are those of the recorded torques under the head
    logp = ant_model.action_distribution(params).log_prob(torch.from_numpy(ro.action[:, :T]))
    torch.testing.assert_close(
        torch.from_numpy(ro.action_logp[:, :T])[valid], logp[valid], rtol=1e-4, atol=1e-4
    )
    assert hook_count(ant_model) == 0


def test_ant_engine_greedy_takes_the_mean_and_the_controller_changes_it(ant_model):
    free = AntRolloutEngine(ant_model, 1).run(
        seeded_ant_env(4, seed=2), greedy=True, record_logits=True, max_steps=10
    )
    mean = free.action_params[..., :8].numpy()
    np.testing.assert_allclose(free.action[free.valid], mean[free.valid], rtol=1e-6, atol=1e-6)
    steered = AntRolloutEngine(ant_model, 1).run(
        seeded_ant_env(4, seed=2), controller_fn=ColourSwitcher(_bank(ant_model).select),
        greedy=True, max_steps=10,
    )  # fmt: skip
    np.testing.assert_array_equal(steered.obs[:, 0], free.obs[:, 0])  # same episodes
    assert not np.allclose(steered.action[:, 0], free.action[:, 0])


def test_colour_switcher_picks_the_target_colour_at_every_step(ant_model):
    env = seeded_ant_env(3, task="0-1-2-3", seed=0)
    switcher = ColourSwitcher(lambda index: lambda e: e)
    engine = AntRolloutEngine(ant_model, 2)
    ro = engine.run(env, controller_fn=switcher, max_steps=12)
    valid = ro.valid
    np.testing.assert_array_equal(switcher.chosen[:, :12][valid], ro.subgoal[valid])
    assert (ro.subgoal[valid] == 0).all()  # first target of 0-1-2-3 until it is entered
    # placing the torso in colour 0's cell advances the target, and the controller with it
    env = seeded_ant_env(1, task="0-1-2-3", seed=0)
    cell = int(np.flatnonzero(env.layout[0] == 1)[0])  # code 1 = colour 0
    centre = env._centres[cell]
    env.set_torso(0, float(centre[0]), float(centre[1]))
    ro = engine.run(env, controller_fn=switcher, max_steps=3)
    assert ro.subgoal[0, 0] == 0 and switcher.chosen[0, 1] == 1


def test_ant_engine_same_seed_same_episodes_and_end_reasons(ant_model):
    runs = []
    for _ in range(2):
        env = seeded_ant_env(4, seed=5)
        runs.append(
            AntRolloutEngine(ant_model).run(
                env, generator=torch.Generator().manual_seed(9), max_steps=30
            )
        )
    np.testing.assert_array_equal(runs[0].action, runs[1].action)
    np.testing.assert_array_equal(runs[0].length, runs[1].length)
    fractions = runs[0].end_reasons()
    assert set(fractions) == set(END_REASONS) and abs(sum(fractions.values()) - 1) < 1e-9


def test_ant_engine_refuses_a_gridworld_model(tiny_model):
    with pytest.raises(ValueError, match="vector observations"):
        AntRolloutEngine(tiny_model)


def test_segment_target_cells_reads_the_ant_grid():
    from types import SimpleNamespace

    from analyses.clustering import segment_target_cells

    layout = np.zeros((1, 16), dtype=np.uint8)
    layout[0, [5, 14, 3, 8]] = [1, 2, 3, 4]  # colours 0..3 (codes 1..4) in cells 5, 14, 3, 8
    ds = SimpleNamespace(arrays={"layout": layout}, meta={"env": "ant"})
    subgoals = [np.array([2, 2, 0, 0, 3])]  # segments targeting colours 2, 0, 3
    cells = segment_target_cells(ds, np.array([0]), subgoals)
    np.testing.assert_array_equal(cells, [[0, 3], [1, 1], [2, 0]])  # divmod(cell, 4)


def test_ant_episode_record_round_trips_to_a_figure(ant_model):
    import json

    from analyses.episodes import path_figure, timeline_figure

    ro = AntRolloutEngine(ant_model).run(seeded_ant_env(2, task="post", seed=4), max_steps=15)
    episode = json.loads(json.dumps(ro.episode(1)))  # as stored in episodes.json
    assert episode["env"] == "ant" and len(episode["layout"]) == 16
    assert len(episode["xy"]) == len(episode["subgoal"]) == ro.length[1]
    fig = path_figure(episode)
    assert "torso" in [trace.name for trace in fig.data]
    timeline_figure(episode)


def test_bench_times_the_ant_engine():
    from irl_lens.cli.bench import ant_engine_throughput

    out = ant_engine_throughput(seconds=0.01, seed=0, n_envs=4, max_steps=5)
    assert out["ant_engine_steps_per_s"] > 0 and out["ant_engine_n_envs"] == 4


def test_steered_ant_episode_forces_the_code_from_the_chosen_step(ant_model):
    from analyses.episodes import steered_episode
    from irl_lens.models.metacontroller import MetacontrollerConfig, build_metacontroller

    mc = build_metacontroller(MetacontrollerConfig(d_model=32, rank=None), seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a fresh decoder writes U = 0; give it something to write
        for p in mc.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    code = np.full(mc.cfg.n_z, 2.0, dtype=np.float32)
    free = steered_episode(ant_model, mc, 1, code, at_step=10_000, seed=3, task="post")
    late = steered_episode(ant_model, mc, 1, code, at_step=5, seed=3, task="post")
    assert free["env"] == "ant" and free["reached"] == -1  # never steered, nothing reached
    n = min(len(free["xy"]), len(late["xy"]))
    assert n > 7
    np.testing.assert_array_equal(free["xy"][:6], late["xy"][:6])  # identical until step 5
    assert free["xy"][:n] != late["xy"][:n]  # the forced code changes the torques after it
    assert isinstance(late["entered"], list) and late["reached"] in (-1, 0, 1, 2, 3)


def test_next_colour_rates_read_the_first_wrong_colour_off_the_episode_ends():
    """After k colours, the next one entered was the task's in the episodes that completed
    more than k, and wrong in those that ended at k on a wrong colour (issue 32)."""
    from irl_lens.train.evaluate import next_colour_rates

    final = np.array([0, 0, 1, 1, 2, 3, 0])
    wrong = np.array([True, False, True, False, True, False, False])  # others: fell, timeout
    rates = next_colour_rates(final, wrong, 4)
    assert rates["rollout/next_correct_after_0"] == pytest.approx(4 / 5)  # 4 went on, 1 wrong
    assert rates["rollout/next_correct_after_1"] == pytest.approx(2 / 3)
    assert rates["rollout/next_correct_after_2"] == pytest.approx(1 / 2)
    assert rates["rollout/next_correct_after_3"] != rates["rollout/next_correct_after_3"]  # nan


def test_free_running_ant_evaluation_reports_colours_and_end_reasons(ant_model):
    from irl_lens.train.evaluate import ant_free_running_metrics

    m = ant_free_running_metrics(ant_model, n_episodes=3, seed=0)
    assert 0.0 <= m["rollout/success"] <= 1.0 and m["rollout/colours_per_episode"] >= 0.0
    ends = [v for k, v in m.items() if k.startswith("rollout/end/")]
    assert len(ends) == 7 and sum(ends) == pytest.approx(1.0)
    # the ceilings of a base that cannot see the task (the env draws a pretraining task)
    assert m["rollout/success_ceiling"] == 1 / 16
    assert m["rollout/colours_per_episode_ceiling"] == 1 / 4 + 1 / 8 + 1 / 16
    assert [m[f"rollout/next_correct_ceiling_after_{k}"] for k in range(3)] == [0.25, 0.5, 0.5]
    assert m["rollout/colours_vs_ceiling"] == pytest.approx(
        m["rollout/colours_per_episode"] / 0.4375
    )
    post = ant_free_running_metrics(ant_model, n_episodes=2, seed=0, task="post")
    assert post["rollout/success_ceiling"] == 0.0  # 0 -> 1 never occurs in pretraining
    again = ant_free_running_metrics(ant_model, n_episodes=3, seed=0)  # same seed, same numbers
    np.testing.assert_equal([m[k] for k in sorted(m)], [again[k] for k in sorted(again)])


def test_ant_path_features_are_the_experts_paths_in_the_torsos_frame():
    """Issue 32: the layout read back from the observation, every colour's first move and
    distance equal to the expert's direction_map, and the heading equal to the torso's yaw
    (the features are a fixed function of the observation)."""
    from irl_lens.envs.ant_layout import ANT_PRETRAIN_TASKS, direction_map, sample_ant_layout
    from irl_lens.models.ant_features import ant_layouts, ant_path_features, ant_paths

    rng = np.random.default_rng(0)
    layouts = np.stack([sample_ant_layout(rng, ANT_PRETRAIN_TASKS[i % 4])[0] for i in range(60)])
    direction, distance = ant_paths(torch.from_numpy(layouts.astype(np.int64)))
    for i, layout in enumerate(layouts):
        for c in range(4):
            want_dir, want_dist = direction_map(layout, c)
            np.testing.assert_array_equal(direction[i, c].numpy(), want_dir)
            np.testing.assert_array_equal(distance[i, c].numpy(), want_dist)
    env = seeded_ant_env(5, seed=3)
    for _ in range(10):
        env.step(rng.uniform(-1, 1, (5, 8)))
    obs = torch.from_numpy(env.observations())
    np.testing.assert_array_equal(ant_layouts(obs).numpy(), env.layout.astype(np.int64))
    w, x, y, z = env.qpos[:, 3:7].T
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    feats = ant_path_features(obs)
    np.testing.assert_allclose(feats[:, -2:].numpy(), np.c_[np.cos(yaw), np.sin(yaw)], atol=1e-5)
    # each colour's first move from the torso's cell, world direction d (0 east, 1 north,
    # ...), read in the torso's frame: the angle d * 90 degrees - yaw
    from irl_lens.envs.ant_layout import cell_of

    cells = cell_of(env.qpos[:, :2])
    for row in range(5):
        for c in range(4):
            d = int(direction_map(env.layout[row], c)[0][cells[row]])
            angle = d * np.pi / 2 - yaw[row]
            want = (np.cos(angle), np.sin(angle)) if d >= 0 else (0.0, 0.0)
            got = (float(feats[row, c]), float(feats[row, 4 + c]))
            np.testing.assert_allclose(got, want, atol=1e-5)


def test_ant_heading_features_read_the_velocity_against_each_colours_path():
    """Issue 32: per colour, the cosine between the torso's horizontal velocity and the
    path's first move, the speed along it, the velocity in the torso's frame; on the
    expert's own episodes the largest cosine names the colour it walks to far above chance.
    A config asking for them without the path features, or off ant, is refused."""
    from irl_lens.envs.ant_layout import cell_of, direction_map
    from irl_lens.models.ant_features import (
        N_ANT_HEADING_FEATURES,
        N_ANT_PATH_FEATURES,
        ant_path_features,
        heading_target,
    )

    rng = np.random.default_rng(1)
    env = seeded_ant_env(6, seed=4)
    for _ in range(15):
        env.step(rng.uniform(-1, 1, (6, 8)))
    obs = torch.from_numpy(env.observations())
    feats = ant_path_features(obs, heading=True)
    assert feats.shape == (6, N_ANT_PATH_FEATURES + N_ANT_HEADING_FEATURES)
    torch.testing.assert_close(feats[:, :N_ANT_PATH_FEATURES], ant_path_features(obs))
    heading = feats[:, N_ANT_PATH_FEATURES:]
    v = env.qvel[:, :2]
    speed = np.linalg.norm(v, axis=1)
    w, x, y, z = env.qpos[:, 3:7].T
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    cells = cell_of(env.qpos[:, :2])
    for row in range(6):
        for c in range(4):
            d = int(direction_map(env.layout[row], c)[0][cells[row]])
            unit = np.array([np.cos(d * np.pi / 2), np.sin(d * np.pi / 2)])
            along = float(v[row] @ unit) if d >= 0 else 0.0
            cos = along / speed[row] if d >= 0 and speed[row] > 0.05 else 0.0
            np.testing.assert_allclose(float(heading[row, c]), cos, atol=1e-4)
            np.testing.assert_allclose(
                float(heading[row, 4 + c]), np.sign(along) * np.log1p(abs(along)), atol=1e-4
            )
        fwd = v[row, 0] * np.cos(yaw[row]) + v[row, 1] * np.sin(yaw[row])
        left = v[row, 1] * np.cos(yaw[row]) - v[row, 0] * np.sin(yaw[row])
        np.testing.assert_allclose(
            heading[row, 8:].numpy(),
            np.sign([fwd, left]) * np.log1p(np.abs([fwd, left])),
            atol=1e-4,
        )
    from irl_lens.data.generate_ant import generate_ant

    ds = generate_ant(16, "clean", seed=0, progress=False)  # the shipped expert's episodes
    target = heading_target(torch.from_numpy(ds.arrays["obs"])).numpy()
    label = ds.arrays["subgoal"]
    assert (target == label).mean() > 0.45, (target == label).mean()  # 0.61 on 500 episodes
    for bad in ({"path_features": False}, {"obs_kind": "grid"}):
        kw = dict(obs_kind="vector", obs_dim=ANT_OBS_DIM, action_kind="continuous", n_actions=8,
                  path_features=True, heading_features=True) | bad  # fmt: skip
        if bad.get("obs_kind") == "grid":
            kw.pop("obs_dim"), kw.pop("action_kind"), kw.pop("n_actions")
        with pytest.raises(ValueError, match="heading_features"):
            tiny_model_config(**kw)


def test_future_displacement_is_the_torsos_path_over_the_next_k_steps():
    """Issue 32's --future-horizon target: from o_t+1 to o_t+K in cells, stopping at each
    row's last valid step; it enters the observation term of the loss, so predicting it
    well lowers that term; a gridworld config refuses it."""
    from irl_lens.models.ant_features import ant_future_displacement

    nt = torch.zeros(2, 6, ANT_OBS_DIM)
    nt[0, :, 27] = torch.arange(6.0) / 2  # x / (side / 2): one cell per step
    nt[1, :, 28] = -torch.arange(6.0) / 2
    mask = torch.ones(2, 6)
    mask[1, 4:] = 0  # row 1 ends after 4 steps
    got = ant_future_displacement(nt, mask, 3)
    torch.testing.assert_close(got[0, :, 0], torch.tensor([2.0, 2, 2, 2, 1, 0]))
    torch.testing.assert_close(got[1, :4, 1], -torch.tensor([2.0, 2, 1, 0]))
    assert (got[0, :, 1] == 0).all() and (got[1, :, 0] == 0).all()
    cfg = tiny_model_config(obs_kind="vector", obs_dim=ANT_OBS_DIM, action_kind="continuous",
                            n_actions=8, n_ctx=500, future_horizon=3)  # fmt: skip
    model = build_model(cfg, seed=0).eval()
    assert model.model_cfg.d_vocab_out == 16 + ANT_OBS_DIM + 2
    out = torch.zeros(2, 6, cfg.d_vocab_out)
    actions = torch.zeros(2, 6, 8)
    _, blind = model.losses(out, actions, nt, mask)
    out[..., -2:] = got  # the true displacement: its part of the term is 0
    _, told = model.losses(out, actions, nt, mask)
    want = 0.5 * (got**2).sum(-1)[mask > 0].mean()
    torch.testing.assert_close(blind - told, want)
    with pytest.raises(ValueError, match="future_horizon"):
        tiny_model_config(future_horizon=3)


def _walk(cells: list[int]) -> torch.Tensor:
    """Observations ``[1, len(cells), 41]`` of a torso standing at the centres of ``cells``
    on one layout: colour c (0..3) on cell 5 + c, the wall on cell 0."""
    from irl_lens.envs.ant_layout import ANT_WALL, ant_observations, cell_centres

    layout = np.zeros((len(cells), 16), dtype=np.int64)
    layout[:, 5:9] = np.arange(1, 5)
    layout[:, 0] = ANT_WALL
    qpos = np.zeros((len(cells), 15))
    qpos[:, :2] = cell_centres()[cells]
    qpos[:, 3] = 1.0  # an upright torso (w of the quaternion)
    return torch.from_numpy(ant_observations(qpos, np.zeros((len(cells), 14)), layout))[None]


def test_next_colour_is_the_colour_the_torso_enters_next():
    """Issue 32's --next-colour-weight target: after each step, the colour of the next cell
    entered (standing on a colour is no entry; leaving and coming back is); -1 when none
    is entered before the episode ends, and at padding."""
    from irl_lens.models.ant_features import ant_colour_underfoot, ant_next_colour

    # o_1.. (next observations): empty, colour 0, colour 0, empty, colour 2, colour 2, empty,
    # colour 2 again, empty
    nt = _walk([1, 5, 5, 2, 7, 7, 3, 7, 3])
    assert ant_colour_underfoot(nt[0]).tolist() == [-1, 0, 0, -1, 2, 2, -1, 2, -1]
    mask = torch.ones(1, 9)
    assert ant_next_colour(nt, mask).tolist() == [[0, 0, 2, 2, 2, 2, 2, 2, -1]]
    mask[0, 6:] = 0  # the episode ends after six steps: the return to colour 2 is padding
    assert ant_next_colour(nt, mask).tolist() == [[0, 0, 2, 2, 2, -1, -1, -1, -1]]


def test_underfoot_features_add_one_vector_per_colour_under_the_torso():
    """--underfoot-features: layer 0 is the MLP's embedding plus the learned vector of the
    colour the torso stands on (row 0: none), so "on colour c" is linear in the stream;
    both architectures take it, and a gridworld config refuses it."""
    from irl_lens.models.ant_features import ant_colour_underfoot

    obs = _walk([1, 5, 5, 2, 7, 8, 6, 3])
    for arch in ("transformer", "hawk"):
        cfg = tiny_model_config(obs_kind="vector", obs_dim=ANT_OBS_DIM, action_kind="continuous",
                                n_actions=8, n_ctx=500, path_features=True,
                                underfoot_features=True, arch=arch)  # fmt: skip
        model = build_model(cfg, seed=0).eval()
        enc = model.obs_encoder
        plain = build_model(dataclasses.replace(cfg, underfoot_features=False), seed=0).obs_encoder
        with torch.no_grad():
            added = model.embed_obs(obs) - plain(obs)  # the same MLP: seeded alike
            rows = enc.underfoot.weight[ant_colour_underfoot(obs) + 1]
        assert ant_colour_underfoot(obs)[0].tolist() == [-1, 0, 0, -1, 2, 3, 1, -1]
        torch.testing.assert_close(added, rows)
        assert not torch.equal(rows[0, 1], rows[0, 0])  # a colour moves the stream
    with pytest.raises(ValueError, match="underfoot_features"):
        tiny_model_config(underfoot_features=True)


def test_the_next_colour_head_is_scored_apart_and_read_out():
    """The head's cross-entropy counts only steps after which a colour is entered, times
    its weight; it leaves the action and observation terms alone; a gridworld config
    refuses it."""
    import math

    from irl_lens.models.ant_features import ant_next_colour

    cfg = tiny_model_config(obs_kind="vector", obs_dim=ANT_OBS_DIM, action_kind="continuous",
                            n_actions=8, n_ctx=500, next_colour_weight=0.5)  # fmt: skip
    model = build_model(cfg, seed=0).eval()
    assert cfg.d_vocab_out == 16 + ANT_OBS_DIM + 4
    nt = _walk([1, 5, 5, 2, 7, 7, 3])
    mask = torch.ones(1, 7)
    target = ant_next_colour(nt, mask)
    out = torch.zeros(1, 7, cfg.d_vocab_out)
    weighted, ce = model.auxiliary_loss(out, nt, mask)
    torch.testing.assert_close(ce, torch.tensor(math.log(4)))  # uniform logits
    torch.testing.assert_close(weighted, 0.5 * ce)
    out[..., -4:] = 20 * torch.nn.functional.one_hot(target.clamp(min=0), 4)
    _, told = model.auxiliary_loss(out, nt, mask)
    assert told < 1e-6
    before = model.losses(torch.zeros(1, 7, cfg.d_vocab_out), torch.zeros(1, 7, 8), nt, mask)
    after = model.losses(out, torch.zeros(1, 7, 8), nt, mask)
    torch.testing.assert_close(before, after)
    assert model.split(out).next_colour.shape == (1, 7, 4)
    plain = build_model(tiny_model_config(obs_kind="vector", obs_dim=ANT_OBS_DIM,
                                          action_kind="continuous", n_actions=8,
                                          n_ctx=500), seed=0)  # fmt: skip
    zero, _ = plain.auxiliary_loss(torch.zeros(1, 7, plain.model_cfg.d_vocab_out), nt, mask)
    assert zero == 0 and plain.split(torch.zeros(1, 7, 57)).next_colour is None
    with pytest.raises(ValueError, match="next_colour_weight"):
        tiny_model_config(next_colour_weight=1.0)


def test_a_mixture_action_head_scores_samples_and_acts_by_its_components():
    """Issue 32's --action-mixtures K: log p is the mixture's (checked by hand), the mean is
    the weighted mean, greedy takes the heaviest component's mean, samples follow the
    weights; a gridworld config refuses it."""
    import math

    cfg = tiny_model_config(obs_kind="vector", obs_dim=ANT_OBS_DIM, action_kind="continuous",
                            n_actions=2, n_ctx=50, action_mixtures=2)  # fmt: skip
    model = build_model(cfg, seed=0).eval()
    assert cfg.n_action_outputs == 2 * (2 * 2 + 1)
    # weights 0.8 / 0.2; component means (+1, +1) and (-1, -1); std 1 and e^-1
    params = torch.tensor([[math.log(0.8), math.log(0.2), 1, 1, 0, 0, -1, -1, -1, -1]])
    a = torch.tensor([[0.5, -0.5]])
    want = math.log(
        0.8 * math.exp(-0.5 * (0.25 + 2.25)) / (2 * math.pi)
        + 0.2 * math.exp(-0.5 * (2.25 + 0.25) * math.e**2) * math.e**2 / (2 * math.pi)
    )
    torch.testing.assert_close(model.action_distribution(params).log_prob(a)[0], torch.tensor(want))
    torch.testing.assert_close(model.action_mean(params), torch.tensor([[0.6, 0.6]]))
    torch.testing.assert_close(model.act_continuous(params, True, None), torch.tensor([[1.0, 1]]))
    many = params.expand(4000, -1)
    drawn = model.act_continuous(many, False, torch.Generator().manual_seed(0))
    # P(a > 0) = 0.8 * Phi(1) (the heavy component) + 0.2 * Phi(-e) (the light one)
    want_pos = 0.8 * 0.5 * (1 + math.erf(1 / math.sqrt(2))) + 0.2 * 0.5 * (
        1 + math.erf(-math.e / math.sqrt(2))
    )
    assert abs((drawn[:, 0] > 0).float().mean().item() - want_pos) < 0.03
    with pytest.raises(ValueError, match="action_mixtures"):
        tiny_model_config(action_mixtures=2)


def test_unseen_transitions_come_from_each_environments_own_tasks(ant_model, tiny_model):
    """The composition analysis steers each unseen single transition: on ant these are single
    colours (0 -> 1, 1 -> 2, 2 -> 3, 3 -> 0), not the gridworld's colour pairs."""
    from analyses.composition import unseen_transitions
    from irl_lens.rollout.kit import env_kit

    ant = env_kit(ant_model)
    assert unseen_transitions(ant.pretrain_tasks, ant.colours_per_subgoal) == [
        "0-1", "1-2", "2-3", "3-0"]  # fmt: skip
    assert all(ant.parse_task(t) for t in ["0-1", "1-2", "2-3", "3-0"])
    grid = env_kit(tiny_model)
    assert unseen_transitions(grid.pretrain_tasks, grid.colours_per_subgoal) == [
        "0-1-2-3", "2-3-4-5", "4-5-6-7", "6-7-0-1"]  # fmt: skip


def test_discovery_scores_a_next_colour_heads_base_on_that_head_too():
    """Discovery's loss is the controlled base's pretraining loss plus the KL: on a base
    with a next-colour head, the head's weighted cross-entropy under control is part of it."""
    import dataclasses

    from irl_lens.data.dataset import Batch
    from irl_lens.hooks import run_with_metacontroller
    from irl_lens.models.metacontroller import MetacontrollerConfig, build_metacontroller
    from irl_lens.presets import DISCOVER as DISCOVER_PRESETS
    from irl_lens.train import discover as disc

    cfg = tiny_model_config(obs_kind="vector", obs_dim=ANT_OBS_DIM, action_kind="continuous",
                            n_actions=8, n_ctx=500, next_colour_weight=0.5)  # fmt: skip
    model = build_model(cfg, seed=0).eval()
    mc = build_metacontroller(MetacontrollerConfig(d_model=cfg.d_model), seed=0)
    obs = _walk([1, 5, 5, 2, 7, 7, 3, 3])
    batch = Batch(obs=obs[:, :-1], action=torch.zeros(1, 7, 8), next_obs=obs[:, 1:],
                  subgoal=torch.zeros(1, 7, dtype=torch.long),
                  target_colour=torch.zeros(1, 7, dtype=torch.long), mask=torch.ones(1, 7),
                  episodes=np.zeros(1, dtype=np.int64))  # fmt: skip
    dcfg = dataclasses.replace(DISCOVER_PRESETS["tiny"], alpha=0.0)
    parts = disc._loss(model, mc, 1, batch, dcfg, lam=0.0, generator=None, sample=False)
    with torch.no_grad():
        out, _ = run_with_metacontroller(model, mc, 1, batch.obs, batch.mask, sample=False)
        weighted, ce = model.auxiliary_loss(out, batch.next_obs, batch.mask)
    assert ce > 0
    torch.testing.assert_close(parts.loss.detach(), parts.action_nll + weighted)
    # the head's cross-entropy is reported on its own, so a run's loss decomposes
    torch.testing.assert_close(parts.next_colour_nll, ce)
    assert parts.stats()["next_colour_nll"] == pytest.approx(float(ce))
    plain = build_model(dataclasses.replace(cfg, next_colour_weight=0.0), seed=0).eval()
    no_head = disc._loss(plain, mc, 1, batch, dcfg, lam=0.0, generator=None, sample=False)
    assert no_head.next_colour_nll is None and "next_colour_nll" not in no_head.stats()
