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
    for kwargs in ({"steps": 0}, {"lr": 0.0}, {"rank": 0}, {"weight_decay": -1.0}):
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
