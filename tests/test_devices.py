"""Device choice (issue 30): `--device` on every command that runs a model, one line when
CUDA is asked for and absent, `reproduce --device` reaching every job, and the device-generic
paths (seeded noise, batches, pretraining) exercised on the CPU."""

from __future__ import annotations

import re

import pytest
import torch

from irl_lens.cli import main
from tests.cli_helpers import run_cli, tiny_runs

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tiny_runs(tmp_path_factory.mktemp("dev"))
    main(["-q", "discover", str(root / "base"), "--out", str(root / "mc"), "--data",
          str(root / "clean"), "--preset", "tiny", "--steps", "2", "--episodes", "2"])  # fmt: skip
    return root


def _commands(r):
    return {
        "pretrain": ["pretrain", f"{r}/data", "--out", f"{r}/x", "--preset", "tiny"],
        "evaluate": ["evaluate", f"{r}/base", "--episodes", "2"],
        "probe": ["probe", f"{r}/base", "--data", f"{r}/clean"],
        "controllers": ["controllers", f"{r}/base", "--data", f"{r}/clean", "--preset", "tiny"],
        "discover": ["discover", f"{r}/base", "--out", f"{r}/x", "--data", f"{r}/clean",
                     "--preset", "tiny"],
        "commit": ["commit", f"{r}/mc", "--out", f"{r}/x", "--data", f"{r}/clean"],
        "internal-rl": ["internal-rl", f"{r}/mc", "--out", f"{r}/x", "--preset", "tiny"],
        "raw-rl": ["raw-rl", f"{r}/base", "--out", f"{r}/x", "--preset", "tiny"],
        "sweep": ["sweep", "rate-distortion", f"{r}/base", "--out", f"{r}/x", "--data",
                  f"{r}/clean", "--preset", "tiny"],
        "reproduce": ["reproduce", "gridworld", "--out", f"{r}/x", "--preset", "tiny"],
    }  # fmt: skip


@NO_CUDA
@pytest.mark.parametrize("command", list(_commands("R")))
def test_device_cuda_without_cuda_is_one_line_and_writes_nothing(made, capsys, command):
    code, _, err = run_cli([*_commands(made)[command], "--device", "cuda"], capsys)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "--device cuda" in lines[0] and "Traceback" not in err, err
    assert not (made / "x").exists()


def test_every_job_that_runs_a_model_gets_the_device(tmp_path):
    from irl_lens.cli.reproduce import DEVICE_COMMANDS, ReproduceSettings, stages

    for env in ("gridworld", "ant"):
        kw = {"with_sweep": True} if env == "gridworld" else {}
        jobs = [j for st in stages(tmp_path, ReproduceSettings(env=env, device="auto", **kw))
                for j in st.jobs]  # fmt: skip
        # data and unpack-base (the shipped ant base, copied) run no model
        assert {j.args[0] for j in jobs} <= {*DEVICE_COMMANDS, "data", "unpack-base"}
        for job in jobs:
            has = job.args[-2:] == ["--device", "auto"]
            assert has == (job.args[0] in DEVICE_COMMANDS), job.args
        on_cpu = stages(tmp_path, ReproduceSettings(env=env, **kw))  # the default: unchanged
        assert not any("--device" in j.args for st in on_cpu for j in st.jobs)


@pytest.mark.parametrize("command", ["pretrain", "probe", "controllers", "discover", "commit",
                                     "internal-rl", "raw-rl", "evaluate", "reproduce"])  # fmt: skip
def test_each_model_command_documents_device(capsys, command):
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0 and re.search(r"--device", out), command


def test_seeded_noise_is_the_same_on_every_device():
    from irl_lens.models.common import noise

    a = noise("randn", (3, 4), torch.Generator().manual_seed(1), "cpu")
    b = noise("randn", (3, 4), torch.Generator().manual_seed(1), "meta")  # any other device
    assert b.device.type == "meta" and b.shape == a.shape
    assert torch.equal(a, torch.randn(3, 4, generator=torch.Generator().manual_seed(1)))
    assert noise("rand", (2,), None, "cpu").shape == (2,)


def test_a_batch_moves_to_a_device_with_every_tensor(tiny_dataset):
    from irl_lens.data.dataset import make_batch

    ds = tiny_dataset
    batch = make_batch(ds, [0, 1])
    assert batch.to("cpu") is batch  # already there: no copy
    moved = batch.to("meta")
    for name in ("obs", "action", "next_obs", "subgoal", "target_colour", "mask"):
        assert getattr(moved, name).device.type == "meta", name
    assert (moved.episodes == batch.episodes).all()


def test_bf16_autocast_trains_with_float32_weights_near_the_fp32_run(made, tmp_path):
    """Issue 30: bf16 on the CPU (autocast works there too), against the same run in fp32."""
    import json

    from safetensors.torch import load_file

    nll = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        main(["-q", "pretrain", f"{made}/data", "--out", str(out), "--preset", "tiny",
              "--steps", "20", "--precision", precision])  # fmt: skip
        weights = load_file(out / "model.safetensors")
        assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())
        config = json.loads((out / "config.json").read_text())
        assert config["precision"] == precision
        nll[precision] = json.loads((out / "summary.json").read_text())["eval/action_nll"]
    assert abs(nll["bf16"] - nll["fp32"]) / nll["fp32"] < 0.05, nll
    main(["-q", "discover", f"{made}/base", "--out", str(tmp_path / "mc16"), "--data",
          f"{made}/clean", "--preset", "tiny", "--steps", "4", "--episodes", "2",
          "--precision", "bf16"])  # fmt: skip
    assert (tmp_path / "mc16" / "metacontroller.safetensors").is_file()


def test_an_unknown_precision_is_refused():
    from irl_lens.train.loop import autocast

    with pytest.raises(ValueError, match="allowed: fp32, bf16"):
        autocast("cpu", "fp8")
