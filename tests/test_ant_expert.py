"""The ant PPO expert (GAE, normaliser, learning on a tiny budget, resume), ant datasets,
the shipped expert, and an ant base model through pretrain and probe."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from irl_lens.data.dataset import load_dataset  # noqa: E402
from irl_lens.data.generate_ant import generate_ant  # noqa: E402
from irl_lens.envs.ant_layout import ANT_OBS_DIM, CELL_SIZE  # noqa: E402
from irl_lens.models import ant_expert as ant_model  # noqa: E402
from irl_lens.runs import RunError  # noqa: E402
from irl_lens.train import ant_expert as ppo  # noqa: E402
from irl_lens.train import rl  # noqa: E402
from tests.cli_helpers import run_cli as _run  # noqa: E402


def test_gae_matches_hand_computation():
    rewards = np.array([[1.0], [0.0], [2.0]], dtype=np.float32)
    values = np.array([[0.5], [0.2], [1.0]], dtype=np.float32)
    dones = np.array([[0.0], [1.0], [0.0]], dtype=np.float32)  # episode ends after step 1
    last = np.array([0.7], dtype=np.float32)
    g, lam = 0.9, 0.8
    d2 = 2.0 + g * 0.7 - 1.0
    d1 = 0.0 - 0.2  # terminal: no bootstrap
    d0 = 1.0 + g * 0.2 - 0.5
    expected = np.array([d0 + g * lam * d1, d1, d2])
    adv, ret = rl.gae(rewards, values, dones, last, g, lam)
    np.testing.assert_allclose(adv[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(ret, adv + values, rtol=1e-6)


def test_running_norm_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (500, 4))
    norm = ant_model.RunningNorm(4)
    for chunk in np.array_split(x, 7):
        norm.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(norm.mean.numpy(), x.mean(0), rtol=1e-4)
    np.testing.assert_allclose(norm.var.numpy(), x.var(0), rtol=1e-3)


def test_ppo_improves_return_on_tiny_budget(tmp_path):
    # A one-step reward (gamma 0) of -|a|^2: learnable in a few updates, so a working
    # PPO (sampling, log-probs, surrogate, optimiser) must raise the reward per step.
    cfg = ppo.PPOConfig(
        total_steps=8 * 32 * 10, n_envs=8, n_steps=32, n_minibatches=2, lr=3e-3, gamma=0.0,
        velocity_weight=0.0, speed_bonus=0.0, subgoal_bonus=0.0, success_bonus=0.0,
        alive_bonus=0.0, fail_penalty=0.0, height_cost=0.0, ctrl_cost=1.0,
    )  # fmt: skip
    ppo.train_ant_expert(tmp_path / "e", cfg, seed=0, progress=False)
    recs = [json.loads(line) for line in (tmp_path / "e" / "metrics.jsonl").open()]
    rewards = [r["reward_per_step"] for r in recs]
    assert len(rewards) == 10
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.15, rewards
    assert recs[-1]["std"] < recs[0]["std"]


def test_resume_continues_and_checks_config(tmp_path):
    cfg = ppo.PPOConfig(total_steps=4 * 16 * 4, n_envs=4, n_steps=16, n_minibatches=2,
                        checkpoint_every=2)  # fmt: skip
    out = tmp_path / "e"
    first = ppo.train_ant_expert(out, cfg, seed=0, stop_after=2, progress=False)
    assert first["updates"] == 2 and not first["finished"]
    done = ppo.train_ant_expert(out, cfg, seed=0, resume=True, progress=False)
    assert done["updates"] == 4 and done["finished"]
    assert (out / "model.safetensors").is_file()
    updates = [json.loads(line)["update"] for line in (out / "metrics.jsonl").open()]
    assert updates == [1, 2, 3, 4]
    other = ppo.PPOConfig(total_steps=4 * 16 * 8, n_envs=4, n_steps=16, n_minibatches=2)
    with pytest.raises(RunError, match="differs"):
        ppo.train_ant_expert(out, other, seed=0, resume=True, progress=False)
    with pytest.raises(RunError, match="already holds a run of kind ant_expert"):
        ppo.train_ant_expert(out, cfg, seed=0, progress=False)
    agent = ant_model.load_expert(out)
    assert isinstance(agent, ant_model.GaussianAgent)
    # an expert trained in other cells (older runs saved no size: 1.5 m) is refused by name
    config = json.loads((out / "config.json").read_text())
    assert config["cell_size"] == CELL_SIZE
    for saved in ({"cell_size": CELL_SIZE + 0.5}, {}):
        legacy = {k: v for k, v in config.items() if k != "cell_size"} | saved
        (out / "config.json").write_text(json.dumps(legacy))
        trained = saved.get("cell_size", ant_model.LEGACY_CELL_SIZE)
        with pytest.raises(RunError, match=rf"trained in {trained} m cells.*{CELL_SIZE} m cells"):
            ant_model.load_expert(out)
        with pytest.raises(RunError, match=rf"trained in {trained} m cells"):
            ppo.train_ant_expert(out, cfg, seed=0, resume=True, progress=False)
    # the torque scales travel with the expert; a loaded expert acts at the deployed one;
    # runs saved before they existed trained and act at 1.0
    (out / "config.json").write_text(json.dumps(config))
    assert (cfg.torque_scale, cfg.deploy_torque_scale) == (0.7, 0.5)
    assert ant_model.load_expert(out).torque_scale == 0.5
    for dropped, acts in (
        (("deploy_torque_scale",), 0.7),
        (("torque_scale", "deploy_torque_scale"), 1.0),
    ):
        legacy = config | {"ppo": {k: v for k, v in config["ppo"].items() if k not in dropped}}
        (out / "config.json").write_text(json.dumps(legacy))
        assert ant_model.load_expert(out).torque_scale == acts
        with pytest.raises(RunError, match="differs"):  # not what the defaults ask for now
            ppo.train_ant_expert(out, cfg, seed=0, resume=True, progress=False)


def test_torque_scale_scales_the_experts_torques():
    # Same agent weights at scale 1.0 and 0.5: every episode's first torques (same seed, same
    # start) are the clipped actions times the scale, in the env and in the dataset.
    full = ant_model.build_agent(ppo.PPOConfig(torque_scale=1.0), seed=0).eval()
    with torch.no_grad():
        full.actor[-1].weight.mul_(400.0)  # big means, so the clip to [-1, 1] matters
    half = ant_model.build_agent(ppo.PPOConfig(torque_scale=0.5), seed=0).eval()
    half.load_state_dict(full.state_dict())
    assert half.torque_scale == 0.5
    first = {}
    for agent in (full, half):
        ds = generate_ant(4, "clean", seed=5, expert=agent, n_envs=4, progress=False)
        first[agent.torque_scale] = ds.arrays["action"][ds.arrays["episode_offsets"][:-1]]
    assert np.abs(first[1.0]).max() == 1.0 and (np.abs(first[1.0]) == 1.0).mean() > 0.3
    np.testing.assert_allclose(first[0.5], 0.5 * first[1.0], atol=1e-7)
    with pytest.raises(ValueError, match="torque_scale"):
        ppo.PPOConfig(torque_scale=0.0)


@pytest.fixture(scope="module")
def random_agent():
    return ant_model.build_agent(ppo.PPOConfig(), seed=0).eval()


def test_dataset_round_trip_and_determinism(tmp_path, random_agent):
    ds = generate_ant(6, "clean", seed=3, expert=random_agent, n_envs=6, progress=False)
    assert ds.meta["env"] == "ant" and ds.meta["obs_kind"] == "vector"
    assert ds.meta["action_kind"] == "continuous" and ds.meta["sampling"] == "mean"
    assert ds.meta["cell_size"] == CELL_SIZE
    assert ds.meta["mujoco"] == mujoco.__version__  # the physics build the episodes came from
    assert ds.arrays["obs"].shape == (ds.n_steps, ANT_OBS_DIM)
    assert ds.arrays["action"].shape == (ds.n_steps, 8)
    assert np.abs(ds.arrays["action"]).max() <= 1.0
    assert ds.arrays["layout"].shape == (6, 16)
    # every ant colour is its own subgoal; labels are valid colours before the end
    np.testing.assert_array_equal(ds.arrays["subgoal"], ds.arrays["target_colour"])
    assert set(np.unique(ds.arrays["subgoal"])) <= {0, 1, 2, 3}
    ds.save(tmp_path / "d")
    back = load_dataset(tmp_path / "d")
    for key, arr in ds.arrays.items():
        np.testing.assert_array_equal(back.arrays[key], arr)
    again = generate_ant(6, "clean", seed=3, expert=random_agent, n_envs=6, progress=False)
    np.testing.assert_array_equal(again.arrays["obs"], ds.arrays["obs"])
    sampled = generate_ant(6, "pretrain", seed=3, expert=random_agent, n_envs=6, progress=False)
    assert sampled.meta["sampling"] == "gaussian"
    assert not np.array_equal(sampled.arrays["obs"][:50], ds.arrays["obs"][:50])


def test_shipped_expert_matches_its_card():
    # The weights in the package reproduce the success their card reports, and the data
    # commands use them by default.
    card = json.loads(ant_model.SHIPPED_EXPERT.with_suffix(".json").read_text())
    assert "train_command" in card and card["ppo"] == ppo.saved_ppo_config(card["ppo"]).to_dict()
    agent = ant_model.load_expert()
    assert agent.torque_scale == ant_model.deployed_torque_scale(ppo.saved_ppo_config(card["ppo"]))
    n = 48
    res = ppo.evaluate_expert(agent, n, None, deterministic=True, seed=21, progress=False)
    p = card["summary"]["eval/pretrain_success"]
    ends = res["end_reasons"]  # how the episodes ended: a partition of them
    assert abs(sum(ends.values()) - 1.0) < 1e-9 and ends["success"] == res["success"]
    assert abs(res["success"] - p) <= 3 * np.sqrt(max(p * (1 - p), 0.01) / n) + 0.05, (res, p)
    ds = generate_ant(32, "clean", seed=0, progress=False)
    assert ds.meta["sampling"] == "mean" and ds.n_episodes == 32
    # data from the shipped expert has its success (card: 0.900 over 500 episodes; such an
    # expert falls below 22 of 32 in 0.017% of draws, a 0.5 one reaches it in 2.5%; seeded)
    assert ds.meta["success_rate"] >= 22 / 32, ds.meta["success_rate"]


def test_ant_base_pretrains_and_probes(tmp_path, capsys, random_agent, monkeypatch):
    data = tmp_path / "data"
    generate_ant(12, "pretrain", seed=0, expert=random_agent, progress=False).save(data)
    run = tmp_path / "base"
    code, out, err = _run(
        ["-q", "pretrain", str(data), "--out", str(run), "--preset", "tiny", "--steps", "6",
         "--path-features", "--heading-features", "--future-horizon", "25",
         "--next-colour-weight", "0.5", "--underfoot-features"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["path_features"] and config["model"]["heading_features"]
    assert config["model"]["underfoot_features"]
    assert config["model"]["future_horizon"] == 25
    assert config["model"]["next_colour_weight"] == 0.5
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(np.isfinite(rec.get("train/next_colour_nll", np.nan)) for rec in logged)
    assert config["model"]["n_ctx"] == 500 and config["model"]["obs_loss_weight"] == 10.0
    assert config["model"]["action_kind"] == "continuous"
    summary = json.loads((run / "summary.json").read_text())
    assert np.isfinite(summary["eval/action_nll"]) and summary["eval/action_mse"] > 0
    code, out, err = _run(
        ["-q", "probe", str(run), "--data", str(data), "--episodes", "12", "--no-checkpoints"],
        capsys,
    )
    assert code == 0, err
    probe = json.loads((run / "probe" / "summary.json").read_text())
    assert any(k.startswith("probe/") for k in probe)
    # beside the majority class: the one-observation heading rule, what the inputs say
    assert 0 <= probe["probe/heading_rule"] <= 1 and "heading rule" in out
    # supervised controllers and the metacontroller accept the ant run unchanged; the
    # controllers are run on the ant post task 0-1-2-3 in the ant rollout engine
    code, out, err = _run(
        ["-q", "controllers", str(run), "--data", str(data), "--preset", "tiny",
         "--layers", "0,1", "--steps", "3", "--episodes", "3"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    ctl = json.loads((run / "controllers" / "summary.json").read_text())
    assert np.isfinite(ctl["controllers/val_nll_layer_1"]) and "on task 0-1-2-3" in out
    assert 0 <= ctl["controllers/success_layer_1"] <= 1 and ctl["controllers/n_subgoals"] == 4
    assert ctl["controllers/n_episodes"] == 3 and "controllers/base_success" in ctl
    assert (run / "controllers" / "controllers_reach.html").is_file()
    # how the sampled episodes ended, per layer and for the base: shares of every episode
    # that sum to one, success among them, in summary.json and in the printed table
    for name in ("layer_0", "layer_1"):
        ends = {k.split("/")[2][: -len(name) - 1]: v for k, v in ctl.items()
                if k.startswith("controllers/end/") and k.endswith(name)}  # fmt: skip
        assert {"success", "wrong_colour", "wall", "timeout"} <= set(ends)
        assert sum(ends.values()) == pytest.approx(1.0)
        assert ends["success"] == pytest.approx(ctl[f"controllers/success_{name}"])
    base_ends = {k: v for k, v in ctl.items() if k.startswith("controllers/base_end/")}
    assert sum(base_ends.values()) == pytest.approx(1.0) and "how sampled episodes ended" in out
    ctl_config = json.loads((run / "controllers" / "config.json").read_text())
    assert ctl_config["controller"]["rank"] is None  # the paper's ant controllers: full matrices
    # discover takes the preset's KL settings unless told (the quick ant preset's rate is
    # "switch"): here a tiny preset with that rate and alpha
    import dataclasses

    from irl_lens import presets

    tiny = presets.get("tiny", "ant")
    monkeypatch.setitem(presets._PRESETS, ("tiny", "ant"), dataclasses.replace(
        tiny, discover=dataclasses.replace(tiny.discover, rate="switch", alpha=0.7)))  # fmt: skip
    code, out, err = _run(
        ["-q", "discover", str(run), "--out", str(tmp_path / "mc"), "--data", str(data),
         "--preset", "tiny", "--steps", "3", "--episodes", "3"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    mc_train = json.loads((tmp_path / "mc" / "config.json").read_text())["train"]
    assert (mc_train["rate"], mc_train["alpha"]) == ("switch", 0.7)
    mc = json.loads((tmp_path / "mc" / "summary.json").read_text())
    assert np.isfinite(mc["discover/action_nll"]) and "switching/f1_tol1" in mc
    # read against the base alone on the same episodes, the next-colour head's too
    assert np.isfinite(mc["discover/base_action_nll"]) and "(the base alone: " in out
    assert np.isfinite(mc["discover/base_next_colour_nll"]) and "next-colour cross" in out
    # steering (one-colour tasks, then 0-1-2-3) and prior sampling ran in the ant engine
    assert 0 <= mc["prior/success"] <= 1 and mc["prior/n_episodes"] == 3
    assert any(k.startswith("steering/steered_subgoal_") for k in mc)
    # internal RL over the ant metacontroller's codes, and raw-action RL on the ant base
    for cmd in (["internal-rl", str(tmp_path / "mc")], ["raw-rl", str(run)]):
        rl = tmp_path / cmd[0]
        code, out, err = _run(
            ["-q", *cmd, "--out", str(rl), "--preset", "tiny", "--episodes", "32",
             "--batch-size", "16", "--task", "post"],
            capsys,
        )  # fmt: skip
        assert code == 0, err
        assert json.loads((rl / "config.json").read_text())["task"] == "0-1-2-3"
        summary = json.loads((rl / "summary.json").read_text())
        assert 0 <= summary["rl/final_success"] <= 1 and summary["rl/episodes"] == 32
        episode = json.loads((rl / "episodes.json").read_text())["episodes"][0]
        assert episode["env"] == "ant" and len(episode["xy"]) == len(episode["subgoal"])
    mc_config = json.loads((tmp_path / "mc" / "config.json").read_text())["metacontroller"]
    assert mc_config["rank"] is None  # the paper's ant decoder writes a full matrix
    # raw-action RL takes the preset's raw-action learning rate (quick ant: 3e-5), internal
    # RL the preset's RL rate; --lr overrides it
    assert presets.get("quick", "ant").raw_rl_lr == 3e-5
    monkeypatch.setitem(presets._PRESETS, ("tiny", "ant"), dataclasses.replace(
        presets.get("tiny", "ant"), raw_rl_lr=2e-5))  # fmt: skip
    for extra, lr in (([], 2e-5), (["--lr", "7e-4"], 7e-4)):
        rl = tmp_path / f"raw-lr-{lr}"
        code, out, err = _run(
            ["-q", "raw-rl", str(run), "--out", str(rl), "--preset", "tiny", "--episodes", "2",
             "--batch-size", "2", *extra],
            capsys,
        )  # fmt: skip
        assert code == 0, err
        assert json.loads((rl / "config.json").read_text())["train"]["lr"] == lr
    assert (
        json.loads((tmp_path / "internal-rl" / "config.json").read_text())["train"]["lr"]
        == presets.get("tiny", "ant").rl.lr
    )


def test_cli_rejects_bad_ant_input(tmp_path, capsys):
    code, _, err = _run(["-q", "data", "ant", "--eps", "0.1", "--out", str(tmp_path / "x")],
                        capsys)  # fmt: skip
    assert code == 2 and "--eps" in err
    code, _, err = _run(["-q", "expert-eval", str(tmp_path / "missing")], capsys)
    assert code == 2 and "missing" in err
    code, _, err = _run(["-q", "expert", "ant", "--out", str(tmp_path / "e"), "--yaw-cost", "-1"],
                        capsys)  # fmt: skip
    assert code == 2 and "--yaw-cost" in err
    code, _, err = _run(["-q", "expert", "ant", "--out", str(tmp_path / "e"),
                         "--deploy-torque-scale", "0"], capsys)  # fmt: skip
    assert code == 2 and "--deploy-torque-scale" in err, err
    for args in (["--torque-scale", "0"], ["--torque-scale", "0.5", "--ship"]):
        code, _, err = _run(["-q", "expert-eval", str(tmp_path / "e"), *args], capsys)
        assert code == 2 and "--torque-scale" in err, err


def test_expert_cli_passes_reward_settings(tmp_path, capsys):
    out = tmp_path / "e"
    args = ["-q", "expert", "ant", "--out", str(out), "--steps", "64", "--n-envs", "1",
            "--eval-episodes", "0", "--yaw-cost", "0.25", "--lateral-cost", "0.5",
            "--fail-penalty", "20",
            "--torque-scale", "0.6", "--deploy-torque-scale", "0.5"]  # fmt: skip
    code, _, err = _run(args, capsys)
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())["ppo"]
    assert (saved["yaw_cost"], saved["lateral_cost"], saved["total_steps"]) == (0.25, 0.5, 64)
    assert saved["fail_penalty"] == 20
    assert (saved["torque_scale"], saved["deploy_torque_scale"]) == (0.6, 0.5)


def test_init_fine_tunes_from_an_experts_weights(tmp_path, capsys):
    from safetensors.torch import load_file

    small = {"n_envs": 4, "n_steps": 16, "n_minibatches": 2}
    cfg = ppo.PPOConfig(total_steps=4 * 16 * 2, **small)
    src = tmp_path / "src"
    ppo.train_ant_expert(src, cfg, seed=0, progress=False)
    # a near-zero learning rate: after one update the weights are still the source's,
    # while a fresh network of another seed is far from them
    tiny = ppo.PPOConfig(total_steps=4 * 16, lr=1e-12, **small)
    ft = tmp_path / "ft"
    ppo.train_ant_expert(ft, tiny, seed=5, init=src, progress=False)
    fresh = ant_model.build_agent(tiny, seed=5).state_dict()
    start, end = load_file(str(src / "model.safetensors")), load_file(str(ft / "model.safetensors"))
    for name, value in start.items():
        if name.startswith("norm."):  # the input statistics absorb the new rollout
            continue
        torch.testing.assert_close(end[name], value, rtol=0, atol=1e-8)
        assert not torch.allclose(fresh[name], value), name
    init = json.loads((ft / "config.json").read_text())["init"]
    assert init["from"] == str(src) and init["made_with"]["seed"] == 0
    assert init["sha256"] == __import__("hashlib").sha256(
        (src / "model.safetensors").read_bytes()).hexdigest()  # fmt: skip
    # resuming from other weights than it started from, a non-expert or another width: refused
    with pytest.raises(RunError, match="started from other weights"):
        ppo.train_ant_expert(ft, tiny, seed=5, resume=True, progress=False)
    wide = ppo.PPOConfig(total_steps=4 * 16, hidden=32, **small)
    with pytest.raises(RunError, match="hidden width is 256, this run's 32"):
        ppo.train_ant_expert(tmp_path / "w", wide, seed=0, init=src, progress=False)
    code, _, err = _run(["-q", "expert", "ant", "--out", str(tmp_path / "x"), "--steps", "64",
                         "--init", str(tmp_path)], capsys)  # fmt: skip
    assert code == 2 and "--init expert run config" in err, err


def _quat_mul(a, b) -> np.ndarray:
    import mujoco

    out = np.zeros(4)
    mujoco.mju_mulQuat(out, np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return out


def _relabelled_pair(seed: int = 3):
    """Two envs holding the *same* physical ant, the second with its torso frame turned by
    -90 degrees and its legs relabelled by the leg rotation P (so its canonical quadrant is
    one more)."""
    from irl_lens.envs.ant_batch import BatchedAntPinpad, leg_rotation

    p = leg_rotation()
    env = BatchedAntPinpad(2, n_threads=1)
    env.reset(seed=seed)
    for i in (0, 1):
        env.set_episode(i, env.tasks[0], env.layout[0].copy(), int(env.cell[0]))
    rng = np.random.default_rng(seed)
    q, v = env.qpos[0].copy(), env.qvel[0].copy()
    q[3:7] = _quat_mul(q[3:7], [np.cos(0.1), np.sin(0.1), 0.0, 0.0])  # tilted torso
    q[7:] = rng.uniform(-0.3, 0.3, 8) + np.array([0, 0.8, 0, -0.8, 0, -0.8, 0, 0.8])
    v[:] = rng.uniform(-0.5, 0.5, 14)
    q2, v2 = q.copy(), v.copy()
    q2[3:7] = _quat_mul(q[3:7], [np.cos(-np.pi / 4), 0.0, 0.0, np.sin(-np.pi / 4)])
    q2[7:] = p @ q[7:]
    v2[3:6] = [-v[4], v[3], v[5]]  # body angular velocity in the turned frame
    v2[6:] = p @ v[6:]
    env._state[0, env._qpos_sl], env._state[0, env._qvel_sl] = q, v
    env._state[1, env._qpos_sl], env._state[1, env._qvel_sl] = q2, v2
    return env


def test_leg_rotation_is_a_symmetry_of_the_ant():
    from irl_lens.envs.ant_batch import leg_rotation

    p = leg_rotation()
    np.testing.assert_array_equal(np.linalg.matrix_power(p, 4), np.eye(8))
    np.testing.assert_array_equal(p @ p.T, np.eye(8))
    assert not np.array_equal(np.linalg.matrix_power(p, 2), np.eye(8))
    # The relabelled ant is the same body: driven by the same canonical actions (mapped
    # back through each env's quadrant), both follow the same path, bit for bit.
    env = _relabelled_pair()
    rng = np.random.default_rng(0)
    feats, quadrant, _ = env.expert_view()
    assert (quadrant[1] - quadrant[0]) % 4 == 1
    for _ in range(15):
        np.testing.assert_allclose(feats[0], feats[1], atol=1e-5)
        a = np.repeat(rng.uniform(-1, 1, (1, 8)), 2, axis=0)
        env.step(env.controls(a, quadrant))
        feats, quadrant, _ = env.expert_view()
    np.testing.assert_allclose(env.xy[0], env.xy[1], atol=1e-9)
    assert np.linalg.norm(env.xy[0] - env._centres[env.cell[0]]) > 0  # it moved


def test_controls_map_canonical_joints_to_actuators():
    from irl_lens.envs.ant_batch import BatchedAntPinpad, leg_rotation

    env = BatchedAntPinpad(4, n_threads=1)
    names = [env.model.joint(int(j)).name for j in env.model.actuator_trnid[:, 0]]
    joint_order = ["hip_1", "ankle_1", "hip_2", "ankle_2", "hip_3", "ankle_3", "hip_4", "ankle_4"]
    a = np.arange(1.0, 9.0)[None].repeat(4, 0)
    ctrl = env.controls(a, np.arange(4))
    by_name = [dict(zip(names, row, strict=True)) for row in ctrl]
    assert [by_name[0][j] for j in joint_order] == list(a[0])  # quadrant 0: only reordering
    for k in range(4):  # quadrant k: canonical leg i drives physical leg i + k
        real = np.linalg.matrix_power(leg_rotation(), k) @ a[k]
        assert [by_name[k][j] for j in joint_order] == list(real)
    # hip_1's torque goes to leg 2 after one turn, ankle_1's with its sign flipped
    assert by_name[1]["hip_2"] == 1.0 and by_name[1]["ankle_2"] == -2.0


def test_expert_view_is_the_documented_quantities():
    from irl_lens.envs.ant_batch import EXPERT_DIM, BatchedAntPinpad

    env = BatchedAntPinpad(3, n_threads=1)
    env.reset(seed=5)
    env.step(np.random.default_rng(0).uniform(-0.3, 0.3, (3, 8)))
    feats, quadrant, way = env.expert_view()
    assert feats.shape == (3, EXPERT_DIM) and feats.dtype == np.float32
    np.testing.assert_allclose(way, env.waypoints(), atol=1e-12)
    np.testing.assert_allclose(feats[:, 0], env.qpos[:, 2], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(feats[:, 1:4], axis=1), 1.0, atol=1e-5)
    assert (feats[:, 3] > 0.9).all()  # nearly upright: "up" is mostly body z
    speed = np.linalg.norm(env.qvel[:, :3], axis=1)
    np.testing.assert_allclose(np.linalg.norm(feats[:, 4:7], axis=1), speed, rtol=1e-5)
    way_c = feats[:, 26:29]
    np.testing.assert_allclose(np.linalg.norm(way_c, axis=1), 1.0, atol=1e-5)
    angle = np.arctan2(way_c[:, 1], way_c[:, 0])
    assert (np.abs(angle) <= np.pi / 4 + 1e-6).all()  # fresh frames: the nearest quadrant
    assert ((feats[:, 29] >= 0) & (feats[:, 29] <= 2.0)).all()


def test_canonical_frame_has_hysteresis():
    from irl_lens.envs.ant_batch import QUADRANT_HYSTERESIS as H
    from irl_lens.envs.ant_batch import BatchedAntPinpad

    env = BatchedAntPinpad(1, n_threads=1)
    env.reset(seed=5)
    way = env.waypoints()[0]
    phi = np.arctan2(way[1], way[0])
    # waypoint at 45 + delta degrees left of the torso's x axis, previous frame `prev`
    for delta, prev, expected in ((0.5 * H, 0, 0), (1.5 * H, 0, 1), (0.5 * H, -1, 1),
                                  (-0.5 * H, 1, 1), (-1.5 * H, 1, 0), (-0.5 * H, -1, 0),
                                  (-np.pi / 2 + 0.5 * H, 3, 3)):  # fmt: skip
        yaw = phi - (np.pi / 4 + delta)
        env._state[0, env._qpos_sl][3:7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        env._quadrant[0] = prev
        _, quadrant, _ = env.expert_view()
        assert quadrant[0] == expected, (delta / H, prev)


def test_bench_reports_ant_throughput():
    from irl_lens.cli.bench import ant_throughput

    out = ant_throughput(seconds=0.05, seed=0, data_episodes=4)
    assert out["ant_env_steps_per_s"] > out["ant_env_steps_per_s_single"] > 0
    assert out["ant_data_episodes_per_s"] > 0 and out["ant_data_steps_per_s"] > 0


def _corridor(straight: bool):
    """``(env, cell, u, u_next)``: a one-env ant whose torso's cell has a shortest-path
    direction ``u`` and whose next path cell continues along ``u`` (straight) or turns."""
    from irl_lens.envs.ant_batch import BatchedAntPinpad

    dirs_xy = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=float)
    env = BatchedAntPinpad(1, n_threads=1)
    for seed in range(200):
        env.reset(seed=seed)
        dirs = env.directions()[0]
        cell = int(env.cell[0])
        d = dirs[cell]
        if d < 0:
            continue
        u = dirs_xy[d]
        nxt = cell + int(u[0]) + 4 * int(u[1])
        if dirs[nxt] < 0:
            continue
        if (dirs[nxt] == d) == straight:
            return env, cell, u, dirs_xy[dirs[nxt]]
    raise AssertionError("no such corridor in 200 layouts")


@pytest.mark.parametrize("straight", [True, False], ids=["straight", "turn"])
def test_waypoints_pursue_a_point_lookahead_along_the_path(straight):
    from irl_lens.envs.ant_batch import LOOKAHEAD
    from irl_lens.envs.ant_layout import CELL_SIZE, cell_centres

    assert LOOKAHEAD == 0.75  # the hand values below assume it
    env, cell, u, u_next = _corridor(straight)
    perp = np.array([-u[1], u[0]])
    centre = cell_centres()[cell]
    if straight:  # (torso offset along u, across u) in cells -> expected direction
        cases = [((0.2, 0.0), u), ((0.0, 0.45), 0.75 * u - 0.45 * perp)]
    else:  # 0.4 along: the look-ahead point is 0.15 cells into the turn
        cases = [((0.0, 0.0), u), ((0.4, 0.0), 0.6 * u + 0.15 * u_next)]
    for (along, side), expected in cases:
        xy = centre + (along * u + side * perp) * CELL_SIZE
        env.set_torso(0, *xy)
        env.step(np.zeros((1, 8)))  # the rules see the new position (same cell)
        env.set_torso(0, *xy)
        assert int(env.cell[0]) == cell
        np.testing.assert_allclose(
            env.waypoints()[0], expected / np.linalg.norm(expected), atol=1e-9
        )


def test_shaped_reward_terms_match_hand_values():
    from irl_lens.envs.ant_batch import BatchedAntPinpad

    env = BatchedAntPinpad(4, n_threads=1)
    env.reset(seed=2)
    actions = np.random.default_rng(1).uniform(-1.5, 1.5, (4, 8))
    n_done = env.n_done.copy()
    env.step(actions)
    speed = np.array([1.0, 1.3, 2.0, 0.3])
    progress = np.array([0.6, -0.5, 1.2, 0.3])
    active = np.array([True, True, True, False])
    failed = np.array([False, True, False, False])
    off = {name: 0.0 for name in ("velocity_weight", "speed_bonus", "subgoal_bonus",
                                  "success_bonus", "ctrl_cost", "height_cost", "fail_penalty",
                                  "alive_bonus", "yaw_cost", "lateral_cost",
                                  "edge_cost")}  # fmt: skip
    lateral = np.array([0.8, 1.2, 1.6, 0.0])  # sqrt(speed^2 - progress^2)
    z = env.qpos[:, 2]
    terms = {
        "velocity_weight": progress,
        "speed_bonus": speed,
        "ctrl_cost": -(np.clip(actions, -1, 1) ** 2).sum(1),
        "height_cost": -np.maximum(z - 0.3, 0.0),  # soft_max_height 0.3: every torso above
        "fail_penalty": -failed.astype(float),
        "yaw_cost": -np.abs(env.qvel[:, 5]),
        "lateral_cost": -lateral,
        "edge_cost": -np.maximum(3.0 - env.clearance(), 0.0),  # edge_margin 3 m: all near
    }
    for name, per_unit in terms.items():
        assert np.abs(per_unit[active]).min() > 0 or name == "fail_penalty", name
        cfg = ppo.PPOConfig(**{**off, name: 2.0, "soft_max_height": 0.3, "edge_margin": 3.0})
        r = ppo.shaped_reward(cfg, np.zeros(4), n_done, env, actions, speed, progress, active,
                              failed)  # fmt: skip
        np.testing.assert_allclose(
            r, np.where(active, 2.0 * per_unit, 0.0), atol=1e-5, err_msg=name
        )


def test_clearance_is_the_distance_to_the_nearest_forbidden_cell():
    from irl_lens.envs.ant_batch import BatchedAntPinpad
    from irl_lens.envs.ant_layout import ANT_WALL, cell_centres

    env = BatchedAntPinpad(1, n_threads=1)
    env.reset(seed=0)
    layout = np.zeros(16, np.uint8)
    # cell = row * 4 + col; x along col. Around cell 6 (row 1, col 2, centre (1, -1)): the
    # wall at cell 5 (west), colour 2 at cell 10 (north), colour 0 (the target) at cell 7
    # (east), colour 3 at cell 3 (south-east: y grows with the row)
    layout[5], layout[10], layout[7], layout[3] = ANT_WALL, 3, 1, 4
    layout[12] = 2  # colour 1, far away
    env.set_episode(0, (0, 1, 2), layout, 6)
    centre = cell_centres()[6]
    k = CELL_SIZE / 2.0  # offsets and distances below in metres of a 2.0 m cell
    cases = [
        ((0.0, 0.0), 1.0),  # wall and colour 2 both 1 m away
        ((-0.9, 0.0), 0.1),  # 0.1 m from the wall
        ((0.9, 0.0), 1.0),  # next to the target colour: it does not count
        ((0.0, 0.7), 0.3),  # 0.3 m from colour 2
        ((0.9, -0.9), np.hypot(0.1, 0.1)),  # the corner of colour 3 (cell 3, diagonal)
    ]
    for (dx, dy), expected in cases:
        env.set_torso(0, centre[0] + k * dx, centre[1] + k * dy)  # still in its start cell
        assert env.cell[0] == 6 and env.target_colour()[0] == 0
        np.testing.assert_allclose(env.clearance(), [k * expected], atol=1e-9, err_msg=(dx, dy))
    # off the grid counts: cell 4 (row 1, col 0) is on the western edge
    env.set_episode(0, (0, 1, 2), layout, 4)
    env.set_torso(0, *(cell_centres()[4] + [-0.6 * k, 0.0]))
    np.testing.assert_allclose(env.clearance(), [0.4 * k], atol=1e-9)


def test_ant_data_can_keep_the_experts_mean_where_a_noisier_action_led(random_agent):
    """DART-style data (issue 32): executed actions get ``action_noise`` times the expert's
    noise, and ``record="mean"`` keeps the expert's intended action at the states they led to.
    The defaults are the paper's data, bitwise; the clean split refuses both."""
    kw = dict(seed=3, expert=random_agent, n_envs=4, progress=False)
    plain = generate_ant(4, "pretrain", **kw)
    same = generate_ant(4, "pretrain", action_noise=1.0, record="executed", **kw)
    np.testing.assert_array_equal(plain.arrays["action"], same.arrays["action"])
    assert "record" not in plain.meta
    executed = generate_ant(4, "pretrain", action_noise=3.0, **kw)
    kept = generate_ant(4, "pretrain", action_noise=3.0, record="mean", **kw)
    # the same noisy episodes (same states), different labels: the noise-free action there
    np.testing.assert_array_equal(executed.arrays["obs"], kept.arrays["obs"])
    assert not np.array_equal(executed.arrays["action"], kept.arrays["action"])
    assert kept.meta["record"] == "mean" and kept.meta["action_noise"] == 3.0
    mean_again = generate_ant(4, "clean", seed=3, expert=random_agent, n_envs=4, progress=False)
    assert mean_again.meta["sampling"] == "mean"
    with pytest.raises(ValueError, match="pretrain split"):
        generate_ant(4, "clean", record="mean", **kw)
    with pytest.raises(ValueError, match="record="):
        generate_ant(4, "pretrain", record="sampled", **kw)
