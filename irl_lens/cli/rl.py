"""``irl-lens internal-rl``, ``irl-lens raw-rl`` and ``irl-lens compare`` (paper Section 4).

Both RL commands use the same optimiser, batch and episode budget (:class:`RLConfig`);
``compare`` reads any number of their output folders and draws the success curves.
"""

from __future__ import annotations

import dataclasses
import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from irl_lens.cli.common import (
    DEVICE_OPTION,
    MAX_COUNT,
    SEED_OPTION,
    Device,
    resolve_device,
    run_env,
)

logger = logging.getLogger(__name__)


class RLPreset(StrEnum):
    quick = "quick"
    paper = "paper"
    tiny = "tiny"


_TASK = typer.Option(
    help="Task the env enforces: post (gridworld 0-1-2-3-4-5-6-7-0-1-2-3, ant 0-1-2-3), seen "
    "(gridworld 0-1-4-5-2-3-6-7-4-5-0-1: only subgoal transitions of the pretraining tasks) "
    "or colours like 0-1-2-3."
)
_EPISODES = typer.Option(help="Episode budget (default: the preset's).", min=1, max=MAX_COUNT)
_BATCH = typer.Option(
    "--batch-size", help="Episodes per PPO batch (default: the preset's).", min=1, max=MAX_COUNT
)
_LR = typer.Option(help="AdamW learning rate (default: the preset's).")
_RAW_LR = typer.Option(
    help="AdamW learning rate (default: the preset's raw-action rate; quick ant: 3e-5, the "
    "paper's, where internal RL takes 1e-3)."
)
_PRESET = typer.Option(help="quick (CPU: 300k episodes, lr 1e-3), paper (1M, lr 3e-5), tiny.")
_RESUME = typer.Option(help="Continue an interrupted run in --out from its last checkpoint.")


def _config(preset: RLPreset, env: str, task, episodes, batch_size, lr, seed, raw=False):
    """The run's :class:`RLConfig`: the preset's (``raw``: with its raw-action learning
    rate, :attr:`irl_lens.presets.Preset.raw_rl_lr`), then the options given."""
    from irl_lens import presets  # lazy: `irl-lens --help` stays fast (presets import torch)

    p = presets.get(preset.value, env)
    cfg = p.rl
    if raw and p.raw_rl_lr is not None:
        cfg = dataclasses.replace(cfg, lr=p.raw_rl_lr)
    over = {k: v for k, v in (("episodes", episodes), ("batch_size", batch_size), ("lr", lr))
            if v is not None}  # fmt: skip
    return dataclasses.replace(cfg, **over, task=task, seed=seed)


def _print(out: Path, summary: dict) -> None:
    if not summary:
        print(f"stopped early; continue with --resume ({out})")
        return
    print(f"RL run {out}")
    for k, v in summary.items():
        print(f"  {k:<28} {v:,.4f}" if abs(v) < 1e5 else f"  {k:<28} {v:,.0f}")


def internal_rl(
    mc: Annotated[
        Path,
        typer.Argument(
            metavar="MC",
            help="Metacontroller folder (discover, commit) or CompILE folder (compile).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    task: Annotated[str, _TASK] = "post",
    episodes: Annotated[int | None, _EPISODES] = None,
    batch_size: Annotated[int | None, _BATCH] = None,
    lr: Annotated[float | None, _LR] = None,
    threshold: Annotated[float, typer.Option(help="Switch when beta >= threshold.")] = 0.5,
    preset: Annotated[RLPreset, _PRESET] = RLPreset.quick,
    resume: Annotated[bool, _RESUME] = False,
    seed: Annotated[int, SEED_OPTION] = 0,
    device: Annotated[Device, DEVICE_OPTION] = Device.cpu,
) -> None:
    """Internal RL: PPO over the metacontroller's latent codes on the switching timescale.

    The frozen base model, switching unit and decoder are the environment; the policy picks
    a code whenever beta crosses the threshold. On a CompILE folder (the baseline) it picks
    a code every `segments/mean_steps` raw steps of the trained CompILE (its boundary
    network reads whole episodes, so it cannot end a segment online). Writes metrics.jsonl
    (per batch: success, abstract and raw steps, clip fraction, approx KL, episodes/s),
    summary.json and episodes.json (sampled episodes with beta, codes and true subgoals).

    Example: irl-lens internal-rl runs/q/mc --out runs/q/rl-0 --task post --seed 0
    """
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from irl_lens import runs
    from irl_lens.train.internal_rl import internal_rl as run_internal

    mc_config = runs.read_json(mc / "config.json", "metacontroller config")
    if not mc_config.get("base_run"):
        raise ValueError(
            f"{mc} names no base run: internal RL runs a metacontroller trained on an "
            "irl-lens base model (irl-lens discover) in that model's environment"
        )
    env = run_env(runs.resolve_ref(mc_config, "base_run", mc))
    cfg = dataclasses.replace(_config(preset, env, task, episodes, batch_size, lr, seed),
                              threshold=threshold)  # fmt: skip
    summary = run_internal(mc, out, cfg, device=resolve_device(device), resume=resume)
    _print(out, summary)


def raw_rl(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Base-model run folder.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    task: Annotated[str, _TASK] = "post",
    episodes: Annotated[int | None, _EPISODES] = None,
    batch_size: Annotated[int | None, _BATCH] = None,
    lr: Annotated[float | None, _RAW_LR] = None,
    preset: Annotated[RLPreset, _PRESET] = RLPreset.quick,
    resume: Annotated[bool, _RESUME] = False,
    seed: Annotated[int, SEED_OPTION] = 0,
    device: Annotated[Device, DEVICE_OPTION] = Device.cpu,
) -> None:
    """Raw-action RL baseline: the same PPO optimiser finetuning the base model's actions.

    On ant the quick preset finetunes at the paper's learning rate (3e-5): the whole base at
    internal RL's 1e-3 loses its walk at its first rewarded batch.

    Example: irl-lens raw-rl runs/q/base --out runs/q/raw-0 --task post --seed 0
    """
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from irl_lens.train.raw_rl import raw_rl as run_raw

    cfg = _config(preset, run_env(run), task, episodes, batch_size, lr, seed, raw=True)
    summary = run_raw(run, out, cfg, device=resolve_device(device), resume=resume)
    _print(out, summary)


def compare(
    rl_dirs: Annotated[list[Path], typer.Argument(metavar="RL_DIR...", help="RL run folders.")],
    out: Annotated[
        Path | None, typer.Option(help="Folder for the figures and table (default: none).")
    ] = None,
) -> None:
    """Success-vs-episodes curves (median, 25-75% band over seeds) and a results table.

    Example: irl-lens compare runs/q/rl-* runs/q/raw-* --out runs/q/compare
    """
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from analyses import rl_curves
    from irl_lens import runs

    comp = rl_curves.compare_runs(rl_dirs)
    rows = rl_curves.table(comp)
    print(f"{'method':<24} {'runs':>4} {'final success (median [min, max])':>36} "
          f"{'episodes to 0.5 (median)':>26} {'reached':>8}")  # fmt: skip
    for r in rows:
        final = (f"{r['final_success_median']:.3f} [{r['final_success_min']:.3f}, "
                 f"{r['final_success_max']:.3f}]")  # fmt: skip
        e = r["episodes_to_0.5_median"]
        e_txt = f"{e:,.0f}" if e == e else "never"
        print(f"{r['method']:<24} {r['runs']:>4} {final:>36} {e_txt:>26} "
              f"{r['reached_0.5']:>5}/{r['runs']}")  # fmt: skip
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        rl_curves.curves_figure(comp).write_html(out / "success_linear.html")
        rl_curves.curves_figure(comp, log_x=True).write_html(out / "success_log.html")
        runs.write_json(out / "table.json", {"rows": rows})
        flat = {}
        for r in rows:
            m = r["method"]
            flat[f"compare/{m}/final_success"] = r["final_success_median"]
            flat[f"compare/{m}/episodes_to_0.5"] = r["episodes_to_0.5_median"]
        runs.write_json(out / "summary.json", flat)
        print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command(name="internal-rl")(internal_rl)
    app.command(name="raw-rl")(raw_rl)
    app.command(name="compare")(compare)
