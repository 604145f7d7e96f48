"""``irl-lens expert`` and ``irl-lens expert-eval``: the ant-pinpad PPO expert.

MuJoCo and the trainer are imported inside the commands, so ``irl-lens --help`` stays fast.
"""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from irl_lens.cli.common import MAX_COUNT, SEED_OPTION, print_table


class ExpertEnv(str, Enum):
    ant = "ant"


def _eval_table(agent, episodes: int, seed: int, deterministic: bool) -> dict:
    """Success on the Table A2 mix and on the post-training task, ``episodes`` each."""
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from irl_lens.envs.ant_layout import ANT_POST_TASK
    from irl_lens.train.ant_expert import evaluate_expert

    pre = evaluate_expert(agent, episodes, None, deterministic, seed=seed)
    post = evaluate_expert(agent, episodes, ANT_POST_TASK, deterministic, seed=seed + 1)
    return {
        "eval/episodes": episodes,
        "eval/pretrain_success": pre["success"],
        "eval/post_success": post["success"],
        "eval/pretrain_mean_length": pre["mean_length"],
        "eval/post_mean_length": post["mean_length"],
        **{f"eval/pretrain_end_{k}": v for k, v in pre["end_reasons"].items()},
        **{f"eval/post_end_{k}": v for k, v in post["end_reasons"].items()},
        **{f"eval/task_{k}": v for k, v in pre["per_task"].items()},
    }


def _reward_weight(text: str) -> typer.models.OptionInfo:
    """A ``--name FLOAT >= 0`` option whose absence keeps :class:`PPOConfig`'s default."""
    return typer.Option(help=f"{text} Default: PPOConfig's.", min=0, show_default=False)


def _check_torque_scale(value: float | None, option: str) -> None:
    if value is not None and not 0 < value <= 1:
        raise ValueError(f"{option} {value}: must be in (0, 1] (a fraction of the range)")


def expert(
    env: Annotated[ExpertEnv, typer.Argument(help="Environment (only ant has a learned expert).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder to create (or continue).")],
    steps: Annotated[
        int,
        typer.Option(
            help="Env steps in all (paper: 256k steps of batch 1024).", min=1, max=MAX_COUNT
        ),
    ] = 5_000_000,
    n_envs: Annotated[int, typer.Option(help="Episodes simulated side by side.", min=1)] = 64,
    speed_bonus: Annotated[
        float | None, _reward_weight("Reward weight of the planar speed in any direction.")
    ] = None,
    yaw_cost: Annotated[
        float | None, _reward_weight("Reward cost per rad/s of torso yaw rate.")
    ] = None,
    lateral_cost: Annotated[
        float | None,
        _reward_weight("Reward cost per m/s of speed across the waypoint direction."),
    ] = None,
    fail_penalty: Annotated[
        float | None,
        _reward_weight("Reward lost when an episode fails (wrong colour, wall, torso height)."),
    ] = None,
    edge_cost: Annotated[
        float | None,
        _reward_weight(
            "Reward cost per metre the torso is closer than --edge-margin to a cell it must "
            "not enter (off the grid, the wall, another colour)."
        ),
    ] = None,
    edge_margin: Annotated[
        float | None, _reward_weight("Clearance (m) below which --edge-cost applies.")
    ] = None,
    torque_scale: Annotated[
        float | None,
        typer.Option(
            help="Training torques = actions clipped to [-1, 1] times this, in (0, 1]. "
            "Default: PPOConfig's (0.7).",
            min=0,
            max=1,
            show_default=False,
        ),
    ] = None,
    deploy_torque_scale: Annotated[
        float | None,
        typer.Option(
            help="Torque scale the trained expert acts with (evaluation, datasets), in "
            "(0, 1]; a little below --torque-scale, its gait bounces less. "
            "Default: PPOConfig's (0.5).",
            min=0,
            max=1,
            show_default=False,
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Adam learning rate, annealed linearly to 0. Default: PPOConfig's (3e-4); "
            "fine-tuning (--init) wants less, e.g. 1e-4.",
            min=0,
            show_default=False,
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            help="Fine-tune: start from this expert's weights (a run folder, or 'shipped' for "
            "the package's) instead of a fresh network. Its provenance goes into "
            "OUT/config.json and the shipped card.",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    eval_episodes: Annotated[
        int,
        typer.Option(
            help="Episodes per evaluation (pretrain mix, post task); 0 skips.", min=0, max=MAX_COUNT
        ),
    ] = 500,
    ship: Annotated[
        bool,
        typer.Option(
            help="Copy the trained weights and a card (command, time, success) into the "
            "package (irl_lens/assets/ant_expert.*), where `irl-lens data ant` finds them."
        ),
    ] = False,
    seed: Annotated[int, SEED_OPTION] = 0,
) -> None:
    """Train the ant-pinpad PPO expert (one agent for all Table A2 tasks), then evaluate it.

    Writes OUT/config.json, OUT/metrics.jsonl (success per update), OUT/checkpoints/,
    OUT/per_task_success.json, OUT/model.safetensors and OUT/summary.json with the
    success of the mean action (at the deployed torque scale) on the pretraining mix and on
    the post task 0-1-2-3.

    Example: irl-lens --threads 1 expert ant --out runs/ant/expert --steps 5000000 --ship

    Fine-tune the shipped expert at its deployed torque:
    irl-lens --threads 1 expert ant --out runs/ant/ft --init shipped --lr 1e-4 --steps 2000000
    --torque-scale 0.5
    """
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from irl_lens import runs
    from irl_lens.models.ant_expert import load_expert
    from irl_lens.train.ant_expert import PPOConfig, train_ant_expert

    _check_torque_scale(torque_scale, "--torque-scale")
    _check_torque_scale(deploy_torque_scale, "--deploy-torque-scale")
    overrides = {
        name: value
        for name, value in (
            ("speed_bonus", speed_bonus), ("yaw_cost", yaw_cost), ("lateral_cost", lateral_cost),
            ("fail_penalty", fail_penalty), ("edge_cost", edge_cost),
            ("edge_margin", edge_margin), ("torque_scale", torque_scale),
            ("deploy_torque_scale", deploy_torque_scale), ("lr", lr),
        )
        if value is not None
    }  # fmt: skip
    cfg = PPOConfig(total_steps=steps, n_envs=n_envs, **overrides)
    t0 = time.perf_counter()
    summary = train_ant_expert(out, cfg, seed=seed, resume=resume, init=init)
    summary["wall_seconds"] = time.perf_counter() - t0
    if summary["finished"] and eval_episodes:
        summary |= _eval_table(load_expert(out), eval_episodes, seed + 7, deterministic=True)
    runs.write_json(out / "summary.json", summary)
    print_table(summary, title=f"ant expert {out}")
    if ship:
        if not summary["finished"]:
            raise ValueError("--ship: training did not finish; continue it with --resume")
        _ship(out, cfg, seed, summary)


def _ship(run: Path, cfg, seed: int, summary: dict) -> None:
    """Copy ``run``'s weights (final, else its last checkpoint) into the package with a card
    saying how they were made and how well they do."""
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    import shutil

    from irl_lens import runs
    from irl_lens.envs.ant_layout import CELL_SIZE
    from irl_lens.models.ant_expert import SHIPPED_EXPERT, deployed_torque_scale, expert_weights

    weights = expert_weights(run)
    init = runs.read_json(run / "config.json", "expert run config").get("init")
    # read the card's provenance before the copy (an --init shipped run overwrites its source)
    SHIPPED_EXPERT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, SHIPPED_EXPERT)
    card = {
        "train_command": (
            f"irl-lens --threads 1 expert ant --out {run} --steps {cfg.total_steps} "
            f"--n-envs {cfg.n_envs} --speed-bonus {cfg.speed_bonus} --yaw-cost {cfg.yaw_cost} "
            f"--lateral-cost {cfg.lateral_cost} --fail-penalty {cfg.fail_penalty} "
            f"--edge-cost {cfg.edge_cost} --edge-margin {cfg.edge_margin} "
            f"--torque-scale {cfg.torque_scale} "
            f"--deploy-torque-scale {deployed_torque_scale(cfg)} --lr {cfg.lr} --seed {seed}"
            + (f" --init {init['from']}" if init else "")
        ),
        "weights": str(weights),
        "ship_command": f"irl-lens expert-eval {run} --ship",
        "ppo": cfg.to_dict(),
        "seed": seed,
        "cell_size": CELL_SIZE,
        "summary": summary,
    }
    if init:
        card["init"] = init  # the weights it started from, with how they were made
    runs.write_json(SHIPPED_EXPERT.with_suffix(".json"), card)
    print(f"shipped {weights} as {SHIPPED_EXPERT} (+ .json card)")


def expert_eval(
    run: Annotated[
        Path | None,
        typer.Argument(help="Expert run folder; default: the expert shipped in the package."),
    ] = None,
    episodes: Annotated[
        int, typer.Option(help="Episodes per task set.", min=1, max=MAX_COUNT)
    ] = 500,
    sample: Annotated[
        bool, typer.Option(help="Sample the Gaussian (pretrain data) instead of its mean (clean).")
    ] = False,
    ship: Annotated[
        bool,
        typer.Option(
            help="Ship RUN (final weights, else its last checkpoint) into the package with "
            "these numbers on its card."
        ),
    ] = False,
    torque_scale: Annotated[
        float | None,
        typer.Option(
            help="Act at this torque scale instead of the expert's own deployed one "
            "(a what-if; not with --ship).",
            min=0,
            max=1,
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, SEED_OPTION] = 0,
) -> None:
    """Success rate of an ant expert on the pretraining tasks and on the post task 0-1-2-3.

    Example: irl-lens expert-eval --episodes 500

    Example: irl-lens expert-eval runs/ant/expert --ship

    Example: irl-lens expert-eval runs/ant/expert --torque-scale 0.7
    """
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from irl_lens import runs
    from irl_lens.models.ant_expert import load_expert
    from irl_lens.train.ant_expert import saved_ppo_config

    if ship and run is None:
        raise ValueError("--ship needs the expert run folder to ship")
    if ship and torque_scale is not None:
        raise ValueError("--ship ships the expert as trained; drop --torque-scale")
    _check_torque_scale(torque_scale, "--torque-scale")
    t0 = time.perf_counter()
    agent = load_expert(run)
    if torque_scale is not None:
        agent.torque_scale = torque_scale
    table = _eval_table(agent, episodes, seed, deterministic=not sample)
    table["torque_scale"] = agent.torque_scale
    table["seconds"] = time.perf_counter() - t0
    print_table(table, title=f"ant expert {run or '(shipped)'}")
    if ship:
        config = runs.read_json(run / "config.json", "expert run config")
        summary = table | {
            k: v for k, v in runs.read_metrics(run / "metrics.jsonl")[-1].items()
            if k in ("update", "env_steps", "seconds", "success")
        }  # fmt: skip
        _ship(run, saved_ppo_config(config["ppo"]), int(config["seed"]), summary)


def register(app: typer.Typer) -> None:
    app.command("expert")(expert)
    app.command("expert-eval")(expert_eval)
