"""``irl-lens gpu-smoke`` (``make gpu-smoke``): every stage on a device in minutes, checked
against the CPU, with the throughput that sizes a ``--preset paper`` run there.

Three parts, written to ``OUT/smoke.json`` and printed as one table:

1. **Same weights, same numbers.** A tiny pipeline (tiny data; pretraining, discovery, the
   commitment refit, internal RL and raw-action RL at the ``tiny`` preset for a few hundred
   steps) runs on the CPU. Its base model and metacontroller are then loaded on the device
   and evaluated on the same held-out episodes: the held-out action NLL and the
   metacontroller's noiseless codes must agree within :data:`SAME_WEIGHTS_TOL`.
2. **Training on the device.** The same pipeline runs again with ``--device DEVICE`` (each
   stage its own ``irl-lens`` process, as ``reproduce`` runs it): every stage must finish,
   and the device's held-out action NLL and discovery NLL must lie within
   :data:`TRAINED_TOL` of the CPU's (kernels differ, so training does not follow the same
   path bit for bit).
3. **Throughput at the paper's sizes** on the device (random weights): pretraining tokens/s,
   discovery steps/s, internal-RL episodes/s, and from them the wall-clock of one
   ``--preset paper`` job per stage (``paper_hours/...``). Rollouts of a random model end
   early, so the RL figure is optimistic.

With ``--device cpu`` (no GPU here) parts 1 and 2 compare the CPU with itself: the CPU half,
which checks that the pipeline and the comparisons run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from irl_lens import presets, runs
from irl_lens.cli.sweep import Job, LocalRunner

logger = logging.getLogger(__name__)

SAME_WEIGHTS_TOL = 1e-3
"""Largest |CPU - device| of the held-out action NLL and of any code, with the same weights."""
TRAINED_TOL = 0.25
"""Largest relative gap between the CPU's and the device's trained held-out NLLs."""


@dataclass(frozen=True)
class SmokeSettings:
    device: str = "cpu"
    seed: int = 0
    steps: int = 200
    """Pretraining and discovery steps of the tiny pipeline."""
    rl_episodes: int = 512
    throughput_seconds: float = 5.0
    """Time budget of each paper-size throughput measurement (at least one timed step)."""
    throughput_preset: str = "paper"
    """Whose sizes the throughput is measured at (``tiny`` in tests)."""


def pipeline_jobs(out: Path, s: SmokeSettings, device: str) -> list[Job]:
    """The tiny pipeline's jobs on ``device`` (data is shared, made on the CPU)."""
    data, clean, d = out / "data", out / "data-clean", out / device
    tiny, seed = ["--preset", "tiny", "--seed", str(s.seed)], ["--device", device]
    return [
        Job(["data", "gridworld", "--episodes", "1500", "--out", str(data), "--seed",
             str(s.seed)], data, marker="meta.json"),
        Job(["data", "gridworld", "--split", "clean", "--episodes", "300", "--tie-break",
             "first", "--out", str(clean), "--seed", str(s.seed)], clean, marker="meta.json"),
        Job(["pretrain", str(data), "--out", str(d / "base"), "--steps", str(s.steps), *tiny,
             *seed], d / "base", marker="model.safetensors", needs=(data,)),
        Job(["discover", str(d / "base"), "--out", str(d / "mc"), "--data", str(clean),
             "--steps", str(s.steps), "--episodes", "20", *tiny, *seed], d / "mc",
            needs=(d / "base", clean)),
        Job(["commit", str(d / "mc"), "--out", str(d / "mc-commit"), "--data", str(clean),
             *tiny, *seed], d / "mc-commit", needs=(d / "mc",)),
        Job(["internal-rl", str(d / "mc-commit"), "--out", str(d / "rl"), "--task", "0-1-2-3",
             "--episodes", str(s.rl_episodes), *tiny, *seed], d / "rl",
            needs=(d / "mc-commit",)),
        Job(["raw-rl", str(d / "base"), "--out", str(d / "raw"), "--task", "0-1-2-3",
             "--episodes", str(s.rl_episodes), *tiny, *seed], d / "raw", needs=(d / "base",)),
    ]  # fmt: skip


def same_weights(out: Path, device: str) -> dict[str, float]:
    """The CPU-trained base and metacontroller evaluated on the CPU and on ``device``."""
    from irl_lens.data.dataset import load_dataset, make_batch
    from irl_lens.models.metacontroller import load_metacontroller
    from irl_lens.train.evaluate import heldout_metrics

    clean = load_dataset(out / "data-clean")
    held = clean.subset(range(clean.n_episodes - 64, clean.n_episodes))
    found: dict[str, dict] = {}
    for dev in ("cpu", device):
        loaded = load_metacontroller(out / "cpu" / "mc", device=dev)
        with torch.no_grad():
            nll = heldout_metrics(loaded.base, held)["eval/action_nll"]
            batch = make_batch(held, list(range(held.n_episodes)), dev)
            z = loaded.posterior(batch.obs, batch.mask, sample=False).z.cpu()
        found[dev] = {"nll": nll, "z": z}
    return {
        "same_weights/action_nll_cpu": found["cpu"]["nll"],
        "same_weights/action_nll_gap": abs(found["cpu"]["nll"] - found[device]["nll"]),
        "same_weights/code_gap": float((found["cpu"]["z"] - found[device]["z"]).abs().max()),
    }


def trained(out: Path, device: str) -> dict[str, float]:
    """Held-out NLLs of the pipeline trained on the CPU and on ``device``, and their gaps."""
    result = {}
    for key, folder in (("eval/action_nll", "base"), ("discover/action_nll", "mc")):
        cpu, dev = (runs.read_json(out / d / folder / "summary.json")[key]
                    for d in ("cpu", device))  # fmt: skip
        name = key.replace("/", "_")
        gap = abs(dev - cpu) / max(abs(cpu), 1e-9)
        result |= {f"trained/{name}_cpu": cpu, f"trained/{name}_{device}": dev,
                   f"trained/{name}_relative_gap": gap}  # fmt: skip
    return result


def paper_estimate(s: SmokeSettings) -> dict[str, float]:
    """Throughput of ``s.throughput_preset``'s sizes on the device and the hours one job of
    each stage of that preset takes at it."""
    from irl_lens.cli.bench import (
        discover_throughput,
        internal_rl_throughput,
        pretrain_throughput,
    )
    from irl_lens.models.base import build_model
    from irl_lens.models.metacontroller import MetacontrollerConfig, build_metacontroller

    p = presets.get(s.throughput_preset)
    sec, dev = s.throughput_seconds, s.device
    out = {}
    out |= pretrain_throughput(sec, s.seed, p.name, dev, min_steps=1, with_bound=False)
    out |= discover_throughput(sec, s.seed, p.name, dev, min_steps=1)
    model = build_model(p.base, seed=s.seed).to(dev, print_details=False).eval()
    mc = build_metacontroller(MetacontrollerConfig(p.base.d_model), seed=s.seed).to(dev).eval()
    rl = internal_rl_throughput(model, mc, sec, s.seed, n_envs=p.rl.batch_size, preset=p.name)
    out["internal_rl_episodes_per_s"] = rl["internal_rl_episodes_per_s"]
    hours = {
        "pretrain": p.pretrain.steps * p.pretrain.tokens_per_batch / out["pretrain_tokens_per_s"],
        "discover": p.discover.steps / out["discover_steps_per_s"],
        "internal_rl": p.rl.episodes / out["internal_rl_episodes_per_s"],
    }
    return out | {f"paper_hours/{k}": v / 3600 for k, v in hours.items()}


def run_smoke(out: Path, s: SmokeSettings, progress: bool = True) -> dict[str, float | str]:
    """Parts 1-3 of the module docstring; writes ``OUT/smoke.json``; raises ``RuntimeError``
    naming each check that failed (after writing everything)."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    devices = ["cpu"] if s.device == "cpu" else ["cpu", s.device]
    jobs = {j.out: j for d in devices for j in pipeline_jobs(out, s, d)}  # data: once
    todo = [j for j in jobs.values() if not j.done]
    results = LocalRunner(1, progress=progress).run(todo, desc="gpu-smoke")
    failed = [str(r.job.out) for r in results if r.returncode != 0]
    if failed:
        raise RuntimeError(f"gpu-smoke: stage(s) failed: {', '.join(failed)} (logs beside them)")
    summary: dict[str, float | str] = {"device": s.device}
    summary |= same_weights(out, s.device)
    summary |= trained(out, s.device)
    summary |= paper_estimate(s)
    summary["seconds"] = time.perf_counter() - t0
    runs.write_json(out / "smoke.json", summary)
    checks = {
        "same-weights action NLL": summary["same_weights/action_nll_gap"] <= SAME_WEIGHTS_TOL,
        "same-weights codes": summary["same_weights/code_gap"] <= SAME_WEIGHTS_TOL,
        "trained base NLL": summary["trained/eval_action_nll_relative_gap"] <= TRAINED_TOL,
        "trained discovery NLL": (
            summary["trained/discover_action_nll_relative_gap"] <= TRAINED_TOL
        ),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise RuntimeError(
            f"gpu-smoke: {', '.join(bad)} differ beyond tolerance ({out}/smoke.json)"
        )
    return summary
