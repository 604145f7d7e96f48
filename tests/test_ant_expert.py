"""The ant PPO expert (GAE, normaliser, learning on a tiny budget, resume), ant datasets,
the shipped expert, and an ant base model through pretrain and probe."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from irl_lens.data.dataset import load_dataset  # noqa: E402
from irl_lens.data.generate_ant import generate_ant  # noqa: E402
from irl_lens.envs.ant import ANT_OBS_DIM  # noqa: E402
from irl_lens.runs import RunError  # noqa: E402
from irl_lens.train import ppo  # noqa: E402
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
    adv, ret = ppo.gae(rewards, values, dones, last, g, lam)
    np.testing.assert_allclose(adv[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(ret, adv + values, rtol=1e-6)


def test_running_norm_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (500, 4))
    norm = ppo.RunningNorm(4)
    for chunk in np.array_split(x, 7):
        norm.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(norm.mean.numpy(), x.mean(0), rtol=1e-4)
    np.testing.assert_allclose(norm.var.numpy(), x.var(0), rtol=1e-3)


def test_ppo_improves_return_on_tiny_budget(tmp_path):
    # A one-step reward (gamma 0) of -|a|^2: learnable in a few updates, so a working
    # PPO (sampling, log-probs, surrogate, optimiser) must raise the reward per step.
    cfg = ppo.PPOConfig(
        total_steps=8 * 32 * 10, n_envs=8, n_steps=32, n_minibatches=2, lr=3e-3, gamma=0.0,
        velocity_weight=0.0, subgoal_bonus=0.0, success_bonus=0.0, alive_bonus=0.0,
        ctrl_cost=1.0,
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
    with pytest.raises(RunError, match="not empty"):
        ppo.train_ant_expert(out, cfg, seed=0, progress=False)
    agent = ppo.load_expert(out)
    assert isinstance(agent, ppo.GaussianAgent)


@pytest.fixture(scope="module")
def random_agent():
    return ppo.build_agent(ppo.PPOConfig(), seed=0).eval()


def test_dataset_round_trip_and_determinism(tmp_path, random_agent):
    ds = generate_ant(6, "clean", seed=3, expert=random_agent, n_envs=6, progress=False)
    assert ds.meta["env"] == "ant" and ds.meta["obs_kind"] == "vector"
    assert ds.meta["action_kind"] == "continuous" and ds.meta["sampling"] == "mean"
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
    card = json.loads(ppo.SHIPPED_EXPERT.with_suffix(".json").read_text())
    assert "train_command" in card and card["ppo"] == ppo.PPOConfig.from_dict(card["ppo"]).to_dict()
    agent = ppo.load_expert()
    n = 48
    res = ppo.evaluate_expert(agent, n, None, deterministic=True, seed=21, progress=False)
    p = card["summary"]["eval/pretrain_success"]
    assert abs(res["success"] - p) <= 3 * np.sqrt(max(p * (1 - p), 0.01) / n) + 0.05, (res, p)
    ds = generate_ant(8, "clean", seed=0, progress=False)
    assert ds.meta["sampling"] == "mean" and ds.n_episodes == 8


def test_ant_base_pretrains_and_probes(tmp_path, capsys, random_agent):
    data = tmp_path / "data"
    generate_ant(12, "pretrain", seed=0, expert=random_agent, progress=False).save(data)
    run = tmp_path / "base"
    code, out, err = _run(
        ["-q", "pretrain", str(data), "--out", str(run), "--preset", "tiny", "--steps", "6"],
        capsys,
    )
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
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
    # supervised controllers and the metacontroller accept the ant run unchanged
    code, out, err = _run(
        ["-q", "controllers", str(run), "--data", str(data), "--preset", "tiny",
         "--layers", "0,1", "--steps", "3"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    ctl = json.loads((run / "controllers" / "summary.json").read_text())
    assert np.isfinite(ctl["controllers/val_nll_layer_1"]) and "(ant)" in out
    code, out, err = _run(
        ["-q", "discover", str(run), "--out", str(tmp_path / "mc"), "--data", str(data),
         "--preset", "tiny", "--steps", "3"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    mc = json.loads((tmp_path / "mc" / "summary.json").read_text())
    assert np.isfinite(mc["discover/action_nll"]) and "switching/f1_tol1" in mc
    assert not any(k.startswith("steering/") for k in mc)  # no ant rollout engine yet


def test_cli_rejects_bad_ant_input(tmp_path, capsys):
    code, _, err = _run(["-q", "data", "ant", "--eps", "0.1", "--out", str(tmp_path / "x")],
                        capsys)  # fmt: skip
    assert code == 2 and "--eps" in err
    code, _, err = _run(["-q", "expert-eval", str(tmp_path / "missing")], capsys)
    assert code == 2 and "missing" in err


def test_expert_features_are_the_documented_quantities():
    from irl_lens.envs.ant import EXPERT_EXTRA_DIM, BatchedAntPinpad, direction_map

    env = BatchedAntPinpad(3)
    env.reset(seed=5)
    env.step(np.random.default_rng(0).uniform(-0.3, 0.3, (3, 8)))
    extra, way = env.expert_features()
    assert extra.shape == (3, EXPERT_EXTRA_DIM)
    onehot = extra[:, :64].reshape(3, 16, 4)
    for i in range(3):
        dirs, _ = direction_map(env.layout[i], int(env.target_colour()[i]))
        np.testing.assert_array_equal(onehot[i].argmax(1)[dirs >= 0], dirs[dirs >= 0])
        assert onehot[i][dirs < 0].sum() == 0 and onehot[i].sum() == (dirs >= 0).sum()
    w, x, y, z = env.qpos[:, 3:7].T
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y**2 + z**2))
    rot = np.stack([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])  # torso -> world
    back_way = np.einsum("abn,nb->na", rot, extra[:, 64:66])
    back_vel = np.einsum("abn,nb->na", rot, extra[:, 66:68])
    np.testing.assert_allclose(back_way, way, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(way, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(back_vel, env.velocity, atol=1e-4)
    assert np.abs(env.velocity).sum() > 0


def test_bench_reports_ant_throughput():
    from irl_lens.bench import ant_throughput

    out = ant_throughput(seconds=0.05, seed=0, data_episodes=4)
    assert out["ant_env_steps_per_s"] > out["ant_env_steps_per_s_single"] > 0
    assert out["ant_data_episodes_per_s"] > 0 and out["ant_data_steps_per_s"] > 0
