"""``irl-lens reproduce``: the whole pipeline (gridworld or ant), resumable, with a report."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from irl_lens.cli.common import MAX_COUNT, SEED_OPTION, Device, resolve_device


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
        int, typer.Option(help="Internal-RL seeds on the full MC.", min=1, max=MAX_COUNT)
    ] = 3,
    rl_episodes: Annotated[
        int | None,
        typer.Option(
            help="Episode budget per RL run (default: the preset's; ant quick: 5120).", min=1
        ),
    ] = None,
    pretrain_episodes: Annotated[
        int | None,
        typer.Option(
            help="Pretraining episodes (default: gridworld 200000, ant 2000).",
            min=10,
            max=MAX_COUNT,
        ),
    ] = None,
    clean_episodes: Annotated[
        int | None,
        typer.Option(
            help="Clean episodes (default: gridworld 20000, ant 500).", min=10, max=MAX_COUNT
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
    seed: Annotated[int, SEED_OPTION] = 0,
    device: Annotated[
        Device, typer.Option(help="auto, cpu or cuda, passed to every job that runs a model.")
    ] = Device.cpu,
) -> None:
    """Reproduce the paper: data -> base -> probes, controllers -> metacontrollers (full,
    beta1, cotrain) -> internal RL and baselines -> report. On ant the data come from the
    shipped PPO expert, everything runs in the ant rollout engine (MuJoCo), co-training
    starts from the pretrained base (the paper's ant ablation) and each RL run has a
    smaller budget (an ant episode is up to 500 simulated steps).

    Every job is its own process, --workers at a time, started as soon as the jobs it needs
    are done; its output goes to OUT/JOB.log. Finished jobs are skipped and interrupted ones
    resume from their checkpoints, so after an interruption run the same command again.
    Writes OUT/report.md (each claim of the paper next to our number, the target it must
    meet and whether it does; the wall-clock and command of every job), OUT/summary.json
    and OUT/timing.json. The quick gridworld preset takes about two hours on a 2-core CPU
    (the progress bar estimates the time left from each job's measured wall-clock).

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
        with_sweep=with_sweep, commit=commit, device=device.value,
    )  # fmt: skip
    resolve_device(device)  # --device cuda without one: one line, before any job starts
    run_pipeline(out, settings)
    print((out / "report.md").read_text())
    print(f"open the dashboard on it: IRL_LENS_RUNS={out} streamlit run apps/controllers.py")


def register(app: typer.Typer) -> None:
    app.command(name="reproduce")(reproduce)
