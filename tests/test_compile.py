"""CompILE, adapted as the paper's baseline (issue 31): segment masks, boundaries, the loss
against a hand computation, the decoder path shared with the metacontroller, gradients,
and a tiny fit that lowers its loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from irl_lens.data.dataset import make_batch
from irl_lens.models.compile_model import (
    CompILEConfig,
    boundary_log_prior,
    build_compile,
)
from irl_lens.models.metacontroller import gaussian_kl


def _inputs(tiny_dataset, n=6):
    batch = make_batch(tiny_dataset, list(range(n)))
    return batch, batch.mask.float()


def test_masks_sum_to_one_and_boundaries_are_ordered(tiny_dataset):
    model = build_compile(CompILEConfig(d_model=16, n_segments=4), seed=0)
    batch, mask = _inputs(tiny_dataset)
    for sample in (True, False):
        out = model(batch.obs, batch.action, mask, sample=sample,
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
        assert out.masks.shape == (4, *mask.shape) and (out.masks >= -1e-6).all()
        torch.testing.assert_close(out.masks.sum(0), mask)  # one at every real step, 0 after
        pos = torch.arange(mask.shape[1]).float()
        expected = (out.boundary_q * pos).sum(-1)  # E[b_i], [segments - 1, batch]
        assert (expected[1:] >= expected[:-1] - 1e-4).all()  # in order
        assert (out.boundary_q * (1 - mask)).abs().max() == 0  # never on padding
        torch.testing.assert_close(out.boundary_q.sum(-1), torch.ones(3, mask.shape[0]))


def test_one_segment_is_the_whole_episode(tiny_dataset):
    model = build_compile(CompILEConfig(d_model=16, n_segments=1), seed=0)
    batch, mask = _inputs(tiny_dataset)
    out = model(batch.obs, batch.action, mask, sample=False)
    torch.testing.assert_close(out.masks[0], mask)
    assert out.boundaries.shape[0] == 0 and torch.equal(out.kl_b, torch.zeros(len(mask)))


def test_the_loss_equals_a_hand_computation(tiny_model, tiny_dataset):
    """Two segments, no sampling: the loss from the definitions, step by step."""
    from irl_lens.train.compile_fit import compile_loss

    cfg = CompILEConfig(d_model=tiny_model.cfg.d_model, n_segments=2, length_rate=3.0)
    model = build_compile(cfg, seed=1)
    with torch.no_grad():  # a decoder that writes something
        model.dec_B.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
    batch, mask = _inputs(tiny_dataset, n=2)
    got = compile_loss(tiny_model, model, 1, batch, beta_z=0.3, beta_b=0.7, sample=False)
    with torch.no_grad():
        out = model(batch.obs, batch.action, mask, sample=False)
    n_seq, n_pos = mask.shape
    nll, kl_b = 0.0, 0.0
    for k in range(n_seq):
        n = int(mask[k].sum())
        q = out.boundary_q[0, k, :n]
        prior = torch.log_softmax(boundary_log_prior(n_pos, 0, 3.0, "cpu")[:n], -1)
        kl_b += float((q * (q.log() - prior)).sum())
        before = [float(q[:t].sum()) for t in range(n)]  # P(b_0 < t)
        for i in range(2):
            z = out.z[k, i].expand(1, n_pos, -1)
            with torch.no_grad():
                e = tiny_model(batch.obs[k : k + 1], stop_at_layer=1)
                steered = e + (model.matrices(z) @ e.unsqueeze(-1)).squeeze(-1)
                logits = tiny_model.split(
                    tiny_model(steered, start_at_layer=1)
                ).action_params[0]  # fmt: skip
            logp = torch.log_softmax(logits, -1)
            for t in range(n):
                share = 1 - before[t] if i == 0 else before[t]
                nll -= share * float(logp[t, batch.action[k, t]])
    total = float(mask.sum())
    kl_z = float(gaussian_kl(out.mu, out.logvar).sum())
    want = nll / total + 0.3 * kl_z / total + 0.7 * kl_b / total
    assert float(got.loss.detach()) == pytest.approx(want, rel=1e-4)
    assert float(got.nll) == pytest.approx(nll / total, rel=1e-4)


def test_the_decoder_path_is_the_metacontrollers(tiny_model):
    """``e + U(z) e`` through the same hook code, against an explicit matmul."""
    from irl_lens.models.metacontroller import MetacontrollerConfig, build_metacontroller

    d = tiny_model.cfg.d_model
    model = build_compile(CompILEConfig(d_model=d), seed=0)
    mc = build_metacontroller(MetacontrollerConfig(d_model=d), seed=0)
    with torch.no_grad():
        for name in ("dec.weight", "dec.bias", "dec_A", "dec_B"):
            p = dict(model.named_parameters())[name]
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
            dict(mc.named_parameters())[name].copy_(p)
    e, z = torch.randn(2, 5, d), torch.randn(2, 5, 8)
    explicit = e + (model.matrices(z) @ e.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(model.apply_code(e, z), explicit, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.apply_code(e, z), mc.apply_code(e, z))


def test_gradients_reach_every_parameter(tiny_model, tiny_dataset):
    from irl_lens.train.compile_fit import compile_loss

    model = build_compile(CompILEConfig(d_model=tiny_model.cfg.d_model), seed=0)
    with torch.no_grad():
        model.dec_B.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    batch, _ = _inputs(tiny_dataset)
    parts = compile_loss(tiny_model, model, 1, batch, 0.1, 0.1, torch.Generator().manual_seed(0))
    parts.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    assert math.isfinite(float(parts.loss.detach()))


def test_a_tiny_fit_lowers_its_loss(tiny_model, tiny_dataset):
    from irl_lens.train.compile_fit import fit_compile

    model = build_compile(CompILEConfig(d_model=tiny_model.cfg.d_model, n_segments=3), seed=0)
    losses = fit_compile(tiny_model, model, 1, tiny_dataset, steps=40, tokens_per_batch=1024)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_the_compile_command_fits_and_scores_boundaries_and_latents(tmp_path, capsys):
    import json

    from irl_lens.train.compile_fit import load_compile
    from tests.cli_helpers import run_cli, tiny_runs

    tiny_runs(tmp_path)
    code, out, err = run_cli(
        ["-q", "compile", str(tmp_path / "base"), "--out", str(tmp_path / "c"), "--data",
         str(tmp_path / "clean"), "--preset", "tiny", "--segments", "3"], capsys,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    for key in ("switching/f1_tol1", "switching/switches_per_episode", "clustering/nmi"):
        assert key in summary and summary[key] == summary[key], key  # present, not NaN
    assert summary["switching/switches_per_episode"] <= 2.0  # at most M - 1 boundaries
    loaded = load_compile(tmp_path / "c")
    assert loaded.model.cfg.n_segments == 3 and loaded.layer == 1
    rows = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 12 and all(np.isfinite(r["train/loss"]) for r in rows)
    assert summary["segments/mean_steps"] >= 1.0
    # internal RL over its latents: a code every segments/mean_steps raw steps
    code, _, err = run_cli(["-q", "internal-rl", str(tmp_path / "c"), "--out", str(tmp_path / "rl"),
                            "--preset", "tiny", "--task", "0-1-2-3"], capsys)  # fmt: skip
    assert code == 0, err
    rl_config = json.loads((tmp_path / "rl" / "config.json").read_text())
    assert rl_config["variant"] == "compile" and rl_config["segment_steps"] == max(
        1, round(summary["segments/mean_steps"]))  # fmt: skip
    from analyses.rl_curves import run_label

    assert run_label(rl_config) == "internal_rl (compile)"
    stale = json.loads((tmp_path / "c" / "summary.json").read_text())
    del stale["segments/mean_steps"]  # a folder analysed before the key existed
    (tmp_path / "c" / "summary.json").write_text(json.dumps(stale))
    code, _, err = run_cli(["-q", "internal-rl", str(tmp_path / "c"), "--out",
                            str(tmp_path / "rl2"), "--preset", "tiny"], capsys)  # fmt: skip
    assert code == 2 and "segments/mean_steps" in err and "Traceback" not in err, err
    again = ["-q", "compile", str(tmp_path / "base"), "--out", str(tmp_path / "c"), "--data",
             str(tmp_path / "clean")]  # fmt: skip
    code, _, err = run_cli(again, capsys)
    assert code == 2 and "error:" in err  # never over a finished run


def test_held_out_rate_and_distortion_are_the_objectives_terms(tiny_model, tiny_dataset):
    """``compile/kl_z``, ``compile/kl_b`` and ``compile/action_nll`` are the step-weighted
    means of the objective's own terms over the held-out episodes, without sampling."""
    from analyses.segmentation import held_out_losses
    from irl_lens.train.compile_fit import LoadedCompile, compile_loss

    model = build_compile(CompILEConfig(d_model=32, n_segments=3), seed=0).eval()
    config = {"train": {"beta_z": 0.1, "beta_b": 0.1}}
    loaded = LoadedCompile(base=tiny_model, model=model, layer=1, config=config)
    episodes = np.arange(5)
    got = held_out_losses(loaded, tiny_dataset, episodes)
    with torch.no_grad():
        parts = compile_loss(tiny_model, model, 1, make_batch(tiny_dataset, episodes), 0.1, 0.1,
                             sample=False)  # fmt: skip
    assert got["compile/action_nll"] == pytest.approx(float(parts.nll), rel=1e-5)
    assert got["compile/kl_z"] == pytest.approx(float(parts.kl_z), rel=1e-5)
    assert got["compile/kl_b"] == pytest.approx(float(parts.kl_b), rel=1e-5)
    assert got == held_out_losses(loaded, tiny_dataset, episodes)  # deterministic


def test_the_kl_sweep_runs_compile_through_the_sweep_runner(tmp_path, capsys):
    """``irl-lens sweep compile-kl``: one CompILE per beta_z, each a point of the
    rate-distortion table (rate: the latents' held-out KL)."""
    import json
    from pathlib import Path

    from analyses import rate_distortion as rd
    from tests.cli_helpers import run_cli, tiny_runs

    tiny_runs(tmp_path)
    code, out, err = run_cli(
        ["sweep", "compile-kl", str(tmp_path / "base"), "--out", str(tmp_path / "kl"),
         "--data", str(tmp_path / "clean"), "--betas", "0.01,1", "--seeds", "1", "--preset",
         "tiny", "--workers", "2"], capsys,
    )  # fmt: skip
    assert code == 0, err
    points = rd.sweep_points(tmp_path / "kl")
    assert sorted(p.alpha for p in points) == [0.01, 1.0]
    assert {p.variant for p in points} == {"compile"} and all(p.rate >= 0 for p in points)
    for p in points:
        config = json.loads((Path(p.path) / "config.json").read_text())
        assert config["kind"] == "compile" and config["train"]["beta_z"] == p.alpha
    summary = json.loads((tmp_path / "kl" / "summary.json").read_text())
    assert summary["sweep/finished"] == 2.0 and "rd/compile/a0.01/rate" in summary
    assert rd.markdown_table(rd.rd_table(points))[2].startswith("| CompILE | 0.01 | 1 |")
    assert (tmp_path / "kl" / "rate_distortion.html").is_file() and "compile" in out
    code, _, err = run_cli(["sweep", "compile-kl", str(tmp_path / "base"), "--out",
                            str(tmp_path / "kl2"), "--data", str(tmp_path / "clean"),
                            "--betas", "0.1,-1"], capsys)  # fmt: skip
    assert code == 2 and "--betas" in err and "Traceback" not in err
