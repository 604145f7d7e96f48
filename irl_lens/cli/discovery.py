"""``irl-lens discover``: train a metacontroller, then read what it found (paper Section 3).

The command trains (or, with ``--resume``, continues) a metacontroller on clean expert data
and then runs the analyses of :mod:`analyses.switching` and :mod:`analyses.clustering` on
the held-out episodes (the dataset's last ``val_episodes``, never trained on): switch
alignment, code clustering, steering with the cluster codes, and prior-sampling rollouts.
Everything lands in ``MC/summary.json`` (flat keys), ``MC/analysis.json`` and HTML figures.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from irl_lens.cli.common import (
    DEVICE_OPTION,
    MAX_COUNT,
    PRECISION_OPTION,
    RAY_ADDRESS_OPTION,
    RUNNER_OPTION,
    SEED_OPTION,
    SWEEP_DEVICE_OPTION,
    SWEEP_WORKERS_OPTION,
    Device,
    Precision,
    clean_dataset,
    parse_rank,
    print_table,
    resolve_device,
    run_env,
)

logger = logging.getLogger(__name__)


class Variant(StrEnum):
    full = "full"
    beta1 = "beta1"
    cotrain = "cotrain"


class Switch(StrEnum):
    sigmoid = "sigmoid"
    gumbel = "gumbel"


class Rate(StrEnum):
    step = "step"
    switch = "switch"


class DiscoverPreset(StrEnum):
    quick = "quick"
    paper = "paper"
    tiny = "tiny"


def discover(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Base-model run folder.")],
    out: Annotated[Path, typer.Option("--out", help="Metacontroller output folder.")],
    layer: Annotated[
        int | None, typer.Option(help="Layer to read and write (default L // 2, mid-depth).")
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(help="KL (rate) weight (default: the preset's, 0.1; quick ant 1).", min=0),
    ] = None,
    variant: Annotated[
        Variant,
        typer.Option(
            help="full: the method (base frozen); beta1: beta forced to 1; cotrain: base "
            "and metacontroller trained together."
        ),
    ] = Variant.full,
    switch: Annotated[
        Switch, typer.Option(help="Switching unit: sigmoid, or gumbel (relaxed Bernoulli).")
    ] = Switch.sigmoid,
    rank: Annotated[
        str | None,
        typer.Option(
            metavar="N|full",
            help="Rank of the decoded controller U = B A: a number 1..d_model, or full "
            "(default: the paper's, 16 on gridworld and full on ant).",
        ),
    ] = None,
    embed_layer: Annotated[
        int | None,
        typer.Option(
            help="Layer whose residuals (the base alone's) the non-causal sequence embedder "
            "reads; default: --layer, as in the paper. A CPU-budget aid: on ant the base's "
            "belief about the target lives in the top layer (docs/experiments-log.md). Only "
            "training's posterior changes; the switch, decoder and rollouts do not.",
            min=0,
        ),
    ] = None,
    cotrain_from_pretrained: Annotated[
        bool,
        typer.Option(help="cotrain only: start the base from RUN's weights, not from scratch."),
    ] = False,
    data: Annotated[
        Path | None,
        typer.Option(help="Clean dataset (default: fresh clean expert episodes)."),
    ] = None,
    data_episodes: Annotated[
        int,
        typer.Option(help="Episodes to generate when --data is not given.", min=20, max=MAX_COUNT),
    ] = 5000,
    preset: Annotated[
        DiscoverPreset,
        typer.Option(help="quick (CPU, 2000 steps), paper (Table A10, 64k steps), tiny."),
    ] = DiscoverPreset.quick,
    steps: Annotated[
        int | None, typer.Option(help="Override the training steps.", min=1, max=MAX_COUNT)
    ] = None,
    tokens_per_batch: Annotated[
        int | None,
        typer.Option(
            help="Padded steps per training batch (default: the preset's; quick 4096).", min=64
        ),
    ] = None,
    kl_free_steps: Annotated[
        int | None,
        typer.Option(
            help="Steps with KL weight 0 at the start (default: the preset's, scaled with "
            "--steps; quick 200 of 2000).",
            min=0,
        ),
    ] = None,
    kl_warmup_steps: Annotated[
        int | None,
        typer.Option(
            help="Steps of the linear ramp of the KL weight from 0 to --alpha after the free "
            "steps (default: the preset's, scaled with --steps; quick 600 of 2000).",
            min=0,
        ),
    ] = None,
    rate: Annotated[
        Rate | None,
        typer.Option(
            help="What the KL (rate) term charges: step, every step's proposal (the paper's "
            "Eq 3 as written); switch, each proposal weighted by its gate beta_t (the expected "
            "KL of a Bernoulli switch, paper E.1), so holding a code is free and a switch pays "
            "for what its code carries. Default: the preset's (step; quick ant: switch)."
        ),
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(
            help="AdamW weight decay (default: the preset's, 0.03 as in Table A10).", min=0
        ),
    ] = None,
    obs_loss_weight: Annotated[
        float | None,
        typer.Option(
            help="lambda of the next-observation term (default: the base's own, as it was "
            "pretrained; ant 10). 0 scores the codes on the actions (and a next-colour head) "
            "only.",
            min=0,
        ),
    ] = None,
    task: Annotated[
        str, typer.Option(help="Task the cluster codes are steered through (post or pairs).")
    ] = "post",
    episodes: Annotated[
        int,
        typer.Option(
            help="Rollout episodes for steering and prior sampling.", min=1, max=MAX_COUNT
        ),
    ] = 1000,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run in --out from its checkpoint.")
    ] = False,
    analyse_only: Annotated[
        bool, typer.Option(help="Skip training; re-run the analyses on the trained --out.")
    ] = False,
    seed: Annotated[int, SEED_OPTION] = 0,
    device: Annotated[Device, DEVICE_OPTION] = Device.cpu,
    precision: Annotated[Precision, PRECISION_OPTION] = Precision.fp32,
) -> None:
    """Discover temporal abstractions: train a metacontroller on the frozen base model.

    Loss = the controlled base's pretraining loss (action NLL + lambda * next-observation
    NLL, and a next-colour head's term) + alpha * KL(N(mu, Sigma) || N(0, I)) on clean data;
    prints the distortion (held-out action NLL, next to the base alone's on the same episodes:
    codes that carry nothing leave it there or worse), rate (KL), switches per episode vs the
    true subgoal
    segments, switch alignment (F1), code clustering (NMI/ARI) and steering with the
    discovered codes.

    Example: irl-lens discover runs/q/base --out runs/q/mc --data runs/q/data-clean
    """
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from irl_lens import runs
    from irl_lens.models.base import load_base_model
    from irl_lens.models.metacontroller import MetacontrollerConfig
    from irl_lens.train import discover as disc

    dev = resolve_device(device)
    env_name = run_env(run)
    ds, data_path = clean_dataset(data, data_episodes, seed, env=env_name)
    base_cfg = load_base_model(run).model_cfg
    if ds.meta.get("obs_kind") != base_cfg.obs_kind:
        raise ValueError(f"--data is {ds.meta.get('env')!r} data but {run} is a {env_name} model")
    from irl_lens import presets  # lazy: `irl-lens --help` stays fast (presets import torch)

    cfg = presets.get(preset.value, env_name).discover
    if steps is not None:
        cfg = cfg.with_steps(steps)  # the KL schedule's free and ramp steps scale along
    over = {
        k: v
        for k, v in (
            ("alpha", alpha), ("weight_decay", weight_decay),
            ("tokens_per_batch", tokens_per_batch), ("obs_loss_weight", obs_loss_weight),
            ("rate", rate.value if rate is not None else None),
        )
        if v is not None
    }  # fmt: skip
    if kl_free_steps is not None:
        over["kl_free_steps"] = kl_free_steps
    if kl_warmup_steps is not None:
        over["kl_warmup_steps"] = kl_warmup_steps
    cfg = dataclasses.replace(
        cfg, **over, variant=variant.value, seed=seed,
        cotrain_from_pretrained=cotrain_from_pretrained,
    )  # fmt: skip
    t0 = time.perf_counter()
    if not analyse_only:
        mc_cfg = MetacontrollerConfig(
            d_model=base_cfg.d_model,
            switch=switch.value,
            rank=parse_rank(rank, env_name, base_cfg.d_model),
            embed_layer=embed_layer,
        )
        result = disc.discover(
            run, ds, out, cfg, layer=layer, mc_cfg=mc_cfg, data_path=data_path, device=dev,
            precision=precision.value,
            resume=resume, progress=True,
        )  # fmt: skip
        train_summary = result.summary
    else:
        train_summary = runs.read_json(out / "summary.json", "metacontroller summary")
        train_summary = {k: v for k, v in train_summary.items() if k.startswith("discover/")}
    from analyses.discovery import analyse  # lazy: `irl-lens --help` stays fast (torch)

    n_val = min(cfg.val_episodes, ds.n_episodes // 5)
    found = analyse(out, ds, n_val, task=task, episodes=episodes, seed=seed, device=dev)
    for name, fig in found.figures.items():
        fig.write_html(out / f"{name}.html")
    runs.write_json(out / "analysis.json", found.details)
    summary = train_summary | found.summary
    summary["discover/seconds"] = time.perf_counter() - t0
    runs.write_json(out / "summary.json", summary)
    _print_summary(out, summary)


def _print_summary(out: Path, s: dict[str, float]) -> None:
    def g(key: str) -> str:
        v = s.get(key, float("nan"))
        return f"{v:.3f}"

    print(f"metacontroller {out}")

    def alone(key: str) -> str:  # runs trained before the reference was recorded lack it
        return f" (the base alone: {g(key)})" if key in s else ""

    print(f"  distortion (val action NLL)  {g('discover/action_nll')}"
          f"{alone('discover/base_action_nll')}")  # fmt: skip
    if "discover/next_colour_nll" in s:
        print(f"  next-colour cross-entropy    {g('discover/next_colour_nll')}"
              f"{alone('discover/base_next_colour_nll')}")  # fmt: skip
    print(f"  rate (val KL per step)       {g('discover/kl')}")
    print(f"  mean beta                    {g('discover/mean_beta')}")
    print(
        f"  switches per episode         {g('switching/switches_per_episode')} "
        f"(true {g('switching/true_switches_per_episode')}; t >= 1)"
    )
    print(f"  beta within 0.05 of 0 or 1   {g('switching/binary_fraction')}")
    print("  switch alignment             tol 0     tol 1     tol 2")
    for name in ("precision", "recall", "f1"):
        row = "  ".join(f"{g(f'switching/{name}_tol{t}'):>8}" for t in (0, 1, 2))
        print(f"    {name:<26} {row}")
    print(f"  code clustering              NMI {g('clustering/nmi')}  ARI {g('clustering/ari')}")
    print(
        f"  what a code predicts         subgoal {g('clustering/subgoal_accuracy')} "
        f"(chance {g('clustering/subgoal_chance')}), target cell R2 "
        f"{g('clustering/target_cell_r2')}, the subgoal before it "
        f"{g('clustering/previous_accuracy')} (chance {g('clustering/previous_chance')})"
    )
    print(
        f"  steering (one-subgoal tasks) {g('steering/mean_steered')} "
        f"vs uncontrolled {g('steering/mean_uncontrolled')}"
    )
    if math.isnan(s.get("steering/task_success", 0.0)):
        print("  steering (whole task)        n/a: no cluster code for some subgoal of the task")
    else:
        print(
            f"  steering (whole task)        {g('steering/task_success')} "
            f"vs uncontrolled {g('steering/task_base_success')}"
        )
    print(
        f"  prior sampling               success {g('prior/success')}, "
        f"switches/episode {g('prior/switches_per_episode')}"
    )
    print(f"wrote {out}")


def commit(
    mc: Annotated[Path, typer.Argument(metavar="MC", help="Metacontroller folder (discover).")],
    out: Annotated[Path, typer.Option("--out", help="New metacontroller folder to write.")],
    data: Annotated[
        Path, typer.Option(help="The clean data the metacontroller was trained on (discover).")
    ],
    mode: Annotated[
        str | None,
        typer.Option(
            help="voronoi: codes drawn from the prior inside each code's k-means cell (every "
            "prior code commits to one subgoal); means: the posterior means (default: the "
            "preset's, voronoi)."
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            help="Optimizer steps of the fresh decoder (default: the preset's; quick 400).",
            min=1,
            max=MAX_COUNT,
        ),
    ] = None,
    k: Annotated[
        int | None,
        typer.Option(help="Code cells (voronoi; default: chosen by silhouette over 2..8).", min=2),
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option(help="Learning rate: constant, or cosine decay to 0 (default: the preset's)."),
    ] = None,
    preset: Annotated[
        DiscoverPreset,
        typer.Option(
            help="Refit settings: quick and paper (400 steps; the paper has no refit), tiny."
        ),
    ] = DiscoverPreset.quick,
    seed: Annotated[int, SEED_OPTION] = 0,
    device: Annotated[Device, DEVICE_OPTION] = Device.cpu,
) -> None:
    """Refit a metacontroller's decoder so that its codes command the base model.

    The encoder and the switching unit stay frozen; a fresh decoder learns on the codes it
    will be given at use time instead of sampled ones, so it imposes a subgoal rather than
    deferring to the base model's prior (an addition to the paper: see
    docs/experiments-log.md). Writes a new metacontroller folder for `internal-rl`, with
    compositional steering and prior commitment on `post` in its summary.json.

    Example: irl-lens commit runs/q/mc-full --out runs/q/mc-full-commit --data runs/q/data-discovery
    """
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    import dataclasses

    from analyses import composition
    from irl_lens import presets
    from irl_lens.data.dataset import load_dataset
    from irl_lens.models.metacontroller import load_metacontroller
    from irl_lens.train.commit import CommitConfig
    from irl_lens.train.commit import commit as run_commit

    dev = resolve_device(device)
    ds = load_dataset(data)
    chosen = {"mode": mode, "steps": steps, "k": k, "schedule": schedule, "seed": seed}
    cfg = dataclasses.replace(
        presets.get(preset.value).commit or CommitConfig(),
        **{name: v for name, v in chosen.items() if v is not None},
    )
    result = run_commit(
        mc, ds, out, cfg, data_path=str(data), device=dev,
        analyse=lambda folder, held_out: composition.analyse(
            load_metacontroller(folder, device=dev), ds, held_out),
    )  # fmt: skip
    print_table(result.summary, title=f"committed {mc} -> {out}", why={
        "commit/cells": "means mode: no code cells"})  # fmt: skip


def compile_command(
    run: Annotated[Path, typer.Argument(metavar="BASE", help="Base-model run (pretrain).")],
    out: Annotated[Path, typer.Option("--out", help="New CompILE run folder.")],
    data: Annotated[Path, typer.Option(help="Clean data with subgoal labels (as discover).")],
    layer: Annotated[
        int | None, typer.Option(help="Layer its codes steer (default: the preset's; quick 1).")
    ] = None,
    segments: Annotated[int, typer.Option(help="M, segments per episode.", min=1, max=64)] = 4,
    beta_z: Annotated[
        float | None,
        typer.Option(help="KL weight of the latents (default: preset's; quick 0.001).", min=0),
    ] = None,
    beta_b: Annotated[
        float | None,
        typer.Option(help="KL weight of the boundaries (default: preset's, 0.1).", min=0),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(help="Optimizer steps (default: the preset's).", min=1, max=MAX_COUNT),
    ] = None,
    preset: Annotated[DiscoverPreset, typer.Option(help="quick, paper or tiny.")] = (
        DiscoverPreset.quick
    ),
    resume: Annotated[
        bool,
        typer.Option(help="Continue from the last checkpoint (on a finished run: analyse again)."),
    ] = False,
    seed: Annotated[int, SEED_OPTION] = 0,
    device: Annotated[Device, DEVICE_OPTION] = Device.cpu,
) -> None:
    """Fit CompILE (Kipf et al. 2019) as the paper adapts it: segments and one latent per
    segment inferred from the raw observations and actions, each latent steering the
    frozen base through the metacontroller's decoder (`e + U(z) e` at --layer).

    Reports, on the held-out episodes, its boundary alignment with the true subgoal
    switches (F1 at tolerances 0-2, as discover does) and the clustering of its latents by
    subgoal (NMI), and the raw steps per inferred segment (`segments/mean_steps`), the
    segment length `irl-lens internal-rl` uses on this folder.

    Example: irl-lens compile runs/q/base --out runs/q/compile --data runs/q/data-discovery
    """
    import dataclasses

    import numpy as np

    from analyses import segmentation
    from irl_lens import presets, runs
    from irl_lens.data.dataset import load_dataset
    from irl_lens.models.compile_model import CompILEConfig
    from irl_lens.train.compile_fit import load_compile, train_compile

    dev = resolve_device(device)
    ds = load_dataset(data)
    chosen = presets.get(preset.value, ds.meta["env"])
    over = {k: v for k, v in (("beta_z", beta_z), ("beta_b", beta_b), ("steps", steps))
            if v is not None}  # fmt: skip
    cfg = dataclasses.replace(chosen.compile_fit, **over, seed=seed)
    base_cfg = runs.read_json(run / "config.json", "base run config")["model"]
    if layer is None:
        layer = 1 if preset.value == "quick" else int(base_cfg["n_layers"]) // 2
    model_cfg = CompILEConfig(
        d_model=int(base_cfg["d_model"]), obs_kind=base_cfg["obs_kind"],
        obs_dim=int(base_cfg["obs_dim"]), action_kind=base_cfg["action_kind"],
        n_actions=int(base_cfg["n_actions"]), n_segments=segments,
    )  # fmt: skip
    train_compile(run, ds, out, cfg, layer=layer, model_cfg=model_cfg, data_path=str(data),
                  device=dev, resume=resume)  # fmt: skip
    n_val = min(cfg.val_episodes, ds.n_episodes // 5)
    held = np.arange(ds.n_episodes - n_val, ds.n_episodes)
    summary = segmentation.analyse(load_compile(out, device=dev), ds, held, seed=seed)
    runs.write_json(out / "summary.json", summary)
    print_table(summary, title=f"CompILE {out} ({len(held)} held-out episodes)")


def register(app: typer.Typer) -> None:
    """Add ``discover``, ``commit`` and ``sweep rate-distortion`` to the ``irl-lens`` app."""
    app.command(name="discover")(discover)
    app.command(name="commit")(commit)
    app.command(name="compile")(compile_command)
    app.add_typer(sweep_app, name="sweep")


sweep_app = typer.Typer(help="Sweeps of independent trainings (run in parallel processes).",
                        no_args_is_help=True)  # fmt: skip


@sweep_app.command("rate-distortion")
def rate_distortion(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Base-model run folder.")],
    out: Annotated[Path, typer.Option("--out", help="Sweep folder (one subfolder per run).")],
    alphas: Annotated[
        str, typer.Option(help="Comma-separated KL weights.")
    ] = "0,0.05,0.1,0.17,0.3,0.5,1",
    seeds: Annotated[
        int, typer.Option(help="Seeds per alpha and variant.", min=1, max=MAX_COUNT)
    ] = 3,
    variants: Annotated[
        str, typer.Option(help="Comma-separated: full (frozen base), cotrain, beta1.")
    ] = "full,cotrain",
    data: Annotated[
        Path | None, typer.Option(help="Clean dataset (strongly advised: one dataset for all).")
    ] = None,
    preset: Annotated[DiscoverPreset, typer.Option(help="Training preset of every run.")] = (
        DiscoverPreset.quick
    ),
    steps: Annotated[
        int | None, typer.Option(help="Override the training steps.", min=1, max=MAX_COUNT)
    ] = None,
    tokens_per_batch: Annotated[
        int | None,
        typer.Option(
            help="Padded steps per training batch of every run (default: preset's).", min=64
        ),
    ] = None,
    kl_free_steps: Annotated[
        int | None,
        typer.Option(help="KL-free start of every run (see discover).", min=0, max=MAX_COUNT),
    ] = None,
    kl_warmup_steps: Annotated[
        int | None, typer.Option(help="KL ramp of every run (see discover).", min=0, max=MAX_COUNT)
    ] = None,
    rate: Annotated[
        Rate | None, typer.Option(help="The KL term of every run (see discover).")
    ] = None,
    layer: Annotated[
        int | None, typer.Option(help="Residual layer of every run (default L/2).", min=0)
    ] = None,
    switch: Annotated[
        Switch,
        typer.Option(
            help="Switching unit of every run; the paper's grid curve uses gumbel. On the quick "
            "base, gumbel at layer 1 switches exactly at the subgoal boundaries."
        ),
    ] = Switch.sigmoid,
    rank: Annotated[
        str | None,
        typer.Option(
            metavar="N|full",
            help="Controller rank of every run: a number or full (default: 16 on grid).",
        ),
    ] = None,
    embed_layer: Annotated[
        int | None,
        typer.Option(help="Layer the sequence embedder of every run reads (see discover).", min=0),
    ] = None,
    workers: Annotated[int, SWEEP_WORKERS_OPTION] = 0,
    episodes: Annotated[
        int, typer.Option(help="Rollout episodes of each run's analyses.", min=1, max=MAX_COUNT)
    ] = 200,
    device: Annotated[Device, SWEEP_DEVICE_OPTION] = Device.cpu,
    runner: Annotated[str, RUNNER_OPTION] = "local",
    ray_address: Annotated[str | None, RAY_ADDRESS_OPTION] = None,
) -> None:
    """Rate-distortion sweep: discover over alphas x seeds x variants, then the figure (Fig 7).

    Each run is an `irl-lens discover` in its own process with one torch thread; finished
    runs are skipped and interrupted ones resumed, so the command can be re-run safely.
    Prints every run, then a table per variant and alpha (medians over seeds, [min, max],
    the share of seeds whose switches align with the subgoal boundaries). Writes
    OUT/rate_distortion.html (log rate axis) and OUT/summary.json (`rd/VARIANT/aALPHA/...`).

    Example: irl-lens sweep rate-distortion runs/q/base --out runs/q/rd --data runs/q/data-clean
    """
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from irl_lens.cli.ray_runner import make_runner
    from irl_lens.cli.sweep import rate_distortion_jobs

    alpha_list = _weights("--alphas", alphas)
    variant_list = [v.strip() for v in variants.split(",") if v.strip()]
    bad = [v for v in variant_list if v not in Variant.__members__]
    if bad:
        raise ValueError(f"--variants: unknown {bad}; allowed: full, beta1, cotrain")
    resolve_device(device)  # --device cuda without one: one line, before any run starts
    extra = ["--preset", preset.value, "--episodes", str(episodes), "--switch", switch.value]
    if rate is not None:
        extra += ["--rate", rate.value]
    if device != Device.cpu:
        extra += ["--device", device.value]
    passed = {"--layer": layer, "--data": data, "--steps": steps, "--rank": rank,
              "--tokens-per-batch": tokens_per_batch, "--kl-free-steps": kl_free_steps,
              "--kl-warmup-steps": kl_warmup_steps, "--embed-layer": embed_layer}  # fmt: skip
    extra += [a for flag, v in passed.items() if v is not None for a in (flag, str(v))]
    jobs = rate_distortion_jobs(run, out, alpha_list, seeds, variant_list, extra)
    _run_kl_sweep(jobs, out, make_runner(runner, workers or None, address=ray_address))


def _weights(flag: str, text: str) -> list[float]:
    """``--alphas`` / ``--betas``: comma-separated numbers >= 0, or one line saying why not."""
    try:
        weights = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: give numbers separated by commas") from None
    if not weights or min(weights) < 0 or not all(math.isfinite(w) for w in weights):
        raise ValueError(f"{flag} {text!r}: give one or more finite numbers >= 0")
    return weights


def _run_kl_sweep(jobs: list, out: Path, runner) -> None:
    """Run a KL-weight sweep's jobs, then its table, figure and ``OUT/summary.json``: one
    point per finished folder (:mod:`analyses.rate_distortion`)."""
    from analyses import rate_distortion as rd
    from irl_lens import runs

    results = runner.run(jobs)
    failed = [r for r in results if r.returncode != 0]
    points = rd.load_points([j.out for j in jobs])
    rows = rd.rd_table(points)
    rd.rd_figure(points).write_html(out / "rate_distortion.html")
    runs.write_json(out / "summary.json", {
        "sweep/runs": float(len(jobs)),
        "sweep/finished": float(len(points)),
        "sweep/failed": float(len(failed)),
        "sweep/starred": float(sum(p.f1 >= rd.STAR_F1 for p in points)),
    } | rd.table_summary(rows))  # fmt: skip
    print(f"{'variant':<8} {'alpha':>6} {'seed':>4} {'rate':>8} {'distortion':>10} "
          f"{'F1@1':>6} {'switches':>8}")  # fmt: skip
    for p in sorted(points, key=lambda p: (p.variant, p.alpha, p.seed)):
        print(f"{p.variant:<8} {p.alpha:>6g} {p.seed:>4} {p.rate:>8.3f} {p.distortion:>10.4f} "
              f"{p.f1:>6.2f} {p.switches_per_episode:>8.2f}")  # fmt: skip
    print(f"\nper alpha: median over seeds [min, max]; F1>=0.9: share of seeds whose "
          f"switches align with the subgoal boundaries\n{rd.format_table(rows)}")  # fmt: skip
    for r in failed:
        print(f"FAILED: {r.job.out} (exit {r.returncode}); log {r.log}")
    print(f"wrote {out / 'rate_distortion.html'}")


@sweep_app.command("compile-kl")
def compile_kl(
    run: Annotated[Path, typer.Argument(metavar="BASE", help="Base-model run folder.")],
    out: Annotated[Path, typer.Option("--out", help="Sweep folder (one subfolder per run).")],
    data: Annotated[
        Path, typer.Option(help="Clean data with subgoal labels (as compile and discover).")
    ],
    betas: Annotated[
        str, typer.Option(help="Comma-separated KL weights of CompILE's latents (beta_z).")
    ] = "0.001,0.01,0.1,1",
    seeds: Annotated[int, typer.Option(help="Seeds per beta.", min=1, max=MAX_COUNT)] = 3,
    preset: Annotated[DiscoverPreset, typer.Option(help="Training preset of every run.")] = (
        DiscoverPreset.quick
    ),
    steps: Annotated[
        int | None, typer.Option(help="Override the training steps.", min=1, max=MAX_COUNT)
    ] = None,
    layer: Annotated[
        int | None,
        typer.Option(help="Layer every run's latents steer (default: the preset's).", min=0),
    ] = None,
    workers: Annotated[int, SWEEP_WORKERS_OPTION] = 0,
    device: Annotated[Device, SWEEP_DEVICE_OPTION] = Device.cpu,
    runner: Annotated[str, RUNNER_OPTION] = "local",
    ray_address: Annotated[str | None, RAY_ADDRESS_OPTION] = None,
) -> None:
    """CompILE's KL-weight sweep (the paper sweeps it for its baseline): `irl-lens compile`
    over betas x seeds, through the same runner as the rate-distortion sweep.

    Each run is its own process with one torch thread; finished runs are skipped and
    interrupted ones resumed. Prints every run (rate: the latents' held-out KL per step;
    distortion: held-out action NLL per step; F1 of its boundaries at tolerance 1), then a
    table per beta. Writes OUT/rate_distortion.html and OUT/summary.json
    (`rd/compile/aBETA/...`). Pick the beta for the baseline from it (the boundaries'
    F1 and the clustering NMI in each run's summary.json).

    Example: irl-lens sweep compile-kl runs/q/base --out runs/q/ckl --data runs/q/data-discovery
    """
    from irl_lens.cli.ray_runner import make_runner
    from irl_lens.cli.sweep import compile_kl_jobs

    beta_list = _weights("--betas", betas)
    resolve_device(device)  # --device cuda without one: one line, before any run starts
    extra = ["--data", str(data), "--preset", preset.value]
    if device != Device.cpu:
        extra += ["--device", device.value]
    passed = {"--layer": layer, "--steps": steps}
    extra += [a for flag, v in passed.items() if v is not None for a in (flag, str(v))]
    jobs = compile_kl_jobs(run, out, beta_list, seeds, extra)
    _run_kl_sweep(jobs, out, make_runner(runner, workers or None, address=ray_address))
