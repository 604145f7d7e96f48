"""`irl-lens gpu-smoke` (issue 30): its CPU half runs here; with CUDA, the whole check."""

from __future__ import annotations

import pytest
import torch

from irl_lens.cli.smoke import SmokeSettings, run_smoke

TINY = {"steps": 10, "rl_episodes": 32, "throughput_seconds": 0.05, "throughput_preset": "tiny"}


def test_the_cpu_half_runs_every_stage_and_compares(tmp_path):
    summary = run_smoke(tmp_path / "s", SmokeSettings(device="cpu", **TINY), progress=False)
    for stage in ("base", "mc", "mc-commit", "rl", "raw"):
        assert (tmp_path / "s" / "cpu" / stage / "config.json").is_file(), stage
    assert summary["same_weights/action_nll_gap"] == 0.0  # the CPU against itself
    assert summary["same_weights/code_gap"] == 0.0
    assert summary["trained/eval_action_nll_relative_gap"] == 0.0  # same seed, same numbers
    rates = ("pretrain_tokens_per_s", "discover_steps_per_s", "internal_rl_episodes_per_s")
    hours = ("paper_hours/pretrain", "paper_hours/discover", "paper_hours/internal_rl")
    for key in (*rates, *hours):
        assert summary[key] > 0, key
    assert (tmp_path / "s" / "smoke.json").is_file()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_the_cpu(tmp_path):
    summary = run_smoke(tmp_path / "s", SmokeSettings(device="cuda", **TINY), progress=False)
    assert summary["same_weights/code_gap"] <= 1e-3
