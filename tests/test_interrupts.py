"""SIGINT and SIGTERM against a real ``irl-lens`` process: exit 130 / 143 with one line
saying how to continue, a consistent checkpoint, and a ``--resume`` that ends with weights
and ``metrics.jsonl`` identical to an uninterrupted run (wall-clock keys aside)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from irl_lens.runs import save_checkpoint
from tests.cli_helpers import run_cli

STEPS = 90
TIMING_KEYS = ("train/tokens_per_s",)
"""Wall-clock measurements: the only values that differ between two runs of one seed."""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _metrics_sha(run: Path) -> str:
    return hashlib.sha256(json.dumps(_metrics(run), sort_keys=True).encode()).hexdigest()


def _pretrain_args(data: Path, out: Path) -> list[str]:
    return ["-q", "--threads", "1", "pretrain", str(data), "--out", str(out), "--preset", "tiny",
            "--steps", str(STEPS)]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A dataset and an uninterrupted tiny pretraining run on it."""
    root = tmp_path_factory.mktemp("ref")
    from irl_lens.cli import main

    main(["-q", "data", "gridworld", "--episodes", "120", "--out", str(root / "data")])
    try:
        main(_pretrain_args(root / "data", root / "run"))
    except SystemExit as e:
        assert not e.code
    return root


def _interrupt(args: list[str], sig: int, after_step: int, cwd: Path):
    """Start ``irl-lens ARGS``, send ``sig`` once its metrics reach ``after_step``."""
    out = Path(args[args.index("--out") + 1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "irl_lens.cli", *args], cwd=cwd, stderr=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.is_file() and any(
            json.loads(line).get("step", 0) >= after_step
            for line in metrics.read_text().splitlines()
            if line.endswith("}")
        ):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize(
    "sig, after_step",
    [(signal.SIGINT, 25), (signal.SIGTERM, 50), (signal.SIGINT, 75), (signal.SIGTERM, 25)],
    ids=["sigint-25", "sigterm-50", "sigint-75", "sigterm-25"],
)
def test_interrupt_then_resume_equals_uninterrupted(reference, tmp_path, sig, after_step, capsys):
    out = tmp_path / "run"
    args = _pretrain_args(reference / "data", out)
    code, err = _interrupt(args, sig, after_step, tmp_path)
    assert code == 128 + sig, err
    last = err.strip().splitlines()[-1].split("\r")[-1]
    assert last.startswith("interrupted at step ") and "continue with: irl-lens" in last, err
    assert "--resume" in last and "Traceback" not in err
    assert not (out / "model.safetensors").exists()  # no completion marker
    assert not (out / "summary.json").exists()
    assert not list((out / "checkpoints").glob(".tmp-*"))
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    ref = reference / "run"
    assert _sha(out / "model.safetensors") == _sha(ref / "model.safetensors")
    assert _metrics(out) == _metrics(ref)
    steps = [r["step"] for r in _metrics(out) if "train/loss" in r]
    assert steps == sorted(set(steps))  # no gaps, no duplicates


def test_data_interrupted_writes_nothing(tmp_path):
    args = ["-q", "data", "gridworld", "--episodes", "2000000", "--out", str(tmp_path / "d")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "irl_lens.cli", *args], cwd=tmp_path, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    time.sleep(6)  # importing torch, then generating
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].split("\r")[-1].startswith("interrupted"), err
    assert list(tmp_path.iterdir()) == []  # no dataset, no temp folder


def test_resume_after_a_torn_first_checkpoint(reference, tmp_path, capsys):
    """A kill during the first checkpoint leaves ``checkpoints/.tmp-*`` and no complete
    checkpoint: a fresh run is refused (it is a run of ours), the reproduce runner passes
    ``--resume``, and ``--resume`` starts over at step 0, cleans the torn folder and ends
    equal to the uninterrupted run."""
    import shutil

    from irl_lens.cli.sweep import Job

    ref, out = reference / "run", tmp_path / "run"
    out.mkdir()
    shutil.copy(ref / "config.json", out / "config.json")
    shutil.copy(ref / "metrics.jsonl", out / "metrics.jsonl")
    torn = out / "checkpoints" / ".tmp-abc"
    torn.mkdir(parents=True)
    (torn / "model.safetensors").write_bytes(b"torn")
    args = _pretrain_args(reference / "data", out)
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "--resume" in err, err
    assert Job(args, out, leftover="resume").command()[-1] == "--resume"
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    assert not torn.exists()
    assert _sha(out / "model.safetensors") == _sha(ref / "model.safetensors")
    assert _metrics(out) == _metrics(ref)


def test_checkpoint_never_holds_nonfinite_weights(tmp_path):
    import torch

    from irl_lens.runs import NonFiniteError

    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="weight"):
        save_checkpoint(tmp_path, 3, layer, {"optimizer": {}})
    assert not list((tmp_path / "checkpoints").iterdir())
