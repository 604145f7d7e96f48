"""``irl-lens reproduce``: the whole pipeline (gridworld or ant), resumable, with a report."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from irl_lens.cli.common import (
    MAX_COUNT,
    RAY_ADDRESS_OPTION,
    RUNNER_OPTION,
    SEED_OPTION,
    Device,
    resolve_device,
)


class ReproEnv(StrEnum):
    gridworld = "gridworld"
    ant = "ant"


class ReproPreset(StrEnum):
    quick = "quick"
    paper = "paper"
    tiny = "tiny"


def reproduce(
    env: Annotated[
        ReproEnv,
        typer.Argument(help="gridworld or ant (the same stages; ant: a smaller RL budget)."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for every stage and the report.")],
    preset: Annotated[
        ReproPreset, typer.Option(help="quick (this CPU), paper (a GPU), tiny (a smoke test).")
    ] = ReproPreset.quick,
    rl_seeds: Annotated[
        int,
        typer.Option(
            help="Seeds of internal RL on the full MC and of raw-action RL, seed for seed.",
            min=1,
            max=MAX_COUNT,
        ),
    ] = 3,
    rl_episodes: Annotated[
        int | None,
        typer.Option(
            help="Episode budget per RL run (default: the preset's; ant quick: 25600).", min=1
        ),
    ] = None,
    pretrain_episodes: Annotated[
        int | None,
        typer.Option(
            help="Pretraining episodes (default: gridworld 200000, ant 8000).",
            min=10,
            max=MAX_COUNT,
        ),
    ] = None,
    clean_episodes: Annotated[
        int | None,
        typer.Option(
            help="Clean episodes (default: gridworld 20000, ant 8000).", min=10, max=MAX_COUNT
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Jobs run side by side (one per core).", min=1)] = 2,
    with_sweep: Annotated[
        bool, typer.Option(help="Also run the rate-distortion sweep (gridworld only).")
    ] = False,
    commit: Annotated[
        bool | None,
        typer.Option(
            "--commit/--no-commit",
            help="Refit each metacontroller's decoder so its codes command the base (irl-lens "
            "commit) before internal RL; an addition to the paper (default: the preset's: "
            "quick and tiny yes, paper no; gridworld only).",
        ),
    ] = None,
    from_scratch: Annotated[
        bool,
        typer.Option(
            help="Ant: pretrain the base instead of starting from the one shipped in the "
            "package for this preset (quick; `irl-lens unpack-base`, its card says how it was "
            "trained). The shipped base does not change with --seed."
        ),
    ] = False,
    seed: Annotated[int, SEED_OPTION] = 0,
    device: Annotated[
        Device, typer.Option(help="auto, cpu or cuda, passed to every job that runs a model.")
    ] = Device.cpu,
    runner: Annotated[str, RUNNER_OPTION] = "local",
    ray_address: Annotated[str | None, RAY_ADDRESS_OPTION] = None,
) -> None:
    """Reproduce the paper: data -> base -> probes, controllers -> metacontrollers (full,
    beta1, cotrain) and the CompILE baseline (gridworld) -> their commitment refits
    (--commit) -> internal RL and baselines -> report. On ant the data come from the
    shipped PPO expert, everything runs in the ant rollout engine (MuJoCo), co-training
    starts from the pretrained base (the paper's ant ablation) and each RL run has a
    smaller budget (an ant episode is up to 500 simulated steps).

    Every job is its own process, --workers at a time, started as soon as the jobs it needs
    are done; its output goes to OUT/JOB.log. Finished jobs are skipped and interrupted ones
    resume from their checkpoints, so after an interruption run the same command again.
    Writes OUT/report.md (each claim of the paper next to our number, the target it must
    meet and whether it does; the wall-clock and command of every job), OUT/summary.json
    and OUT/timing.json. The quick gridworld preset takes about four and a half hours on a
    2-core CPU (the progress bar estimates the time left from each job's measured
    wall-clock). On ant the quick preset starts from the base shipped in the package
    (--from-scratch pretrains it).

    Example: irl-lens reproduce gridworld --out runs/demo --preset quick

    Example: irl-lens reproduce ant --out runs/ant-demo --preset quick
    """
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from irl_lens.cli.reproduce import DEFAULT_EPISODES, ReproduceSettings, run_pipeline

    default_pretrain, default_clean = DEFAULT_EPISODES[env.value]
    pretrain_episodes = pretrain_episodes or default_pretrain
    clean_episodes = clean_episodes or default_clean
    settings = ReproduceSettings(
        env=env.value, preset=preset.value, seed=seed, rl_seeds=rl_seeds, rl_episodes=rl_episodes,
        pretrain_episodes=pretrain_episodes, clean_episodes=clean_episodes, workers=workers,
        with_sweep=with_sweep, commit=commit, device=device.value, runner=runner,
        ray_address=ray_address, from_scratch=from_scratch,
    )  # fmt: skip
    resolve_device(device)  # --device cuda without one: one line, before any job starts
    run_pipeline(out, settings)
    print((out / "report.md").read_text())
    print(f"open the dashboard on it: IRL_LENS_RUNS={out} streamlit run apps/controllers.py")


def gpu_smoke(
    out: Annotated[Path, typer.Option("--out", help="Folder for the runs and smoke.json.")] = Path(
        "runs/gpu-smoke"
    ),
    device: Annotated[
        Device, typer.Option(help="The device to check against the CPU (auto: CUDA if present).")
    ] = Device.auto,
    steps: Annotated[
        int,
        typer.Option(
            help="Pretraining and discovery steps of the tiny pipeline.", min=10, max=MAX_COUNT
        ),
    ] = 200,
    seconds: Annotated[
        float, typer.Option(help="Time budget of each paper-size throughput measurement.", min=0.1)
    ] = 5.0,
    seed: Annotated[int, SEED_OPTION] = 0,
) -> None:
    """Check every stage on a device against the CPU in minutes, and size a paper run there.

    Runs a tiny pipeline (pretrain, discover, commit, internal RL, raw-action RL) on the CPU
    and on the device, checks that the CPU's weights give the same numbers on the device
    (held-out NLL and codes within 1e-3) and that training there lands near the CPU's
    (held-out NLLs within 25%), then times the paper preset's sizes on the device: tokens/s,
    discovery steps/s, internal-RL episodes/s and the hours one paper job of each stage
    takes. Without CUDA, --device auto runs the CPU half. Exit 1 names a failed check.
    Writes OUT/smoke.json.

    Example: irl-lens gpu-smoke --out runs/gpu-smoke
    """
    from irl_lens.cli.common import print_table
    from irl_lens.cli.smoke import SmokeSettings, run_smoke

    settings = SmokeSettings(device=resolve_device(device), seed=seed, steps=steps,
                             throughput_seconds=seconds)  # fmt: skip
    try:
        summary = run_smoke(out, settings)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    print_table({k: v for k, v in summary.items() if not isinstance(v, str)},
                title=f"gpu-smoke on {settings.device}: every check passed")  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command(name="reproduce")(reproduce)
    app.command(name="gpu-smoke")(gpu_smoke)
