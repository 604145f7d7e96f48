"""Supervised controllers: training leaves the base frozen, folders round-trip, evaluation runs."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from analyses.controllability import controllability, success_figure, summary
from irl_lens.data.dataset import make_batch
from irl_lens.data.generate import generate_gridworld
from irl_lens.models.base import load_base_model
from irl_lens.presets import CONTROLLERS as PRESETS
from irl_lens.presets import PRETRAIN as BASE_PRESETS
from irl_lens.runs import RunError
from irl_lens.train.controllers import (
    ControllerTrainConfig,
    controlled_nll,
    frozen,
    load_controllers,
    train_layer,
    train_supervised_controllers,
)
from irl_lens.train.pretrain import pretrain


@pytest.fixture(scope="module")
def clean_ds():
    return generate_gridworld(120, "clean", seed=0, progress=False)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    ds = generate_gridworld(200, "pretrain", seed=0, progress=False)
    root = tmp_path_factory.mktemp("ctl")
    model_cfg, cfg = BASE_PRESETS["tiny"]
    cfg = dataclasses.replace(cfg, checkpoint_every=1000)
    pretrain(ds, root / "base", model_cfg, cfg, progress=False)
    return root / "base"


@pytest.fixture(scope="module")
def trained(base_run, clean_ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("ctl_out") / "controllers"
    cfg = dataclasses.replace(PRESETS["tiny"], steps=5)
    results = train_supervised_controllers(base_run, clean_ds, out, [0, 2], cfg, progress=False)
    return out, results


def test_lost_at_each_colour():
    from analyses.controllability import lost_at_each_colour

    lost = lost_at_each_colour([0.8, 0.6, 0.6, 0.0, 0.0])
    np.testing.assert_allclose(lost[:4], [0.2, 0.25, 0.0, 1.0])
    assert np.isnan(lost[4])  # nobody reached the fifth colour


def test_config_validation():
    for kwargs in ({"steps": 0}, {"lr": 0.0}, {"rank": 0}, {"weight_decay": -1.0},
                   {"dagger_rounds": -1}, {"dagger_episodes": 0}, {"dagger_steps": 0},
                   {"dagger_lr": 0.0}):  # fmt: skip
        with pytest.raises(ValueError, match="ControllerTrainConfig"):
            ControllerTrainConfig(**kwargs)


def test_training_lowers_the_nll_and_keeps_the_base_frozen(tiny_model, clean_ds):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    cfg = ControllerTrainConfig(steps=40, lr=2e-2, tokens_per_batch=2048, log_every=10)
    idx = np.arange(clean_ds.n_episodes)
    res = train_layer(
        tiny_model,
        clean_ds,
        1,
        cfg,
        train_episodes=idx[:100],
        val_episodes=idx[:100],
        progress=False,
    )
    assert res.val_nll < res.base_val_nll - 0.01  # on the training episodes
    for k, v in tiny_model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.requires_grad for p in tiny_model.parameters())  # flags restored
    with frozen(tiny_model):
        assert not any(p.requires_grad for p in tiny_model.parameters())


def test_controlled_nll_without_bank_is_the_base_nll(tiny_model, clean_ds):
    batch = make_batch(clean_ds, np.arange(4))
    with torch.no_grad():
        out = tiny_model(batch.obs)
        nll_a, _ = tiny_model.losses(out, batch.action, batch.next_obs, batch.mask)
        torch.testing.assert_close(controlled_nll(tiny_model, None, 1, batch), nll_a)


def test_folder_round_trip(trained, base_run):
    out, results = trained
    model, banks, config = load_controllers(out)
    assert sorted(banks) == [0, 2] and config["kind"] == "supervised_controllers"
    for res in results:
        torch.testing.assert_close(banks[res.layer].matrices(), res.bank.matrices())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {m["layer"] for m in metrics} == {0, 2}
    with pytest.raises(RunError, match="already holds a run of kind supervised_controllers"):
        train_supervised_controllers(
            base_run,
            generate_gridworld(20, "clean", progress=False),
            out,
            [0],
            PRESETS["tiny"],
            progress=False,
        )
    with pytest.raises(RunError):
        load_controllers(base_run)


def test_the_finished_layers_of_an_interrupted_run_can_be_loaded(trained, tmp_path):
    out, _ = trained
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    (cut / "layer_2.safetensors").unlink()  # killed while training layer 2
    _, banks, _ = load_controllers(cut, wanted_layers=[0])
    assert sorted(banks) == [0]
    with pytest.raises(RunError, match=r"layers \[2\] were never saved.*with weights: \[0\]"):
        load_controllers(cut)


def test_controllability_result(trained):
    out, _ = trained
    result = controllability(out, task="0-1-2-3", n_episodes=24, n_envs=12, seed=0)
    assert len(result.success_greedy) == 2 and 0 <= result.base_success_greedy <= 1
    assert result.layers == [0, 2] and result.n_subgoals == 2 and result.n_episodes == 24
    assert all(0 <= s <= 1 for s in result.success)
    assert 0 <= result.base_completed_subgoals <= 2
    flat = summary(result)
    assert set(flat) >= {"controllers/base_success", "controllers/success_layer_2"}
    assert success_figure(result).data
    again = controllability(out, task="0-1-2-3", n_episodes=24, n_envs=12, seed=0)
    assert again.success == result.success  # same seed, same numbers
    with pytest.raises(ValueError, match=r"has no controllers for layers \[1\]"):
        controllability(out, layers=[1], n_episodes=4)
    with pytest.raises(ValueError, match="pairs"):
        controllability(out, task="0-3", n_episodes=4)


def test_controllers_cli(base_run, clean_ds, tmp_path, capsys):
    from irl_lens.cli import main

    clean_ds.save(tmp_path / "clean")
    out = tmp_path / "ctl"
    args = [
        "controllers",
        str(base_run),
        "--data",
        str(tmp_path / "clean"),
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--layers",
        "1",
        "--episodes",
        "20",
        "--out",
        str(out),
    ]
    main(args)
    printed = capsys.readouterr().out
    assert "base" in printed and "best layer" in printed
    flat = json.loads((out / "summary.json").read_text())
    assert "controllers/success_layer_1" in flat and "controllers/val_nll_layer_1" in flat
    assert (out / "controllers_success.html").is_file()
    assert (out / "controllers_reach.html").is_file()
    assert json.loads((out / "config.json").read_text())["controller"]["rank"] == 16  # grid
    result = json.loads((out / "result.json").read_text())
    for reach, success in zip(result["reach_greedy"], result["success_greedy"] + [
        result["base_success_greedy"]], strict=True):  # fmt: skip
        assert len(reach) == 12 and reach[-1] == success  # all 12 colours <=> success
        assert all(a >= b for a, b in zip(reach, reach[1:], strict=False))
    assert "lost at each task colour" in printed
    assert result["end_reasons"] == [] and "how sampled episodes ended" not in printed  # grid
    main(args[:-2] + ["--out", str(out), "--eval-only", "--task", "0-1"])
    assert json.loads((out / "result.json").read_text())["task"] == "0-1"
    for bad in (["--task", "0-3"], ["--layers", "9"], ["--rank", "0"], ["--rank", "low"]):
        with pytest.raises(SystemExit) as exc:
            main(["controllers", str(base_run), *bad])
        assert exc.value.code == 2
    assert load_base_model(base_run).cfg.n_layers == 2
    # C.3's exact form: one-hot codes through a hypernetwork decoder; saved, loaded, evaluated
    hyper = tmp_path / "ctl-hyper"
    main(args[:-2] + ["--out", str(hyper), "--hypernetwork", "--lr", "0.005"])
    saved = json.loads((hyper / "config.json").read_text())["controller"]
    assert saved["hypernetwork"] is True and saved["rank"] == 16 and saved["n_z"] == 8
    assert json.loads((hyper / "config.json").read_text())["train"]["lr"] == 0.005  # --lr
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == 3e-3  # the preset's
    assert json.loads((out / "config.json").read_text())["train"]["dagger_rounds"] == 0
    dagger = tmp_path / "ctl-dagger"  # expert relabelling rounds, from the command line
    main(args[:-2] + ["--out", str(dagger), "--dagger-rounds", "1", "--dagger-episodes", "6",
                      "--dagger-steps", "2"])  # fmt: skip
    train = json.loads((dagger / "config.json").read_text())["train"]
    assert (train["dagger_rounds"], train["dagger_episodes"], train["dagger_steps"]) == (1, 6, 2)
    assert any("dagger/pretrain_success" in r for r in
               map(json.loads, (dagger / "metrics.jsonl").read_text().splitlines()))  # fmt: skip
    _, banks, _ = load_controllers(hyper)
    assert banks[1].cfg.hypernetwork and hasattr(banks[1], "dec_A")
    assert "controllers/success_layer_1" in json.loads((hyper / "summary.json").read_text())


def test_controllers_of_an_earlier_checkpoint(clean_ds, tmp_path, capsys):
    # --base-step controls the base model saved at that step, not the final one
    from irl_lens.cli import main

    ds = generate_gridworld(100, "pretrain", seed=1, progress=False)
    model_cfg, cfg = BASE_PRESETS["tiny"]
    pretrain(ds, tmp_path / "base", model_cfg, dataclasses.replace(cfg, checkpoint_every=20),
             progress=False)  # fmt: skip
    clean_ds.save(tmp_path / "clean")
    out = tmp_path / "ctl20"
    args = ["controllers", str(tmp_path / "base"), "--data", str(tmp_path / "clean"),
            "--preset", "tiny", "--steps", "2", "--layers", "1", "--episodes", "8"]  # fmt: skip
    main([*args, "--base-step", "20", "--out", str(out)])
    assert "(step 20)" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["base_checkpoint"] == "step_00000020"
    model, _, _ = load_controllers(out)
    early = load_base_model(tmp_path / "base", tmp_path / "base" / "checkpoints" / "step_00000020")
    final = load_base_model(tmp_path / "base")
    for name, p in model.state_dict().items():
        assert torch.equal(p, early.state_dict()[name]), name
    assert any(not torch.equal(p, final.state_dict()[k]) for k, p in early.state_dict().items())
    main([*args, "--out", str(out), "--eval-only"])  # the step comes from the saved config
    assert "(step 20)" in capsys.readouterr().out
    for bad in (["--base-step", "7", "--out", str(tmp_path / "x")], ["--base-step", "20"],
                ["--base-step", "40", "--out", str(out), "--eval-only"]):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main([*args, *bad])
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no checkpoint at step 7" in err and "20, 40" in err and "--base-step needs --out" in err
    assert "trained on step_00000020" in err


# ---- expert relabelling (DAgger) ---------------------------------------------------------


class _Spy:
    """Wraps a labeller; keeps what the env looked like and what it answered at each call."""

    def __init__(self, labeller):
        self.labeller, self.calls = labeller, []

    def __call__(self, env):
        label = self.labeller(env)
        self.calls.append((env.agent_pos.copy(), env.target_colour().copy(), label.copy()))
        return label


def test_relabelled_episodes_carry_the_experts_shortest_move_at_every_visited_state(tiny_model):
    from irl_lens.envs.expert import distance_maps
    from irl_lens.envs.gridworld_layout import NEXT_CELL
    from irl_lens.models.controller import ControllerConfig, build_controller_bank
    from irl_lens.rollout.grid import GridExpertLabels
    from irl_lens.rollout.kit import env_kit
    from irl_lens.rollout.relabel import relabelled_episodes
    from irl_lens.train.controllers import RelabelledPool

    kit = env_kit(tiny_model, 1)
    spy = _Spy(GridExpertLabels(tie_break="first"))
    kit = dataclasses.replace(kit, expert_labels=lambda: spy, batch=16)
    bank = build_controller_bank(ControllerConfig(tiny_model.cfg.d_model, 4, rank=4), seed=0)
    ep = relabelled_episodes(kit, lambda: kit.switcher(bank.select), 24, seed=3,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert ep.n_episodes == 24 and 0.0 <= ep.success <= 1.0
    valid = ep.mask.bool()
    assert valid[:, 0].all() and (ep.subgoal[~valid] == -1).all()
    assert (ep.subgoal[valid] >= 0).all()  # every real step has its subgoal (colour pair)
    assert ep.label.dtype == torch.int64 and ((ep.label[valid] >= 0) & (ep.label[valid] < 4)).all()
    # every label is the expert's answer at the state the model observed at that step, and a
    # shortest-path move toward that step's target colour
    for t in range(int(valid[:16].sum(1).max())):  # the first batch's calls (16 envs)
        pos, target, label = spy.calls[t]
        rows = valid[:16, t].numpy()
        np.testing.assert_array_equal(ep.obs[:16, t, 49].numpy()[rows], pos[rows])
        np.testing.assert_array_equal(ep.label[:16, t].numpy()[rows], label[rows])
        layouts = ep.obs[:16, t, :49].numpy().astype(np.uint8)
        dist = distance_maps(layouts)[np.arange(16), np.maximum(target, 0)]  # [16, 49]
        dest = NEXT_CELL[pos, label]
        here, there = dist[np.arange(16), pos], dist[np.arange(16), dest]
        assert (there[rows] == here[rows] - 1).all()
    # a pool draws batches of whole relabelled episodes, about the asked-for steps
    pool = RelabelledPool()
    pool.add(ep)
    pool.add(ep)
    batch = pool.batch(200, np.random.default_rng(0))
    assert pool.n_episodes == 48 and batch.action.shape == batch.subgoal.shape
    assert 100 <= batch.n_tokens <= 400 and (batch.subgoal[batch.mask == 0] == -1).all()
    with pytest.raises(ValueError, match="empty"):
        RelabelledPool().batch(100, np.random.default_rng(0))


def test_ant_expert_labels_are_the_clean_experts_actions():
    from irl_lens.data.generate_ant import _SPLIT_STREAM, generate_ant
    from irl_lens.envs.ant_batch import BatchedAntPinpad
    from irl_lens.models.ant_expert import load_expert
    from irl_lens.rollout.ant import AntExpertLabels

    expert = load_expert()
    ds = generate_ant(2, "clean", seed=5, expert=expert, n_envs=2, progress=False)
    seeds = np.random.SeedSequence([5, _SPLIT_STREAM["clean"]]).generate_state(2, np.uint32)
    env = BatchedAntPinpad(2)
    env.reset(seed=[int(s) for s in seeds])
    labels = AntExpertLabels(expert)
    for t in range(6):  # driven by its own labels, the env follows the clean data
        a = labels(env)
        assert a.dtype == np.float32 and a.shape == (2, 8)
        for i in range(2):
            np.testing.assert_allclose(a[i], ds.arrays["action"][ds.offsets[i] + t], atol=1e-5)
        env.step(a.astype(np.float64))


def test_relabel_loss_is_the_mean_error_on_ant_and_the_nll_on_the_gridworld(tiny_model, clean_ds):
    from irl_lens.models.base import build_model
    from irl_lens.models.controller import ControllerConfig, build_controller_bank
    from irl_lens.train.controllers import mean_action_std, relabel_loss

    from .conftest import tiny_model_config

    bank = build_controller_bank(ControllerConfig(tiny_model.cfg.d_model, 4, rank=4), seed=0)
    batch = make_batch(clean_ds, np.arange(4))
    torch.testing.assert_close(relabel_loss(tiny_model, bank, 1, batch),
                               controlled_nll(tiny_model, bank, 1, batch))  # fmt: skip
    ant = build_model(tiny_model_config(obs_kind="vector", obs_dim=41, action_kind="continuous",
                                        n_actions=8, n_ctx=64), seed=0).eval()  # fmt: skip
    g = torch.Generator().manual_seed(0)
    obs, action = torch.randn(3, 10, 41, generator=g), torch.randn(3, 10, 8, generator=g)
    subgoal = torch.randint(0, 4, (3, 10), generator=g)
    mask = torch.ones(3, 10)
    mask[2, 6:] = 0
    subgoal[2, 6:] = -1
    b = dataclasses.replace(batch, obs=obs, action=action, subgoal=subgoal, mask=mask)
    from irl_lens.hooks import intervene

    with intervene(ant, 1, bank.select(subgoal)):
        mean = ant.action_mean(ant.split(ant(obs)).action_params)
    expected = ((mean - action) ** 2).sum(-1)[mask.bool()].mean()
    # the Gaussian NLL at one fixed scale, up to a constant: the squared error over 2 scale^2
    torch.testing.assert_close(relabel_loss(ant, bank, 1, b, scale=0.5), expected / 0.5)
    torch.testing.assert_close(relabel_loss(ant, bank, 1, b), expected / 2)
    # that scale by default: the base's mean standard deviation on the labelled steps
    with torch.no_grad():
        log_std = ant.split(ant(obs)).action_params[..., 8:]
    want = log_std.clamp(-5.0, 2.0).exp()[mask.bool()].mean()
    assert mean_action_std(ant, b) == pytest.approx(float(want), rel=1e-5)


def test_relabelling_rounds_train_on_the_pool_and_log_each_round(tiny_model, clean_ds, tmp_path):
    idx = np.arange(clean_ds.n_episodes)
    base = ControllerTrainConfig(steps=6, lr=1e-2, tokens_per_batch=1024, log_every=2)
    cfg = dataclasses.replace(base, dagger_rounds=2, dagger_episodes=12, dagger_steps=4,
                              dagger_lr=3e-3)  # fmt: skip
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    kw = dict(train_episodes=idx[:100], val_episodes=idx[100:], progress=False)
    plain = train_layer(tiny_model, clean_ds, 1, base, **kw)
    res = train_layer(tiny_model, clean_ds, 1, cfg, metrics_path=tmp_path / "m.jsonl", **kw)
    for k, v in tiny_model.state_dict().items():  # the base stays frozen
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    rounds = [r for r in records if "dagger/pretrain_success" in r]
    assert [r["dagger/round"] for r in rounds] == [1, 2]
    assert [r["dagger/pool_episodes"] for r in rounds] == [12, 24]
    pool_losses = [r["train/relabel_loss"] for r in records if "train/relabel_loss" in r]
    assert len(pool_losses) == 4 and all(np.isfinite(pool_losses))  # 2 of 4 steps per round
    assert max(r["step"] for r in records) == 6 + 2 * 4
    # the rounds moved the controllers on from where the clean steps left them
    pairs = zip(plain.bank.state_dict().values(), res.bank.state_dict().values(), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)
    # and the same seed gives the same controllers
    again = train_layer(tiny_model, clean_ds, 1, cfg, **kw)
    for a, b in zip(res.bank.state_dict().values(), again.bank.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_relabelling_rounds_on_ant_hold_the_pool_loss_at_the_bases_action_std(tmp_path):
    from irl_lens.data.generate_ant import generate_ant
    from irl_lens.models.base import build_model

    from .conftest import tiny_model_config

    ds = generate_ant(6, "clean", seed=0, n_envs=6, progress=False)
    ant = build_model(tiny_model_config(obs_kind="vector", obs_dim=41, action_kind="continuous",
                                        n_actions=8, n_ctx=500), seed=0).eval()  # fmt: skip
    cfg = ControllerTrainConfig(rank=None, steps=2, tokens_per_batch=1024, dagger_rounds=1,
                                dagger_episodes=4, dagger_steps=2, log_every=1)  # fmt: skip
    idx = np.arange(ds.n_episodes)
    train_layer(ant, ds, 1, cfg, train_episodes=idx[:4], val_episodes=idx[4:],
                metrics_path=tmp_path / "m.jsonl", progress=False)  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    (std,) = [r["dagger/action_std"] for r in records if "dagger/action_std" in r]
    assert 0.0 < std < 10.0
    (loss,) = [r["train/relabel_loss"] for r in records if "train/relabel_loss" in r]
    assert np.isfinite(loss) and loss >= 0.0
