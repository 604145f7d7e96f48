"""Controllability by layer: supervised controllers on the post-training task (paper Fig 4).

Works on both environments: on the gridworld a subgoal is a colour pair and the post task
is ``0-1-2-3-4-5-6-7-0-1-2-3``; on ant-pinpad (a base model reading vector observations)
every colour is a subgoal, the post task is ``0-1-2-3`` (0 -> 1 never occurs in a
pretraining task) and episodes run in :class:`~irl_lens.rollout.ant.AntRolloutEngine`
with :class:`~irl_lens.rollout.ant.ColourSwitcher`.

The controllers of each layer (trained by :mod:`irl_lens.train.controllers`) steer the
frozen base model through a task it never saw whole, by default the post-training task
``0-1-2-3-4-5-6-7-0-1-2-3``: its subgoal transitions 0->1, 1->2, 2->3, 3->0 (as colour pairs:
0-1 -> 2-3 -> 4-5 -> 6-7 -> 0-1) never occur in a pretraining task. In the rollout engine
the controller of the task's current subgoal acts at layer ``l`` and is swapped for the
next one when the env reports the subgoal done
(:class:`~irl_lens.rollout.switchers.GroundTruthSwitcher`). Success rate over ``n_episodes``
per layer is compared with the uncontrolled base model on the very same episodes (same
layouts, same action-sampling seed).

:func:`controllability` computes a :class:`ControllabilityResult` from a controllers
folder; :func:`success_figure` draws it, :func:`reach_figure` shows at which task colour
the episodes stop (failures piling up at the unseen subgoal transitions, or spread evenly
over the colours); :func:`summary` flattens it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from tqdm.auto import tqdm

from irl_lens.envs.pinpad import format_task
from irl_lens.models.base import ActionModel
from irl_lens.models.controller import ControllerBank
from irl_lens.rollout.kit import env_kit, run_batches
from irl_lens.rollout.switchers import pair_subgoals
from irl_lens.train.controllers import load_controllers

logger = logging.getLogger(__name__)


@dataclass
class ControllabilityResult:
    """Success on ``task`` by controller layer, next to the uncontrolled base model.

    Every number exists twice: with sampled actions (the policy as it is) and with greedy
    (argmax) actions. Both run on the same ``n_episodes`` layouts.
    """

    task: str
    n_layers: int
    layers: list[int]
    success: list[float]  # per layer, sampled actions
    completed_subgoals: list[float]  # mean subgoals completed per episode, per layer, sampled
    success_greedy: list[float]
    completed_subgoals_greedy: list[float]
    base_success: float
    base_completed_subgoals: float
    base_success_greedy: float
    base_completed_subgoals_greedy: float
    n_subgoals: int
    n_episodes: int
    colours_per_subgoal: int = 2  # gridworld: colour pairs; ant: 1
    val_nll: list[float] = field(default_factory=list)  # per layer, clean held-out data
    # reach[i][k]: fraction of episodes that completed at least k + 1 task colours, per
    # layer i (then the base model last), greedy actions
    reach_greedy: list[list[float]] = field(default_factory=list)
    base_val_nll: float = float("nan")
    # end_reasons[i][reason]: fraction of episodes that ended that way (ant's END_REASONS:
    # success, wrong_colour, wall, ...), per layer i (then the base model last), sampled
    # actions; empty on the gridworld, whose rollouts do not record why an episode ended
    end_reasons: list[dict[str, float]] = field(default_factory=list)

    @property
    def best_layer(self) -> int:
        return self.layers[int(np.argmax(self.success))]


def _episodes(
    model: ActionModel,
    layer: int,
    bank: ControllerBank | None,
    task,
    n_episodes: int,
    seed: int,
    greedy: bool,
    n_envs: int,
) -> tuple[float, float, list[float], dict[str, float]]:
    """``(success rate, mean subgoals completed, reach, end reasons)`` over ``n_episodes``
    fixed episodes, where ``reach[k]`` is the fraction that completed at least ``k + 1``
    colours and ``end reasons`` the fraction that ended each way (``{}`` where the rollouts
    do not record it)."""
    kit = env_kit(model, layer)
    kit = dataclasses.replace(kit, batch=min(n_envs, kit.batch))
    make_fn = (lambda: kit.switcher(bank.select)) if bank is not None else None
    batches = run_batches(kit, n_episodes, task=task, seed=seed, stream=1000, make_fn=make_fn,
                          greedy=greedy, generator=torch.Generator().manual_seed(seed))  # fmt: skip
    success = np.concatenate([ro.success for ro, _ in batches])
    n_colours = np.concatenate([ro.final_n_done for ro, _ in batches])
    reach = [float((n_colours >= k).mean()) for k in range(1, len(task) + 1)]
    ends: dict[str, float] = {}
    if hasattr(batches[0][0], "end_reason"):  # ant rollouts record why each episode ended
        from irl_lens.rollout.ant import end_reason_shares  # lazy: MuJoCo only for ant

        ends = end_reason_shares(np.concatenate([ro.end_reason for ro, _ in batches]),
                                 np.concatenate([ro.length for ro, _ in batches]))  # fmt: skip
    return (
        float(success.mean()),
        float((n_colours // kit.colours_per_subgoal).mean()),
        reach,
        ends,
    )


def controllability(
    path: str | Path,
    *,
    task="post",
    n_episodes: int = 1000,
    layers: list[int] | None = None,
    seed: int = 0,
    n_envs: int = 1000,
    device: str = "cpu",
    progress: bool = False,
) -> ControllabilityResult:
    """Evaluate a controllers folder on ``task``: success by layer and the base model's.

    ``task="post"`` is the environment's post-training task (see the module docstring)."""
    if n_episodes < 1:
        raise ValueError(f"episodes={n_episodes} must be >= 1")
    model, banks, _ = load_controllers(path, device=device, wanted_layers=layers)
    kit = env_kit(model)
    colours = kit.parse_task(task)
    per_subgoal = kit.colours_per_subgoal
    if per_subgoal == 2:
        pair_subgoals(colours)  # the gridworld's controllers are per colour pair
    n_subgoals = len(colours) // per_subgoal
    wanted = sorted(banks)

    def evaluate(layer: int, bank: ControllerBank | None) -> dict[bool, tuple]:
        return {
            greedy: _episodes(model, layer, bank, colours, n_episodes, seed, greedy, n_envs)
            for greedy in (False, True)
        }

    base = evaluate(model.cfg.n_layers, None)
    per_layer = []
    for layer in tqdm(wanted, desc="evaluate layers", disable=not progress):
        per_layer.append(evaluate(layer, banks[layer]))
        (ok, done, *_), (ok_g, done_g, *_) = per_layer[-1][False], per_layer[-1][True]
        logger.info(
            "layer %d: success %.3f (greedy %.3f), subgoals %.2f (greedy %.2f) of %d",
            layer, ok, ok_g, done, done_g, n_subgoals,
        )  # fmt: skip
    return ControllabilityResult(
        task=format_task(colours),
        n_layers=model.cfg.n_layers,
        layers=list(wanted),
        success=[r[False][0] for r in per_layer],
        completed_subgoals=[r[False][1] for r in per_layer],
        success_greedy=[r[True][0] for r in per_layer],
        completed_subgoals_greedy=[r[True][1] for r in per_layer],
        base_success=base[False][0],
        base_completed_subgoals=base[False][1],
        base_success_greedy=base[True][0],
        base_completed_subgoals_greedy=base[True][1],
        n_subgoals=n_subgoals,
        n_episodes=n_episodes,
        colours_per_subgoal=per_subgoal,
        reach_greedy=[r[True][2] for r in per_layer] + [base[True][2]],
        end_reasons=([r[False][3] for r in per_layer] + [base[False][3]]
                     if base[False][3] else []),
    )  # fmt: skip


def summary(result: ControllabilityResult) -> dict[str, float]:
    """Flat numbers for ``summary.json`` (``controllers/`` keys)."""
    out = {
        "controllers/base_success": result.base_success,
        "controllers/base_success_greedy": result.base_success_greedy,
        "controllers/base_completed_subgoals": result.base_completed_subgoals,
        "controllers/base_completed_subgoals_greedy": result.base_completed_subgoals_greedy,
        "controllers/best_layer": float(result.best_layer),
        "controllers/best_success": max(result.success),
        "controllers/best_success_greedy": max(result.success_greedy),
        "controllers/n_episodes": float(result.n_episodes),
        "controllers/n_subgoals": float(result.n_subgoals),
    }
    for i, layer in enumerate(result.layers):
        out[f"controllers/success_layer_{layer}"] = result.success[i]
        out[f"controllers/success_greedy_layer_{layer}"] = result.success_greedy[i]
        out[f"controllers/completed_subgoals_layer_{layer}"] = result.completed_subgoals[i]
        out[f"controllers/completed_subgoals_greedy_layer_{layer}"] = (
            result.completed_subgoals_greedy[i]
        )
        if i < len(result.val_nll):
            out[f"controllers/val_nll_layer_{layer}"] = result.val_nll[i]
        for name, share in (result.end_reasons[i] if result.end_reasons else {}).items():
            out[f"controllers/end/{name}_layer_{layer}"] = share
    for name, share in (result.end_reasons[-1] if result.end_reasons else {}).items():
        out[f"controllers/base_end/{name}"] = share
    if result.val_nll:
        out["controllers/base_val_nll"] = result.base_val_nll
    return out


def success_figure(result: ControllabilityResult):
    """Success on the task by controller layer, with the uncontrolled base model (Fig 4)."""

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("success rate", f"subgoals completed (of {result.n_subgoals})"),
    )
    modes = (
        ("sampled", "#1f77b4", result.success, result.completed_subgoals,
         result.base_success, result.base_completed_subgoals),
        ("greedy", "#ff7f0e", result.success_greedy, result.completed_subgoals_greedy,
         result.base_success_greedy, result.base_completed_subgoals_greedy),
    )  # fmt: skip
    for name, colour, success, done, base_success, base_done in modes:
        for col, values, base in ((1, success, base_success), (2, done, base_done)):
            fig.add_trace(
                go.Bar(x=result.layers, y=values, name=f"controlled, {name} actions",
                       marker_color=colour, legendgroup=name, showlegend=col == 1),
                row=1, col=col,
            )  # fmt: skip
            fig.add_trace(
                go.Scatter(x=result.layers, y=[base] * len(result.layers), mode="lines",
                           line={"dash": "dash", "color": colour}, legendgroup=name,
                           name=f"base model, {name} actions", showlegend=col == 1),
                row=1, col=col,
            )  # fmt: skip
    fig.update_xaxes(title_text="controller layer l", dtick=1)
    fig.update_yaxes(range=[0, 1], row=1, col=1)
    fig.update_yaxes(range=[0, result.n_subgoals], row=1, col=2)
    fig.update_layout(
        barmode="group",
        title=f"Supervised controllers on task {result.task} ({result.n_episodes} episodes "
        "per layer and mode)",
    )
    return fig


def lost_at_each_colour(reach: list[float]) -> list[float]:
    """From a reach curve (fraction completing >= k colours, k = 1..n), the fraction of
    the episodes that reached colour k's turn and ended there (nan where none reached it)."""
    before = [1.0, *reach[:-1]]
    return [1.0 - r / b if b > 0 else float("nan") for r, b in zip(reach, before, strict=True)]


def reach_figure(result: ControllabilityResult):
    """Greedy episodes that completed at least k task colours, by k, one line per layer and
    the base model. Where a line drops shows where the controllers lose the agent: at the
    task's subgoal transitions (gridworld: after every second colour) or evenly along the
    way."""

    if not result.reach_greedy:
        raise ValueError("this result has no reach curves (it predates them); re-run evaluation")
    task = result.task.split("-")
    x = list(range(1, len(task) + 1))
    fig = go.Figure()
    names = [f"layer {layer}" for layer in result.layers] + ["base model"]
    for name, reach in zip(names, result.reach_greedy, strict=True):
        dash = "dash" if name == "base model" else None
        fig.add_trace(go.Scatter(x=x, y=reach, mode="lines+markers", name=name,
                                 line={"dash": dash}))  # fmt: skip
    step = result.colours_per_subgoal  # a subgoal ends after every pair (grid) or colour (ant)
    for k in range(step, len(task), step):
        fig.add_vline(x=k + 0.5, line={"color": "#bbb", "width": 1, "dash": "dot"})
    fig.update_xaxes(title_text="task colours completed (at least)", tickvals=x,
                     ticktext=[f"{k}: {c}" for k, c in zip(x, task, strict=True)])  # fmt: skip
    fig.update_yaxes(title_text="fraction of episodes", range=[0, 1.02])
    fig.update_layout(
        title=f"Where episodes stop on task {result.task} (greedy actions; dotted lines: "
        "subgoal transitions)"
    )
    return fig
