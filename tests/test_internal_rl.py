"""Internal RL, raw-action RL, comparison: gradients, switching, KV-cache replay, PPO maths."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from analyses import rl_curves
from irl_lens.data.generate import generate_gridworld
from irl_lens.models.policy import PolicyConfig, build_policy
from irl_lens.presets import DISCOVER as DISCOVER_PRESETS
from irl_lens.presets import PRETRAIN as BASE_PRESETS
from irl_lens.rollout.grid import GridRolloutEngine as RolloutEngine
from irl_lens.rollout.grid import seeded_env
from irl_lens.rollout.kit import env_kit
from irl_lens.rollout.switchers import MetacontrollerDriver
from irl_lens.train import discover as disc
from irl_lens.train import internal_rl as irl
from irl_lens.train import rl
from irl_lens.train.pretrain import pretrain
from irl_lens.train.raw_rl import raw_rl


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    ds = generate_gridworld(200, "pretrain", seed=0, progress=False)
    model_cfg, cfg = BASE_PRESETS["tiny"]
    pretrain(ds, root / "base", model_cfg, dataclasses.replace(cfg, checkpoint_every=1000),
             progress=False)  # fmt: skip
    clean = generate_gridworld(100, "clean", seed=0, progress=False)
    disc.discover(root / "base", clean, root / "mc", DISCOVER_PRESETS["tiny"], progress=False)
    return root


def _cfg(**kw):
    base = dict(episodes=32, batch_size=16, lr=1e-3, d_policy=16, epochs=2, checkpoint_every=1,
                sample_episodes=4, task="0-1-2-3")  # fmt: skip
    return rl.RLConfig(**(base | kw))


def test_advantages_and_clipped_loss_by_hand():
    adv = rl.trajectory_advantages(np.array([1.0, 0.0, 0.0, 1.0]))
    np.testing.assert_allclose(
        adv, [0.5 / 0.501, -0.5 / 0.501, -0.5 / 0.501, 0.5 / 0.501], rtol=1e-6
    )
    old = torch.tensor([[0.0, 0.0]])
    new = torch.log(torch.tensor([[1.5, 0.9]]))  # ratios 1.5 and 0.9
    a = torch.tensor([[2.0]])
    loss, clip_frac, _ = rl.clipped_surrogate(new, old, a, torch.ones(1, 2), clip=0.2)
    # min(1.5*2, 1.2*2) = 2.4 ; min(0.9*2, 0.9*2) = 1.8 ; loss = -(2.4 + 1.8) / 2
    assert loss.item() == pytest.approx(-2.1)
    assert clip_frac == 0.5
    loss, _, _ = rl.clipped_surrogate(new, old, -a, torch.ones(1, 2), clip=0.2)
    # negative advantage: min(-3.0, -2.4) = -3.0 ; min(-1.8, -1.8) = -1.8
    assert loss.item() == pytest.approx(2.4)


def test_policy_step_equals_forward_and_gradients_reach_every_parameter(runs_dir):
    base, mc, config = disc.load_metacontroller(runs_dir / "mc")
    policy = build_policy(PolicyConfig(d_model=base.cfg.d_model, n_z=mc.cfg.n_z, d_policy=16))
    kit = env_kit(base, int(config["layer"]))
    batch = irl.collect(kit, mc, policy, [0, 1, 2, 3], 16, seed=0, stream=0, threshold=0.5,
                        always_switch=False)  # fmt: skip
    assert batch.mask.sum() == batch.n_abstract.sum() > 0
    with torch.no_grad():
        mean, log_std = policy(batch.e)
        new = policy.log_prob(mean, log_std, batch.z)
    torch.testing.assert_close(new[batch.mask > 0], batch.logp[batch.mask > 0], atol=1e-4,
                               rtol=1e-4)  # fmt: skip
    with torch.no_grad():  # make the mean head non-zero so every weight gets a gradient
        policy.mean.weight.normal_(0, 0.1)
    batch.returns = np.arange(16, dtype=float)  # spread the advantages
    mean, log_std = policy(batch.e)
    new = policy.log_prob(mean, log_std, batch.z)
    adv = torch.from_numpy(rl.trajectory_advantages(batch.returns)).float()[:, None]
    loss, _, _ = rl.clipped_surrogate(new, new.detach() - 0.01, adv, batch.mask, 0.2)
    loss.backward()
    for name, p in policy.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_internal_step_returns_when_beta_crosses_and_replays_in_the_engine(runs_dir):
    env = irl.InternalPinpadEnv(runs_dir / "mc", task="0-1-2-3", threshold=0.5)
    e, _ = env.reset(seed=11)
    rng = np.random.default_rng(0)
    codes, actions, done = [], [], False
    while not done:
        z = rng.normal(size=env.action_space.shape).astype(np.float32)
        e, _, term, trunc, info = env.step(z)
        codes.append(z)
        actions.append(info["actions"])
        done = term or trunc
        # every beta before the last raw step stayed below the threshold
        assert all(b < 0.5 for b in info["beta"][:-1])
        if not done:
            assert info["beta"][-1] >= 0.5
    assert e.shape == env.observation_space.shape
    # replay: the same code sequence in the batched engine gives the same raw actions
    base, mc, config = disc.load_metacontroller(runs_dir / "mc")
    queue = list(codes)
    driver = MetacontrollerDriver(
        mc, threshold=0.5, propose=lambda state, sel: torch.from_numpy(queue.pop(0))[None]
    )
    benv = seeded_env(1, task=[0, 1, 2, 3])
    benv.reset(seed=[11])
    ro = RolloutEngine(base, int(config["layer"])).run(
        benv, controller_fn=driver, generator=torch.Generator().manual_seed(11)
    )
    flat = [a for chunk in actions for a in chunk]
    assert ro.action[0, : ro.length[0]].tolist() == flat
    assert not queue


def test_internal_rl_run_resume_and_task(runs_dir, tmp_path):
    summary = irl.internal_rl(runs_dir / "mc", tmp_path / "a", _cfg(), progress=False)
    assert set(summary) >= {"rl/final_success", "rl/episodes_to_0.5", "rl/episodes_per_s"}
    eps = json.loads((tmp_path / "a" / "episodes.json").read_text())["episodes"]
    assert eps and all(ep["subgoal"][0] == 0 for ep in eps)  # the task 0-1-2-3 is enforced
    from irl_lens.cli import main

    main(["internal-rl", str(runs_dir / "mc"), "--out", str(tmp_path / "t"), "--preset", "tiny",
          "--task", "4-5-2-3"])  # fmt: skip
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["task"] == "4-5-2-3"
    eps = json.loads((tmp_path / "t" / "episodes.json").read_text())["episodes"]
    assert all(ep["subgoal"][0] == 2 for ep in eps)  # the env pursues 4-5 first
    assert len(eps[0]["beta"]) == len(eps[0]["subgoal"])
    irl.internal_rl(runs_dir / "mc", tmp_path / "b", _cfg(), stop_after=1, progress=False)
    irl.internal_rl(runs_dir / "mc", tmp_path / "b", _cfg(), resume=True, progress=False)
    from safetensors.torch import load_file

    from irl_lens.runs import read_metrics

    keys = ("success", "loss", "approx_kl", "raw_steps")
    ra = [[r[k] for k in keys] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")]
    rb = [[r[k] for k in keys] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert ra == rb
    wa = load_file(tmp_path / "a" / "policy.safetensors")
    wb = load_file(tmp_path / "b" / "policy.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_raw_rl_finetunes_the_base_and_compare_groups_methods(runs_dir, tmp_path, capsys):
    raw_rl(runs_dir / "base", tmp_path / "raw", _cfg(), progress=False)
    irl.internal_rl(runs_dir / "mc", tmp_path / "int0", _cfg(), progress=False)
    irl.internal_rl(runs_dir / "mc", tmp_path / "int1", _cfg(seed=1), progress=False)
    comp = rl_curves.compare_runs([tmp_path / "raw", tmp_path / "int0", tmp_path / "int1"])
    labels = {g.label: g.n_runs for g in comp.groups}
    assert labels == {"raw_rl": 1, "internal_rl": 2}
    from irl_lens.cli import main

    main(["compare", str(tmp_path / "raw"), str(tmp_path / "int0"), str(tmp_path / "int1"),
          "--out", str(tmp_path / "cmp")])  # fmt: skip
    assert "internal_rl" in capsys.readouterr().out
    assert (tmp_path / "cmp" / "success_log.html").stat().st_size > 1000
    # success rates on different tasks are not compared: one line naming each run's task
    import shutil

    from tests.cli_helpers import run_cli

    shutil.copytree(tmp_path / "int1", tmp_path / "seen")
    config = json.loads((tmp_path / "seen" / "config.json").read_text())
    (tmp_path / "seen" / "config.json").write_text(json.dumps(config | {"task": "0-1-4-5"}))
    code, _, err = run_cli(["compare", str(tmp_path / "int0"), str(tmp_path / "seen")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "different tasks" in err and f"0-1-4-5: {tmp_path / 'seen'}" in err


def test_bench_times_internal_rl(runs_dir):
    from irl_lens.cli.bench import internal_rl_throughput

    base, mc, config = disc.load_metacontroller(runs_dir / "mc")
    mc.bench_layer = int(config["layer"])
    out = internal_rl_throughput(base, mc, seconds=0.01, seed=0, n_envs=16)
    assert out["internal_rl_rollout_episodes_per_s"] >= out["internal_rl_episodes_per_s"] > 0
    assert out["internal_rl_abstract_steps_per_episode"] >= 1


def test_raw_update_recomputes_the_rollout_log_probs(runs_dir):
    """First PPO epoch: ratio 1 everywhere (sorted, truncated chunks == the rollout's logp)."""
    from irl_lens.models.base import load_base_model
    from irl_lens.train.raw_rl import collect_raw, raw_ppo_update

    model = load_base_model(runs_dir / "base")
    batch = collect_raw(model, [0, 1, 2, 3], 24, seed=0, stream=0)
    assert len(set(batch.length.tolist())) > 1  # lengths differ, so truncation matters
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stats = raw_ppo_update(model, opt, batch, _cfg(epochs=1), chunk=5)
    assert abs(stats["approx_kl"]) < 1e-5 and stats["clip_fraction"] == 0.0


def test_length_chunks_cover_every_episode_within_the_token_budget():
    from irl_lens.train.raw_rl import length_chunks

    lengths = np.array([500, 3, 120, 7, 500, 60, 1, 250, 9, 499])
    chunks = length_chunks(lengths, max_episodes=4, max_tokens=600)
    np.testing.assert_array_equal(np.sort(np.concatenate(chunks)), np.arange(len(lengths)))
    np.testing.assert_array_equal(np.concatenate(chunks), np.argsort(lengths, kind="stable"))
    for c in chunks:
        assert len(c) <= 4 and (len(c) == 1 or len(c) * lengths[c].max() <= 600)
    assert [len(c) for c in chunks] == [4, 2, 1, 1, 1, 1]  # short ones share, long ones don't
