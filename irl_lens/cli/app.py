"""The ``irl-lens`` command line.

Every command reads one folder and writes another; results go to ``summary.json``
(flat keys) and a short table on stdout. Bad input (missing or corrupt files, unknown
names, out-of-range values) ends with one line naming the problem and exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from irl_lens import interrupts
from irl_lens.cli.common import (
    DEVICE_OPTION,
    MAX_COUNT,
    PRECISION_OPTION,
    Device,
    Precision,
    print_table,
    resolve_device,
)

app = typer.Typer(
    name="irl-lens",
    help=(
        "Find, read and steer temporal abstractions inside autoregressive action models, "
        "and do RL inside them (Kobayashi et al. 2025, arXiv 2512.20605).\n\n"
        "Typical pipeline:\n\n"
        "  irl-lens data gridworld --split pretrain --episodes 200000 --out runs/q/data\n\n"
        "  irl-lens pretrain runs/q/data --out runs/q/base --preset quick\n\n"
        "  irl-lens probe runs/q/base"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # reflow docstring paragraphs to the terminal width
)

_STATE = {"debug": False}

MAX_EPISODES = 10_000_000
"""Upper bound of ``data --episodes`` (50 times the paper's largest dataset, 200k episodes;
a dataset is held in memory whole)."""


class EnvName(str, Enum):
    gridworld = "gridworld"
    ant = "ant"


class Split(str, Enum):
    pretrain = "pretrain"
    clean = "clean"


class TieBreak(str, Enum):
    random = "random"
    first = "first"


class Record(str, Enum):
    executed = "executed"
    mean = "mean"


class Preset(str, Enum):
    quick = "quick"
    paper = "paper"
    tiny = "tiny"


class Arch(str, Enum):
    transformer = "transformer"
    hawk = "hawk"


class Encoder(str, Enum):
    slots = "slots"
    objects = "objects"


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only warnings and results.")
    ] = False,
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            help="CPU threads for torch (0: torch's default, one per core). Use 1 per job "
            "when several jobs share the machine: oversubscribed cores slow every job down.",
            min=0,
        ),
    ] = 0,
) -> None:
    _STATE["debug"] = debug
    if threads:
        # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
        import torch

        torch.set_num_threads(threads)
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL's import chatter (MuJoCo)


@app.command()
def data(
    env: Annotated[EnvName, typer.Argument(help="Environment: gridworld or ant.")],
    out: Annotated[Path, typer.Option("--out", help="Output dataset folder (written atomically).")],
    split: Annotated[
        Split,
        typer.Option(
            help="pretrain: expert data for the base model; clean: eps=0 "
            "data for metacontroller / supervised controllers."
        ),
    ] = Split.pretrain,
    episodes: Annotated[
        int, typer.Option(help="Number of episodes (1 to 10,000,000).", min=1, max=MAX_EPISODES)
    ] = 100_000,
    eps: Annotated[
        float | None,
        typer.Option(
            help="Expert noise: probability of a random non-terminating "
            "action (pretrain only; default 0)."
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(help="Fixed task such as 0-1-2-3 or 'post' instead of the Table A1 mix."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed; same seed, same dataset.")] = 0,
    n_envs: Annotated[
        int | None,
        typer.Option(help="Episodes simulated at once (gridworld 4096, ant 256).", min=1),
    ] = None,
    expert: Annotated[
        Path | None,
        typer.Option(help="ant: expert run folder (default: the expert shipped in the package)."),
    ] = None,
    action_noise: Annotated[
        float,
        typer.Option(
            help="ant pretrain: the executed action is the expert's mean plus this times its "
            "Gaussian noise (1: the expert's own sampling, the paper's data).",
            min=0.0,
        ),
    ] = 1.0,
    record: Annotated[
        Record,
        typer.Option(
            help="ant pretrain: the action the dataset keeps: executed (the paper's data) or "
            "mean (the expert's intended action where the noisier one led: DART-style "
            "corrective labels).",
        ),
    ] = Record.executed,
    tie_break: Annotated[
        TieBreak,
        typer.Option(
            help="gridworld: how the expert picks among equally short moves. random: "
            "uniformly (the paper's expert); first: always the lowest-numbered move, a "
            "deterministic expert (the analogue of the ant expert's mean for clean data)."
        ),
    ] = TieBreak.random,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace --out if it is an irl-lens dataset (only once the new one is "
            "complete). A folder holding anything else is never touched."
        ),
    ] = False,
) -> None:
    """Generate expert trajectories (observations, actions, subgoal labels).

    gridworld: the shortest-path expert. ant: the PPO expert; pretrain samples its
    Gaussian, clean uses its mean.

    Example: irl-lens data gridworld --split pretrain --episodes 200000 --out runs/q/data

    Example: irl-lens data ant --split clean --episodes 2000 --out runs/ant/clean
    """
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from irl_lens import runs

    runs.check_output(out, runs.DATASET_KIND, overwrite=overwrite, inputs=[expert])
    t0 = time.perf_counter()
    if env is EnvName.ant:
        if eps is not None or tie_break is not TieBreak.random:
            raise ValueError("--eps and --tie-break apply to the gridworld expert only")
        # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
        from irl_lens.data.generate_ant import generate_ant
        from irl_lens.models.ant_expert import load_expert

        ds = generate_ant(
            episodes, split=split.value, seed=seed, task=task, expert=load_expert(expert),
            n_envs=n_envs or 256, action_noise=action_noise, record=record.value,
        )  # fmt: skip
    else:
        if expert is not None:
            raise ValueError("--expert applies to ant only (the gridworld expert is exact)")
        if action_noise != 1.0 or record is not Record.executed:
            raise ValueError("--action-noise and --record apply to the ant expert only")
        # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
        from irl_lens.data.generate import generate_gridworld

        ds = generate_gridworld(
            episodes, split=split.value, seed=seed, eps=eps, task=task,
            n_envs=n_envs or 4096, tie_break=tie_break.value,
        )  # fmt: skip
    gen_s = time.perf_counter() - t0
    ds.save(out, overwrite=overwrite)
    print_table(
        {
            "episodes": ds.n_episodes,
            "steps": ds.n_steps,
            "mean_length": ds.meta["mean_length"],
            "expert_success": ds.meta["success_rate"],
            "episodes_per_s": ds.n_episodes / gen_s,
        },
        title=f"wrote {out}",
    )


@app.command()
def pretrain(
    data_dir: Annotated[
        Path, typer.Argument(metavar="DATA", help="Dataset folder from `irl-lens data`.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Run folder to create (or continue with --resume).")
    ],
    preset: Annotated[
        Preset,
        typer.Option(
            help="quick: this CPU, ~15 min; paper: Table A4 sizes "
            "for a GPU; tiny: seconds, for tests."
        ),
    ] = Preset.quick,
    steps: Annotated[
        int | None,
        typer.Option(help="Override the preset's optimizer steps.", min=1, max=MAX_COUNT),
    ] = None,
    n_layers: Annotated[
        int | None, typer.Option(help="Override the number of blocks L.", min=1)
    ] = None,
    d_model: Annotated[int | None, typer.Option(help="Override the residual width.", min=8)] = None,
    lr: Annotated[float | None, typer.Option(help="Override the peak learning rate.")] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(
            help="Override AdamW weight decay on weight matrices (preset 0.03, as the paper).",
            min=0.0,
        ),
    ] = None,
    obs_loss_weight: Annotated[
        float | None, typer.Option(help="Override lambda (next-observation loss weight).")
    ] = None,
    path_features: Annotated[
        bool | None,
        typer.Option(
            "--path-features/--no-path-features",
            help="Gridworld: give each colour's encoder slot the shortest-path moves toward "
            "it (default: the preset's; quick on, paper off). Ant: the encoder also reads "
            "each colour's shortest-path direction in the torso's frame and the heading "
            "(default: the preset's; quick on, paper and tiny off).",
        ),
    ] = None,
    heading_features: Annotated[
        bool | None,
        typer.Option(
            "--heading-features/--no-heading-features",
            help="Ant with path features: the encoder also reads how the torso's velocity "
            "agrees with each colour's path (per colour the cosine and the speed along it; a "
            "fixed function of one observation). Default: the preset's.",
        ),
    ] = None,
    underfoot_features: Annotated[
        bool | None,
        typer.Option(
            "--underfoot-features/--no-underfoot-features",
            help="Ant: add to the residual stream a learned vector for the colour of the cell "
            "the torso stands on (or none), a fixed function of one observation, so reaching "
            "a colour (a subgoal's end) is linear in every layer. Default: the preset's (quick "
            "on, paper and tiny off).",
        ),
    ] = None,
    action_mixtures: Annotated[
        int | None,
        typer.Option(
            help="Continuous actions (ant): a mixture of K diagonal Gaussians as the action "
            "head (1: one Gaussian, the paper's). Default: the preset's.",
            min=1,
        ),
    ] = None,
    future_horizon: Annotated[
        int | None,
        typer.Option(
            help="Ant: also predict the torso's displacement over the next K steps (a fixed "
            "function of the episode's observations, weighted like the next observation); 0 "
            "off, as the paper. Default: the preset's.",
            min=0,
        ),
    ] = None,
    next_colour_weight: Annotated[
        float | None,
        typer.Option(
            help="Ant: also predict the colour the torso enters next (a fixed function of the "
            "episode's later observations; a cross-entropy with this weight beside the action "
            "loss; held-out accuracy in eval/next_colour_acc); 0 off, as the paper. Default: "
            "the preset's.",
            min=0.0,
        ),
    ] = None,
    arch: Annotated[
        Arch | None,
        typer.Option(
            help="transformer (a TransformerLens HookedTransformer) or hawk (RG-LRU blocks, "
            "the paper's ant base; rollouts carry its recurrent state). Default: the "
            "preset's: hawk for the quick and paper ant presets, else transformer.",
        ),
    ] = None,
    encoder: Annotated[
        Encoder | None,
        typer.Option(
            help="Gridworld encoder: slots (one slot per colour, the default) or objects "
            "(objects pooled by a few learned queries, no colour indexing: issue 29's "
            "mid-depth controllability experiment).",
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the run's last checkpoint, exactly.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace --out if it is a base-model run (only once the new run is complete; "
            "until then the old one stays as it was)."
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seeds initialisation and data order.")] = 0,
    device: Annotated[Device, DEVICE_OPTION] = Device.cpu,
    precision: Annotated[Precision, PRECISION_OPTION] = Precision.fp32,
    compile_model: Annotated[
        bool,
        typer.Option(
            "--compile/--no-compile",
            help="Train through torch.compile (opt-in, for a GPU; compiling takes minutes).",
        ),
    ] = False,
) -> None:
    """Pretrain the base action model (a HookedTransformer, or --arch hawk) on expert trajectories.

    Writes RUN/config.json, RUN/model.safetensors, RUN/checkpoints/step_N, RUN/metrics.jsonl
    and RUN/summary.json with held-out accuracy against the known-task ceiling.

    Example: irl-lens pretrain runs/q/data --out runs/q/base --preset quick
    """
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    import dataclasses

    import torch

    from irl_lens import presets, runs
    from irl_lens.data.dataset import load_dataset
    from irl_lens.train.evaluate import make_evaluator
    from irl_lens.train.pretrain import pretrain as run_pretrain

    dev = resolve_device(device)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite: choose one")
    runs.check_output(out, "base_model", inputs=[data_dir], resume=resume, overwrite=overwrite)
    ds = load_dataset(data_dir)
    chosen = presets.get(preset.value, ds.meta["env"])
    model_cfg, train_cfg = chosen.base, chosen.pretrain
    model_over = {
        k: v
        for k, v in (
            ("n_layers", n_layers),
            ("d_model", d_model),
            ("obs_loss_weight", obs_loss_weight),
            ("path_features", path_features),
            ("heading_features", heading_features),
            ("underfoot_features", underfoot_features),
            ("future_horizon", future_horizon),
            ("next_colour_weight", next_colour_weight),
            ("action_mixtures", action_mixtures),
            ("encoder", encoder.value if encoder is not None else None),
            ("arch", arch.value if arch is not None else None),
        )
        if v is not None
    }
    train_over = {
        k: v
        for k, v in (("steps", steps), ("lr", lr), ("weight_decay", weight_decay))
        if v is not None
    }
    if ds.meta["env"] == "ant" and encoder is Encoder.objects:
        raise ValueError("--encoder objects: only gridworld data has objects on a board")
    model_cfg = dataclasses.replace(
        model_cfg,
        **model_over,
        obs_kind=ds.meta["obs_kind"],
        obs_dim=int(ds.meta.get("obs_dim", model_cfg.obs_dim)),
        action_kind=ds.meta["action_kind"],
        n_actions=int(ds.meta["n_actions"]),
    )
    train_cfg = dataclasses.replace(train_cfg, **train_over, seed=seed)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with runs.staged(out, overwrite=True) if overwrite else nullcontext(out) as target:
        result = run_pretrain(
            ds,
            target,
            model_cfg,
            train_cfg,
            data_path=str(data_dir),
            preset=preset.value,
            resume=resume,
            device=dev,
            precision=precision.value,
            compile_model=compile_model,
            evaluate=make_evaluator(train_cfg.rollout_episodes, seed),
        )
        summary = {
            "steps": result.steps,
            "wall_seconds": time.perf_counter() - t0,
            "train_seconds": result.train_seconds,
            "tokens_per_s": result.tokens_per_second,
            **result.final_eval,
        }
        runs.write_json(target / "summary.json", summary)
    print_table(summary, title=f"pretrained {out}")


@app.command("evaluate")
def evaluate_base(
    run: Annotated[Path, typer.Argument(help="Base-model run folder from `irl-lens pretrain`.")],
    data_dir: Annotated[
        Path | None,
        typer.Option("--data", help="Held-out dataset (default: the run's own held-out episodes)."),
    ] = None,
    episodes: Annotated[
        int | None,
        typer.Option(
            help="Free-running episodes (default: gridworld 1000, ant 200).", min=1, max=MAX_COUNT
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the free-running episodes.")] = 0,
    device: Annotated[Device, DEVICE_OPTION] = Device.cpu,
    ship: Annotated[
        bool,
        typer.Option(
            help="Ant: then copy the base and a card (data, command, wall-clock, these "
            "numbers) into the package (irl_lens/assets/ant_base/), where `irl-lens "
            "reproduce ant` and `irl-lens unpack-base` find it."
        ),
    ] = False,
) -> None:
    """Evaluate a base model. Gridworld: held-out accuracy vs the known-task ceiling (split
    into first- and second-colour steps), free-running pair completion and success. Ant:
    held-out action NLL and MSE (vs the expert actions' variance), and free-running success
    on the pretraining tasks, colours completed per episode and, after k colours, how often
    the next colour entered is the task's. Updates RUN/summary.json.

    Example: irl-lens evaluate runs/q/base

    Ship an ant base in the package: irl-lens evaluate runs/ant/base --ship
    """
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    import torch

    from irl_lens import runs
    from irl_lens.data.dataset import load_dataset
    from irl_lens.models.base import load_base_model
    from irl_lens.train.evaluate import base_metrics
    from irl_lens.train.pretrain import split_train_val

    dev = resolve_device(device)
    config = runs.read_json(run / "config.json", "run config")
    if ship and (config.get("data_meta") or {}).get("env") != "ant":
        raise ValueError("--ship: the package ships an ant base only (a gridworld base "
                         "pretrains in ~15 min on this CPU)")  # fmt: skip
    model = load_base_model(run).to(dev, print_details=False)
    if data_dir is not None:
        ds = load_dataset(data_dir)
    else:
        if not config.get("data"):
            raise ValueError(f"{run}: the config names no dataset; pass --data DIR")
        ds = load_dataset(config["data"])
        _, val = split_train_val(ds, int(config["train"]["val_episodes"]))
        ds = ds.subset(val)
    with torch.no_grad():
        n_free = episodes or (200 if ds.meta.get("env") == "ant" else 1000)
        metrics = base_metrics(model, ds, n_free, seed=seed)
    summary_path = run / "summary.json"
    summary = runs.read_json(summary_path, "summary") if summary_path.is_file() else {}
    runs.write_json(summary_path, summary | metrics)
    print_table(metrics, title=f"evaluated {run} on {ds.n_episodes} held-out episodes")
    if ship:
        # lazy: only --ship needs it
        from irl_lens.models import shipped

        n_arg = f" --episodes {episodes}" if episodes is not None else ""
        shipped.ship_base(run, f"irl-lens evaluate {run} --ship --seed {seed}{n_arg}")
        print(f"shipped {run} as {shipped.SHIPPED_ANT_BASE} (+ card.json)")


@app.command("unpack-base")
def unpack_base(
    out: Annotated[Path, typer.Option(help="New run folder for the shipped base.")],
) -> None:
    """Copy the base model shipped in the package (the quick ant base) into a run folder,
    with its card (data, pretraining command, wall-clock, numbers). Probes, controllers,
    discover and internal RL then read it like any `irl-lens pretrain` run; `reproduce ant`
    starts from it unless --from-scratch.

    Example: irl-lens unpack-base --out runs/ant/base
    """
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from irl_lens.models import shipped

    card = shipped.unpack_base(out)
    print_table(
        card["summary"],
        title=f"unpacked the shipped {card['env']} base ({card['preset']}) into {out}",
    )
    print(f"  trained with: {card['pretrain_command']}")


@app.command()
def bench(
    seconds: Annotated[float, typer.Option(help="Time budget per measurement.", min=0.1)] = 3.0,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the synthetic workloads.")] = 0,
    run: Annotated[
        Path | None,
        typer.Option(help="Time the rollout engine on this trained base model (default: random)."),
    ] = None,
    mc: Annotated[
        Path | None,
        typer.Option(help="Time internal-RL rollouts with this metacontroller (default: random)."),
    ] = None,
) -> None:
    """Throughput figures as JSON: env steps/s, data episodes/s, pretraining tokens/s and
    its fraction of the matmul-bound rate, rollout-engine and internal-RL episodes/s, all
    measured in this one run (ratios are only meaningful within one run).

    Example: irl-lens bench --run runs/q/base --mc runs/q/mc --out bench.json
    """
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from irl_lens.cli.bench import run_bench

    result = run_bench(seconds=seconds, seed=seed, run=run, mc=mc)
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
        from irl_lens import runs

        runs.write_json(out, result)


def _register_commands() -> None:
    """Commands that live in their own modules (they import the heavy parts lazily)."""
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from irl_lens.cli import analysis, ant, discovery, pipeline, rl

    ant.register(app)
    analysis.register(app)
    discovery.register(app)
    rl.register(app)
    pipeline.register(app)


_register_commands()


def _continue_hint(argv: list[str], e: interrupts.Interrupted) -> str:
    """One line: where the interrupted command stood and the command that continues it."""
    args = [a for a in argv if a != "--overwrite"]
    if e.step is None:
        again = shlex.join(["irl-lens", *argv])
        return f"interrupted; what had finished is kept; run again: {again}"
    if "--overwrite" in argv:
        return (
            f"interrupted at step {e.step}; the old folder is untouched; "
            f"run again: {shlex.join(['irl-lens', *argv])}"
        )
    if "--resume" not in args:
        args.append("--resume")
    saved = f" (checkpoint at step {e.checkpoint})" if e.checkpoint else ""
    return f"interrupted at step {e.step}{saved}; continue with: {shlex.join(['irl-lens', *args])}"


def _close_progress_bars() -> None:
    """Close bars left open by an exception, so the closing message stands on its own line
    (tqdm keeps its live bars in ``tqdm._instances``)."""
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; bad input ends with one line and exit code 2, a failed
    pipeline job (``reproduce``) with one line naming its log and exit code 1, SIGINT with
    130 and SIGTERM with 143 (one line saying how to continue)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = interrupts.install_handlers()
    try:
        _run(argv)
    finally:
        interrupts.restore_handlers(previous)


def _run(argv: list[str]) -> None:
    """Run the app on ``argv`` and turn each way it can end into an exit code (see main)."""
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from irl_lens.cli.sweep import JobsFailed
    from irl_lens.data.dataset import DatasetError
    from irl_lens.runs import RunError

    try:
        code = app(args=argv, standalone_mode=False)
    except interrupts.Interrupted as e:
        if _STATE["debug"]:
            raise
        _close_progress_bars()
        print(_continue_hint(argv, e), file=sys.stderr)
        sys.exit(e.exit_code)
    except (ValueError, DatasetError, RunError, FileNotFoundError, PermissionError) as e:
        if _STATE["debug"]:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        _close_progress_bars()
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    except (NotADirectoryError, FileExistsError, IsADirectoryError) as e:
        if _STATE["debug"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except JobsFailed as e:  # a pipeline's job failed: its log says why
        if _STATE["debug"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # outside the CLI's handlers (another thread's signal)
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except typer.Exit as e:  # --help, or a command's own exit
        sys.exit(e.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except typer.TyperException as e:  # usage errors: unknown option, bad choice ...
        msg = e.format_message() if hasattr(e, "format_message") else str(e)
        where = getattr(getattr(e, "ctx", None), "command_path", "irl-lens")
        print(f"error: {msg.splitlines()[0]} (see: {where} --help)", file=sys.stderr)
        sys.exit(2)
    # typer in non-standalone mode returns click's exit code (130 after a Ctrl-C it caught)
    if isinstance(code, int) and code:
        if code == 130:
            print("interrupted", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
