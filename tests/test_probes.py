"""Linear probes: the fit recovers planted directions; the analysis runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analyses.probes import (
    MAX_SINCE,
    _steps_since_segment_start,
    accuracy_figure,
    belief_figure,
    collect_residuals,
    probe_model,
    probe_run,
    steps_figure,
    summary,
)
from irl_lens.data.generate import generate_gridworld
from irl_lens.models.probe import fit_probe as fit_softmax_probe
from irl_lens.presets import PRETRAIN as PRESETS
from irl_lens.train.pretrain import pretrain


@pytest.fixture(scope="module")
def clean_ds():
    return generate_gridworld(60, "clean", seed=0, progress=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    ds = generate_gridworld(200, "pretrain", seed=0, progress=False)
    root = tmp_path_factory.mktemp("probe")
    ds.save(root / "data")
    model_cfg, cfg = PRESETS["tiny"]
    pretrain(ds, root / "base", model_cfg, cfg, data_path=str(root / "data"), progress=False)
    return root / "base"


def test_probe_recovers_a_planted_direction():
    g = torch.Generator().manual_seed(0)
    d, n = 16, 4000
    w = torch.randn(d, generator=g)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.5, 2.0, d)  # anisotropic features
    y = (x @ w > 0).long()
    probe = fit_softmax_probe(x[:3000], y[:3000], 2, l2=1e-4)
    acc = (probe.predict_proba(x[3000:]).argmax(-1) == y[3000:]).float().mean()
    assert acc > 0.97
    direction = probe.directions[1] - probe.directions[0]
    cos = torch.nn.functional.cosine_similarity(direction, w, dim=0)
    assert cos > 0.95


def test_probe_separates_several_classes_and_ignores_noise_dimensions():
    g = torch.Generator().manual_seed(1)
    W = torch.zeros(4, 12)
    W[:, :3] = torch.randn(4, 3, generator=g) * 3  # only 3 of 12 dims carry the label
    x = torch.randn(3000, 12, generator=g)
    y = (x @ W.T).argmax(-1)
    probe = fit_softmax_probe(x[:2000], y[:2000], 4)
    acc = (probe.logits(x[2000:]).argmax(-1) == y[2000:]).float().mean()
    assert acc > 0.9
    assert probe.weight[:, 3:].abs().max() < probe.weight[:, :3].abs().max()
    with pytest.raises(ValueError, match="probe"):
        fit_softmax_probe(x[:0], y[:0], 4)


def test_steps_since_segment_start():
    episode = np.array([0, 0, 0, 0, 1, 1, 1])
    label = np.array([2, 2, 3, 3, 3, 3, 0])
    assert _steps_since_segment_start(episode, label).tolist() == [0, 1, 0, 1, 0, 1, 0]


def test_collect_residuals_matches_run_with_cache(tiny_model, clean_ds):
    rs = collect_residuals(tiny_model, clean_ds, np.array([3, 1]), [0, 2])
    assert set(rs.resid) == {0, 2}
    lengths = clean_ds.lengths[[3, 1]]
    assert len(rs.label) == lengths.sum() and rs.resid[2].shape == (lengths.sum(), 32)
    # the first step of episode 1 at layer 0 is its observation embedding
    first = np.flatnonzero((rs.episode == 1) & (rs.t == 0))[0]
    from irl_lens.data.dataset import make_batch

    with torch.no_grad():
        e0 = tiny_model.embed_obs(make_batch(clean_ds, np.array([1])).obs)[0, 0]
    torch.testing.assert_close(rs.resid[0][first], e0)


def test_probe_model_result_and_figures(tiny_model, clean_ds):
    result = probe_model(tiny_model, clean_ds, max_iter=30)
    L = tiny_model.cfg.n_layers
    assert result.layers == list(range(L + 1))
    assert all(0 <= a <= 1 for a in result.accuracy)
    assert 0 < result.chance <= 1 and result.n_train > result.n_test > 0
    assert len(result.belief) == L + 1 and all(len(b) == MAX_SINCE for b in result.belief)
    assert len(result.example_probs) == len(result.example_labels) > 0
    flat = summary(result)
    assert all(isinstance(v, float) for v in flat.values())
    assert flat["probe/best_accuracy"] == max(result.accuracy)
    assert accuracy_figure(result).data and belief_figure(result).data
    assert steps_figure(result) is None


def test_probe_run_with_checkpoints(tiny_run, clean_ds):
    result = probe_run(tiny_run, clean_ds, n_episodes=40, max_checkpoints=1)
    assert result.checkpoint_steps == [40]  # the last checkpoint is always kept
    assert len(result.accuracy_by_step) == 1 and len(result.accuracy_by_step[0]) == 3
    # the last checkpoint holds the final weights: same numbers as the final model
    np.testing.assert_allclose(result.accuracy_by_step[0], result.accuracy, atol=1e-6)
    assert steps_figure(result) is not None
    assert "probe/step_40_accuracy_layer_2" in summary(result)


def test_probe_cli(tiny_run, clean_ds, tmp_path, capsys):
    from irl_lens.cli import main

    clean_ds.save(tmp_path / "clean")
    out = tmp_path / "probe"
    main(
        [
            "probe",
            str(tiny_run),
            "--data",
            str(tmp_path / "clean"),
            "--episodes",
            "30",
            "--no-checkpoints",
            "--out",
            str(out),
            "--seed",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert "layer" in printed and "majority class" in printed
    summary_json = json.loads((out / "summary.json").read_text())
    assert summary_json["probe/n_test_steps"] > 0
    for name in ("probe_accuracy.html", "probe_belief.html", "result.json", "config.json"):
        assert (out / name).is_file()
    with pytest.raises(SystemExit) as exc:
        main(["probe", str(tmp_path / "missing"), "--data", str(tmp_path / "clean")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error:")
