"""Pretraining: the loss goes down, resume is exact, evaluation metrics are sound."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from irl_lens import runs
from irl_lens.models.base import load_base_model
from irl_lens.presets import PRETRAIN as PRESETS
from irl_lens.train.evaluate import heldout_metrics, known_task_ceiling, pair_completion_rate
from irl_lens.train.pretrain import PretrainConfig, pretrain

from .conftest import tiny_model_config


def _cfg(**kw) -> PretrainConfig:
    return dataclasses.replace(PRESETS["tiny"][1], **kw)


def test_tiny_pretraining_lowers_the_loss(tmp_path, tiny_dataset):
    pretrain(tiny_dataset, tmp_path / "run", tiny_model_config(), _cfg(steps=60), progress=False)
    m = runs.read_metrics(tmp_path / "run" / "metrics.jsonl")
    nll = [r["train/action_nll"] for r in m if "train/action_nll" in r]
    assert nll[-1] < nll[0] - 0.1
    model = load_base_model(tmp_path / "run")
    assert [d.name for d in runs.checkpoint_dirs(tmp_path / "run")] == [
        "step_00000020",
        "step_00000040",
        "step_00000060",
    ]
    first = load_base_model(tmp_path / "run", runs.checkpoint_dirs(tmp_path / "run")[0])
    assert not torch.equal(model.W_U, first.W_U)


def test_resume_gives_the_same_weights(tmp_path, tiny_dataset):
    cfg = _cfg(steps=40, checkpoint_every=20)
    pretrain(tiny_dataset, tmp_path / "full", tiny_model_config(), cfg, progress=False)
    first = pretrain(
        tiny_dataset, tmp_path / "cut", tiny_model_config(), cfg, progress=False, stop_after=20
    )
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    at_cut = runs.load_trainer_state(runs.checkpoint_dirs(tmp_path / "cut")[-1])["train_seconds"]
    assert 0 < at_cut <= first.train_seconds
    second = pretrain(
        tiny_dataset, tmp_path / "cut", tiny_model_config(), cfg, progress=False, resume=True
    )
    assert second.train_seconds > at_cut  # the training time of both legs
    a, b = load_base_model(tmp_path / "full"), load_base_model(tmp_path / "cut")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_resume_accepts_a_run_started_before_a_setting_existed(tmp_path, tiny_dataset):
    """A run started by an older version has no entry for settings added since (e.g. the
    ant options of issue 32); it ran with their defaults, so --resume continues it, while a
    setting that truly differs is still refused."""
    import json

    cfg = _cfg(steps=40, checkpoint_every=20)
    run = tmp_path / "old"
    pretrain(tiny_dataset, run, tiny_model_config(), cfg, progress=False, stop_after=20)
    saved = json.loads((run / "config.json").read_text())
    for key in ("heading_features", "future_horizon", "action_mixtures"):
        del saved["model"][key]
    (run / "config.json").write_text(json.dumps(saved))
    pretrain(tiny_dataset, run, tiny_model_config(), cfg, progress=False, resume=True)
    assert (run / "model.safetensors").is_file()
    with pytest.raises(runs.RunError, match="model.n_layers"):
        pretrain(tiny_dataset, run, tiny_model_config(n_layers=3), cfg, progress=False,
                 resume=True)  # fmt: skip


def test_refuses_to_overwrite_and_resume_needs_a_checkpoint(tmp_path, tiny_dataset):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("")
    with pytest.raises(runs.RunError, match="did not write"):
        pretrain(tiny_dataset, tmp_path / "run", tiny_model_config(), _cfg(), progress=False)
    with pytest.raises(runs.RunError, match="nothing to continue"):
        pretrain(
            tiny_dataset, tmp_path / "new", tiny_model_config(), _cfg(), progress=False, resume=True
        )


def test_ceiling_matches_the_expert_policy(tiny_dataset):
    """With eps=0 the ceiling is 1/k for k equally short moves, and the expert's action
    is always one of the maximisers."""
    c = known_task_ceiling(tiny_dataset)
    assert c.shape == (tiny_dataset.n_steps,)
    assert set(np.round(1 / c).astype(int).tolist()) <= {1, 2, 3, 4}
    assert 0.5 < c.mean() < 1.0


def test_a_model_copying_the_expert_scores_the_ceiling(tiny_dataset, tiny_model):
    """Held-out accuracy of an oracle equals the mean ceiling (sanity of the metric)."""
    m = heldout_metrics(tiny_model, tiny_dataset)
    assert 0.0 <= m["eval/accuracy"] <= 1.0
    assert m["eval/ceiling_second"] > 0 and m["eval/ceiling_first"] > 0
    assert m["eval/accuracy"] <= 1.0 and np.isfinite(m["eval/action_nll"])


def test_pair_completion_rate():
    assert pair_completion_rate([[0, 1, 4, 5], [2, 7]]) == (2 / 3, 3)
    assert pair_completion_rate([[1, 2]])[1] == 0


def test_lr_schedule():
    cfg = PretrainConfig(steps=100, warmup_steps=10, lr=1.0, schedule="cosine", min_lr_ratio=0.1)
    assert cfg.lr_at(0) == pytest.approx(0.1)
    assert cfg.lr_at(9) == pytest.approx(1.0)
    assert cfg.lr_at(99) == pytest.approx(0.1, abs=1e-3)
    with pytest.raises(ValueError, match="steps"):
        PretrainConfig(steps=0)


@pytest.mark.slow  # compiling takes ~100 s on the 2-core CPU
def test_a_compiled_forward_trains_the_same_model(tmp_path, tiny_dataset):
    """Issue 30: `--compile` trains through torch.compile; the saved model is the one
    trained, and its losses follow the eager run's within float tolerance."""
    cfg = _cfg(steps=6, eval_every=6, checkpoint_every=6, rollout_episodes=0)
    pretrain(tiny_dataset, tmp_path / "eager", tiny_model_config(), cfg, progress=False)
    pretrain(tiny_dataset, tmp_path / "comp", tiny_model_config(), cfg, progress=False,
             compile_model=True)  # fmt: skip
    eager, comp = (runs.read_metrics(tmp_path / d / "metrics.jsonl") for d in ("eager", "comp"))
    for a, b in zip(eager, comp, strict=True):
        if "train/loss" in a:
            assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-4)
    a, b = load_base_model(tmp_path / "eager"), load_base_model(tmp_path / "comp")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, rtol=1e-3, atol=1e-5, msg=k)
