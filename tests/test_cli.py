"""The command line: the pipeline end to end on tiny settings, and bad input -> one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cli_helpers import run_cli as _run


def test_data_then_pretrain_tiny(tmp_path, capsys):
    data = tmp_path / "data"
    code, out, _ = _run(
        ["-q", "data", "gridworld", "--episodes", "200", "--out", str(data), "--seed", "1"], capsys
    )
    assert code == 0 and "episodes" in out
    run = tmp_path / "run"
    code, out, err = _run(
        ["-q", "pretrain", str(data), "--out", str(run), "--preset", "tiny", "--steps", "20"],
        capsys,
    )
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    for key in (
        "eval/accuracy",
        "eval/ceiling",
        "eval/accuracy_second",
        "rollout/pair_completion",
        "tokens_per_s",
    ):
        assert key in summary
    assert summary["rollout/success_ceiling"] == 1 / 16  # the task is never shown
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["steps"] == 20 and cfg["model"]["d_model"] == 32
    assert cfg["model"]["path_features"] is False  # the tiny preset's plain encoder
    paths = tmp_path / "run-paths"
    code, _, err = _run(
        ["-q", "pretrain", str(data), "--out", str(paths), "--preset", "tiny", "--steps", "5",
         "--path-features"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((paths / "config.json").read_text())["model"]["path_features"] is True
    pooled = tmp_path / "run-objects"
    code, _, err = _run(
        ["-q", "pretrain", str(data), "--out", str(pooled), "--preset", "tiny", "--steps", "5",
         "--encoder", "objects"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((pooled / "config.json").read_text())["model"]["encoder"] == "objects"
    from irl_lens.models.base import PooledObjectEncoder, load_base_model

    assert isinstance(load_base_model(pooled).obs_encoder, PooledObjectEncoder)


def test_quick_preset_has_path_features_and_paper_does_not():
    from irl_lens.presets import PRETRAIN as PRESETS

    assert PRESETS["quick"][0].path_features and not PRESETS["paper"][0].path_features


def test_the_paper_ant_preset_is_the_papers_hawk_base():
    """Section 2: a Hawk SSM, 256 units, 8 heads, MLP 512, depth 8; 204.8k steps of 512
    episodes. It builds as the Hawk model, as does the quick ant preset's (with path
    features, the base the package ships)."""
    import dataclasses

    from irl_lens import presets
    from irl_lens.envs.ant_layout import ANT_OBS_DIM
    from irl_lens.models.base import build_model
    from irl_lens.models.hawk import HawkActionModel

    paper = presets.get("paper", "ant")
    base = paper.base
    assert (base.arch, base.d_model, base.n_heads, base.d_mlp, base.n_layers) == (
        "hawk", 256, 8, 512, 8)  # fmt: skip
    assert (paper.pretrain.steps, paper.pretrain.tokens_per_batch) == (204_800, 256_000)
    quick = presets.get("quick", "ant").base
    assert (quick.arch, quick.path_features) == ("hawk", True) and not base.path_features
    cfg = dataclasses.replace(base, obs_kind="vector", obs_dim=ANT_OBS_DIM,
                              action_kind="continuous", n_actions=8)  # fmt: skip
    model = build_model(cfg)
    assert isinstance(model, HawkActionModel) and len(model.blocks) == 8


def test_ant_metacontroller_schedule_keeps_the_gridworld_shape() -> None:
    """The ant paper and tiny presets train their metacontroller for fewer steps; the
    KL-free start and the ramp shrink with it, so the KL weight reaches alpha (it once
    stopped at a third). The quick ant preset has its own measured schedule (eleventh
    session: 2,400 steps, 800 KL-free, an 800-step ramp to alpha 1, the KL charged where
    the switch fires), which also reaches alpha well before the end."""
    from irl_lens import presets

    for name in ("quick", "paper", "tiny"):
        grid, ant = presets.get(name).discover, presets.get(name, "ant").discover
        frac = ant.steps / grid.steps
        if name == "quick":
            assert (ant.steps, ant.kl_free_steps, ant.kl_warmup_steps) == (2400, 800, 800)
            assert (ant.alpha, ant.rate) == (1.0, "switch") and grid.rate == "step"
            assert ant.alpha_at(799) == 0 and ant.alpha_at(1600) == pytest.approx(1.0)
        else:
            assert (ant.kl_free_steps, ant.kl_warmup_steps) == (
                round(grid.kl_free_steps * frac), round(grid.kl_warmup_steps * frac))  # fmt: skip
        assert ant.alpha_at(ant.steps - 1) == pytest.approx(ant.alpha)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["data", "gridworld", "--out", "{tmp}/d", "--task", "0-9"], "colour 9"),
        (["data", "gridworld", "--out", "{tmp}/d", "--split", "clean", "--eps", "0.2"], "clean"),
        (["data", "gridworld", "--out", "{tmp}/d", "--eps", "1.5"], "eps"),
        (["data", "mars", "--out", "{tmp}/d"], "mars"),
        (["data", "gridworld", "--out", "{tmp}/d", "--episodes", "0"], "episodes"),
        (["pretrain", "{tmp}/missing", "--out", "{tmp}/r"], "does not exist"),
        (["pretrain", "{tmp}/garbage", "--out", "{tmp}/r"], "missing arrays.npz"),
        (["pretrain", "{tmp}/garbage", "--out", "{tmp}/r", "--preset", "huge"], "huge"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, fragment):
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "meta.json").write_text("{}")
    code, _, err = _run([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert fragment in err, err
    assert "Traceback" not in err
    assert len(lines) <= 3, err  # click usage errors print "Usage:" + a hint + the error
    assert not (tmp_path / "d").exists() and not (tmp_path / "r" / "model.safetensors").exists()


def test_corrupt_checkpoint_resume(tmp_path, capsys):
    data = tmp_path / "data"
    assert (
        _run(["-q", "data", "gridworld", "--episodes", "100", "--out", str(data)], capsys)[0] == 0
    )
    run = tmp_path / "run"
    code, _, err = _run(
        ["-q", "pretrain", str(data), "--out", str(run), "--preset", "tiny", "--resume"], capsys
    )
    assert code == 2 and "nothing to continue" in err


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "irl_lens.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in ("data", "pretrain", "bench"):
        assert cmd in out


def test_a_hawk_base_runs_every_stage_downstream(tmp_path, capsys):
    """Issue 32: `pretrain --arch hawk` gives a recurrent base that probe, controllers,
    discover, internal RL, raw-action RL and evaluate take unchanged."""
    from irl_lens.models.base import load_base_model
    from irl_lens.models.hawk import HawkActionModel
    from tests.cli_helpers import tiny_runs

    tiny_runs(tmp_path)
    base = tmp_path / "hawk"
    tiny = ["--preset", "tiny"]
    steps = [
        ["pretrain", str(tmp_path / "data"), "--out", str(base), *tiny, "--steps", "6",
         "--arch", "hawk"],
        ["probe", str(base), "--data", str(tmp_path / "clean")],
        ["controllers", str(base), "--data", str(tmp_path / "clean"), *tiny],
        ["discover", str(base), "--out", str(tmp_path / "mc"), "--data",
         str(tmp_path / "clean"), *tiny],
        ["internal-rl", str(tmp_path / "mc"), "--out", str(tmp_path / "rl"), *tiny],
        ["raw-rl", str(base), "--out", str(tmp_path / "raw"), *tiny],
        ["evaluate", str(base), "--episodes", "20"],
    ]  # fmt: skip
    for args in steps:
        code, _, err = _run(["-q", *args], capsys)
        assert code == 0, (args[0], err)
    assert json.loads((base / "config.json").read_text())["model"]["arch"] == "hawk"
    assert isinstance(load_base_model(base), HawkActionModel)
    for summary in ("probe/summary.json", "controllers/summary.json"):
        assert (base / summary).is_file()
    for folder in ("mc", "rl", "raw"):
        assert (tmp_path / folder / "summary.json").is_file(), folder
