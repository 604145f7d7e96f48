"""``irl-lens probe`` and ``irl-lens controllers``: read the residual stream, steer it by layer.

Both commands read a base-model run folder and write their own folder (default: inside
the run), with ``summary.json`` (flat keys), ``result.json`` (the analysis result, for the
dashboard) and plotly HTML figures. :func:`register` adds them to the ``irl-lens`` app.

The analyses live in the top-level ``analyses`` package, which depends on ``irl_lens``;
they are imported inside the commands so that importing ``irl_lens`` never imports them.
Errors the user can fix (``ValueError``, ``RunError``, ``DatasetError``) propagate and the
entry point turns them into one line and exit code 2.
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

from irl_lens.cli.common import DEVICE_OPTION as _DEVICE
from irl_lens.cli.common import (
    MAX_COUNT,
    Device,
    clean_dataset,
    parse_rank,
    resolve_device,
    run_env,
)
from irl_lens.cli.common import SEED_OPTION as _SEED

logger = logging.getLogger(__name__)


class ControllerPreset(StrEnum):
    quick = "quick"
    paper = "paper"
    tiny = "tiny"


def _fmt(v: float) -> str:
    return "  nan" if isinstance(v, float) and math.isnan(v) else f"{v:.3f}"


def probe(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Base-model run folder.")],
    data: Annotated[
        Path | None,
        typer.Option(help="Dataset folder to probe on (default: fresh clean expert episodes)."),
    ] = None,
    episodes: Annotated[
        int,
        typer.Option(
            help="Episodes to use (80% fit the probes, 20% test them).", min=2, max=MAX_COUNT
        ),
    ] = 2000,
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN/probe).")] = None,
    checkpoints: Annotated[
        bool,
        typer.Option(help="Also probe the run's checkpoints (accuracy by layer x training step)."),
    ] = True,
    max_checkpoints: Annotated[
        int, typer.Option(help="Probe at most this many checkpoints, evenly spaced.", min=1)
    ] = 8,
    seed: Annotated[int, _SEED] = 0,
    device: Annotated[Device, _DEVICE] = Device.cpu,
) -> None:
    """Linear probes for the current subgoal at every layer 0..L (paper Fig 3, A1).

    Prints held-out accuracy by layer; writes summary.json, result.json and
    probe_accuracy.html, probe_belief.html (and probe_by_step.html with checkpoints).

    Example: irl-lens probe runs/q/base --data runs/q/data-clean
    """
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from analyses import probes
    from irl_lens import runs

    dev = resolve_device(device)
    t0 = time.perf_counter()
    ds, data_path = clean_dataset(data, episodes, seed, env=run_env(run))
    result = probes.probe_run(
        run,
        ds,
        n_episodes=episodes,
        checkpoints=checkpoints,
        max_checkpoints=max_checkpoints,
        seed=seed,
        device=dev,
        progress=True,
    )
    out = Path(out) if out is not None else Path(run) / "probe"
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(
        out / "config.json",
        {
            "kind": "probe",
            "version": runs.RUN_VERSION,
            "run": str(run),
            "data": data_path,
            "episodes": episodes,
            "seed": seed,
        },
    )
    summary = probes.summary(result) | {"probe/seconds": time.perf_counter() - t0}
    runs.write_json(out / "summary.json", summary)
    runs.write_json(out / "result.json", dataclasses.asdict(result))
    probes.accuracy_figure(result).write_html(out / "probe_accuracy.html")
    probes.belief_figure(result).write_html(out / "probe_belief.html")
    steps_fig = probes.steps_figure(result)
    if steps_fig is not None:
        steps_fig.write_html(out / "probe_by_step.html")

    print(f"subgoal probes of {run} ({result.n_train} train / {result.n_test} test steps)")
    print("  layer  accuracy  train  p(true)@start  p(true)@8+")
    for layer, acc, tr, bel in zip(
        result.layers, result.accuracy, result.train_accuracy, result.belief, strict=True
    ):
        late = [b for b in bel[8:] if b == b]
        print(
            f"  {layer:>5}  {acc:8.3f}  {tr:5.3f}  {bel[0]:13.3f}  "
            f"{_fmt(sum(late) / len(late) if late else float('nan')):>10}"
        )
    print(f"  majority class {result.chance:.3f}; best layer {result.best_layer}")
    if result.heading_rule is not None:
        print(
            f"  heading rule (one observation, no model: the colour whose path the torso's "
            f"velocity follows) {result.heading_rule:.3f}"
        )
    if result.checkpoint_steps:
        print("  accuracy by training step (rows) and layer (columns):")
        for step, accs in zip(result.checkpoint_steps, result.accuracy_by_step, strict=True):
            print(f"  {step:>8}  " + "  ".join(f"{a:.3f}" for a in accs))
    print(f"wrote {out}")


def controllers(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Base-model run folder.")],
    layers: Annotated[
        str, typer.Option(help="Layers to control: all, or e.g. 0,2,4 or 1-3 (0..L).")
    ] = "all",
    task: Annotated[
        str,
        typer.Option(
            help="Evaluation task: post (gridworld 0-1-2-3-4-5-6-7-0-1-2-3, ant 0-1-2-3), "
            "or colours like 0-1-6-7 (gridworld: colour pairs)."
        ),
    ] = "post",
    data: Annotated[
        Path | None,
        typer.Option(help="Clean dataset to train on (default: fresh clean expert episodes)."),
    ] = None,
    data_episodes: Annotated[
        int,
        typer.Option(help="Episodes to generate when --data is not given.", min=10, max=MAX_COUNT),
    ] = 5000,
    episodes: Annotated[
        int, typer.Option(help="Evaluation episodes per layer.", min=1, max=MAX_COUNT)
    ] = 1000,
    preset: Annotated[
        ControllerPreset,
        typer.Option(
            help="Training settings: quick (CPU), paper (C.3: lr 1e-3, 3200 steps), tiny."
        ),
    ] = ControllerPreset.quick,
    steps: Annotated[
        int | None, typer.Option(help="Override the training steps.", min=1, max=MAX_COUNT)
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Override the AdamW learning rate (default: the preset's; the paper: 1e-3 "
            "on gridworld, 3e-4 on ant).",
            show_default=False,
        ),
    ] = None,
    dagger_rounds: Annotated[
        int | None,
        typer.Option(
            help="Rounds of expert relabelling (DAgger) after the clean steps: roll the "
            "controlled base out on the pretraining tasks, label every state it visited with "
            "the clean expert's action, and train on those too (default: the preset's; 0: "
            "none, the paper's controllers).",
            min=0,
            max=MAX_COUNT,
            show_default=False,
        ),
    ] = None,
    dagger_episodes: Annotated[
        int | None,
        typer.Option(
            help="Closed-loop episodes per relabelling round (default: the preset's).",
            min=1,
            max=MAX_COUNT,
            show_default=False,
        ),
    ] = None,
    dagger_steps: Annotated[
        int | None,
        typer.Option(
            help="Training steps per relabelling round, half on clean data and half on the "
            "relabelled episodes (default: the preset's).",
            min=1,
            max=MAX_COUNT,
            show_default=False,
        ),
    ] = None,
    rank: Annotated[
        str | None,
        typer.Option(
            help="Rank of each controller's U: N or full (default: the paper's, 16 on "
            "gridworld and full on ant).",
            metavar="N|full",
        ),
    ] = None,
    hypernetwork: Annotated[
        bool,
        typer.Option(
            help="C.3's exact form: each subgoal's controller is the one-hot code onehot(k) "
            "fed to a hypernetwork decoder shaped like the metacontroller's (n_z 8, hidden 32, "
            "same rank), trained the same way. Default: one matrix pair per subgoal."
        ),
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default RUN/controllers).")
    ] = None,
    base_step: Annotated[
        int | None,
        typer.Option(
            help="Control the base model saved at this training step (one of RUN's "
            "checkpoints) instead of the final one; needs --out.",
            min=1,
            show_default=False,
        ),
    ] = None,
    eval_only: Annotated[
        bool, typer.Option(help="Reuse the controllers already trained in --out; only evaluate.")
    ] = False,
    seed: Annotated[int, _SEED] = 0,
    device: Annotated[Device, _DEVICE] = Device.cpu,
) -> None:
    """Supervised controllers by layer on the post-training task (paper C.3, Fig 4).

    Trains one linear controller per subgoal at each layer (gridworld: rank 16, ant: a full
    matrix, as in the paper) on clean data with the base model frozen (with --dagger-rounds,
    then also on the controlled base's own closed-loop states, labelled by the expert), then
    runs them on
    TASK (switching when a subgoal is done) next to the uncontrolled base model, in the
    run's own env (gridworld or ant). Writes weights, summary.json, result.json,
    controllers_success.html (success by layer) and controllers_reach.html (at which task
    colour episodes stop).

    Example: irl-lens controllers runs/q/base --layers 0,1,2,3,4 --task post
    """
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from analyses import controllability as ctl
    from irl_lens import runs
    from irl_lens.hooks import parse_layers
    from irl_lens.models.base import load_base_model
    from irl_lens.rollout.switchers import pair_subgoals
    from irl_lens.train import controllers as train_ctl

    dev = resolve_device(device)
    env_name = run_env(run)
    if env_name == "ant":  # validate before any work
        # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
        from irl_lens.envs.ant_layout import parse_ant_task

        parse_ant_task(task)
    else:
        pair_subgoals(task)
    if base_step is not None and out is None:
        raise ValueError("--base-step needs --out (RUN/controllers is for the final model)")
    checkpoint = None if base_step is None else runs.checkpoint_at(Path(run), base_step)
    base_cfg = load_base_model(run).cfg
    n_layers = base_cfg.n_layers
    rank_value = parse_rank(rank, env_name, base_cfg.d_model)
    layer_list = parse_layers(layers, n_layers)
    out = Path(out) if out is not None else Path(run) / "controllers"
    t0 = time.perf_counter()
    val_nll: dict[int, float] = {}
    base_nll = float("nan")
    if eval_only:
        config = train_ctl.controllers_config(out)  # the weights load once, to evaluate
        if layers.strip().lower() == "all":  # else a subset, e.g. what an interrupted run saved
            layer_list = [int(v) for v in config["layers"]]
        logger.info("reusing controllers in %s (layers %s)", out, layer_list)
        saved = config.get("base_checkpoint")
        if checkpoint is not None and saved != checkpoint.name:
            raise ValueError(
                f"--base-step {base_step}: the controllers in {out} were trained on "
                f"{saved or 'the final model'}"
            )
        if saved is not None:
            base_step = runs.checkpoint_step(saved)
        for rec in runs.read_metrics(out / "metrics.jsonl"):
            if "val/action_nll" in rec:
                val_nll[int(rec["layer"])] = rec["val/action_nll"]
                base_nll = rec["val/base_action_nll"]
    else:
        from irl_lens import presets  # lazy: `irl-lens --help` stays fast (presets import torch)

        cfg = presets.get(preset.value, env_name).controllers
        over = {"steps": steps} if steps is not None else {}
        over |= {"lr": lr} if lr is not None else {}
        for name, value in (("dagger_rounds", dagger_rounds), ("dagger_episodes",
                            dagger_episodes), ("dagger_steps", dagger_steps)):  # fmt: skip
            over |= {name: value} if value is not None else {}
        cfg = dataclasses.replace(
            cfg, **over, seed=seed, rank=rank_value, hypernetwork=hypernetwork
        )
        ds, data_path = clean_dataset(data, data_episodes, seed, env=env_name)
        trained = train_ctl.train_supervised_controllers(
            run, ds, out, layer_list, cfg, data_path=data_path, checkpoint=checkpoint,
            device=dev, progress=True,
        )  # fmt: skip
        val_nll = {r.layer: r.val_nll for r in trained}
        base_nll = trained[0].base_val_nll
    train_s = time.perf_counter() - t0
    result = ctl.controllability(
        out,
        task=task,
        n_episodes=episodes,
        layers=layer_list,
        seed=seed,
        device=dev,
        progress=True,
    )
    if all(layer in val_nll for layer in result.layers):
        result.val_nll = [val_nll[layer] for layer in result.layers]
        result.base_val_nll = base_nll
    summary = ctl.summary(result) | {
        "controllers/train_seconds": train_s,
        "controllers/seconds": time.perf_counter() - t0,
    }
    runs.write_json(out / "summary.json", summary)
    runs.write_json(out / "result.json", dataclasses.asdict(result))
    ctl.success_figure(result).write_html(out / "controllers_success.html")
    ctl.reach_figure(result).write_html(out / "controllers_reach.html")

    print(
        f"supervised controllers of {run}{'' if base_step is None else f' (step {base_step})'} "
        f"on task {result.task} "
        f"({result.n_episodes} episodes per layer)"
    )
    print("                 sampled actions     greedy actions")
    print("  layer          success  subgoals   success  subgoals   val NLL")
    rows = [("base", result.base_success, result.base_completed_subgoals,
             result.base_success_greedy, result.base_completed_subgoals_greedy,
             result.base_val_nll)]  # fmt: skip
    for i, layer in enumerate(result.layers):
        nll = result.val_nll[i] if result.val_nll else float("nan")
        rows.append(
            (str(layer), result.success[i], result.completed_subgoals[i],
             result.success_greedy[i], result.completed_subgoals_greedy[i], nll)
        )  # fmt: skip
    for name, ok, done, ok_g, done_g, nll in rows:
        print(f"  {name:<5}          {ok:7.3f}  {done:8.2f}   {ok_g:7.3f}  {done_g:8.2f}   "
              f"{_fmt(nll):>7}")  # fmt: skip
    print("  greedy episodes lost at each task colour (of those that reached it):")
    print("  layer  " + " ".join(f"{c:>5}" for c in result.task.split("-")))
    names = [*map(str, result.layers), "base"]  # the rows of both tables below
    for name, reach in zip(names, result.reach_greedy, strict=True):
        lost = ctl.lost_at_each_colour(reach)
        print(f"  {name:<5}  " + " ".join(f"{v:5.3f}" for v in lost))
    if result.end_reasons:  # ant: why the sampled episodes ended
        reasons = [
            k
            for k in result.end_reasons[-1]  # "running": cut off by max_steps
            if k != "running" or any(e.get(k, 0.0) for e in result.end_reasons)
        ]
        print("  how sampled episodes ended:")
        print("  layer  " + " ".join(f"{k:>12}" for k in reasons))
        for name, ends in zip(names, result.end_reasons, strict=True):
            print(f"  {name:<5}  " + " ".join(f"{ends.get(k, 0.0):12.3f}" for k in reasons))
    print(f"  best layer {result.best_layer}; wrote {out}")


def register(app: typer.Typer) -> None:
    """Add ``probe`` and ``controllers`` to the ``irl-lens`` app."""
    app.command(name="probe")(probe)
    app.command(name="controllers")(controllers)
