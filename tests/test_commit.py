"""Commitment refits (issue 29): the Voronoi sampler, the switching recursion for fixed
gates, and a refit on a tiny pipeline that leaves the source folder alone and writes a
metacontroller folder internal RL can load."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from irl_lens.models.metacontroller import integrate_codes, load_metacontroller
from irl_lens.train.commit import CommitConfig, cell_samples, fit_cells
from tests.cli_helpers import run_cli


def test_cell_samples_fall_in_their_own_cell():
    centroids = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    mu = centroids[torch.tensor([0, 1, 2, 3, 0, 2])] + 0.1  # [6, 2]
    z = cell_samples(mu, centroids, torch.Generator().manual_seed(0), candidates=64)
    assert z.shape == mu.shape
    own = torch.cdist(mu, centroids).argmin(-1)
    assert torch.equal(torch.cdist(z, centroids).argmin(-1), own)
    assert not torch.allclose(z, centroids[own])  # prior draws, not the centres


def test_cell_samples_fall_back_to_the_centroid_when_the_prior_misses_the_cell():
    centroids = torch.tensor([[0.0, 0.0], [40.0, 40.0]])  # cell 1 is far out in the tail
    mu = torch.tensor([[39.0, 41.0]])
    z = cell_samples(mu, centroids, torch.Generator().manual_seed(0), candidates=8)
    assert torch.equal(z, centroids[1:])


def test_fit_cells_picks_k_by_silhouette_without_labels():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    x = centres.repeat(100, 1) + 0.2 * torch.randn(300, 2, generator=g)
    found, scores = fit_cells(x, None)
    assert len(found) == 3 and max(scores, key=scores.get) == 3
    assert len(fit_cells(x, 2)[0]) == 2


def test_integrate_codes_holds_a_code_until_the_next_switch():
    z_tilde = torch.arange(1.0, 6.0).reshape(1, 5, 1)  # proposals 1..5
    beta = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0]])
    assert integrate_codes(z_tilde, beta).flatten().tolist() == [1.0, 1.0, 1.0, 4.0, 4.0]
    half = integrate_codes(torch.ones(1, 2, 1), torch.tensor([[0.5, 0.5]]))
    assert half.flatten().tolist() == [0.5, 0.75]


def test_task_subgoals_of_post():
    from types import SimpleNamespace

    from analyses.composition import task_subgoals
    from irl_lens.envs.pinpad import parse_task

    kit = SimpleNamespace(colours_per_subgoal=2, parse_task=parse_task)
    assert task_subgoals(kit, "post") == [0, 1, 2, 3, 0, 1]


def test_config_validation():
    with pytest.raises(ValueError, match="mode"):
        CommitConfig(mode="magic")
    with pytest.raises(ValueError, match="k="):
        CommitConfig(k=1)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("mode", ["voronoi", "means"])
def test_commit_refits_the_decoder_only(tmp_path, capsys, mode):
    from irl_lens.cli import main

    main(["-q", "data", "gridworld", "--episodes", "120", "--out", str(tmp_path / "data")])
    main(["-q", "data", "gridworld", "--split", "clean", "--episodes", "80",
          "--out", str(tmp_path / "clean")])  # fmt: skip
    main(["-q", "pretrain", str(tmp_path / "data"), "--out", str(tmp_path / "base"),
          "--preset", "tiny", "--steps", "10"])  # fmt: skip
    main(["-q", "discover", str(tmp_path / "base"), "--out", str(tmp_path / "mc"),
          "--data", str(tmp_path / "clean"), "--preset", "tiny", "--steps", "6",
          "--episodes", "4"])  # fmt: skip
    source = _sha(tmp_path / "mc" / "metacontroller.safetensors")
    code, out, err = run_cli(
        ["-q", "commit", str(tmp_path / "mc"), "--out", str(tmp_path / "mc-c"), "--data",
         str(tmp_path / "clean"), "--mode", mode, "--steps", "5"]
        + (["--k", "2"] if mode == "voronoi" else []), capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "commit/val_action_nll" in out
    summary = json.loads((tmp_path / "mc-c" / "summary.json").read_text())
    for key in ("compose/success", "compose/segment_0", "prior_commit/segment_product",
                "codes/own_first3_accuracy"):  # fmt: skip
        assert 0.0 <= summary[key] <= 1.0, key
    assert len([k for k in summary if k.startswith("compose/segment_") and k[-1].isdigit()]) == 6
    assert _sha(tmp_path / "mc" / "metacontroller.safetensors") == source  # source untouched
    old, new = load_metacontroller(tmp_path / "mc"), load_metacontroller(tmp_path / "mc-c")
    changed = {n for n, p in new.mc.state_dict().items()
               if not torch.equal(p, old.mc.state_dict()[n])}  # fmt: skip
    assert changed and all(n.split(".")[0] in ("dec", "dec_A", "dec_B") for n in changed)
    cfg = json.loads((tmp_path / "mc-c" / "config.json").read_text())
    assert cfg["commit"]["mode"] == mode and cfg["layer"] == old.layer
    assert (cfg["commit"]["centroids"] is None) == (mode == "means")
    fitted_on = cfg["commit"]["cells_fitted_on"]
    assert fitted_on == (None if mode == "means" else fitted_on) and fitted_on in (
        None, "switches", "all steps")  # fmt: skip
    # internal RL runs on the committed folder
    code, _, err = run_cli(
        ["-q", "internal-rl", str(tmp_path / "mc-c"), "--out", str(tmp_path / "rl"),
         "--preset", "tiny", "--task", "0-1-2-3"], capsys,
    )  # fmt: skip
    assert code == 0, err


def test_segments_name_each_true_segment_and_its_predecessor():
    from analyses.composition import _segments

    g = torch.tensor([2, 2, 0, 0, 0, 3, -1])  # padding after step 6
    assert _segments(g, 6) == [(0, 2, 2, -1), (2, 5, 0, 2), (5, 6, 3, 0)]
    assert _segments(g, 1) == [(0, 1, 2, -1)]
