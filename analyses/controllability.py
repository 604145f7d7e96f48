"""Controllability by layer: supervised controllers on the post-training task (paper Fig 4).

The controllers of each layer (trained by :mod:`irl_lens.train.controllers`) steer the
frozen base model through a task it never saw whole, by default the post-training task
``0-1-2-3-4-5-6-7-0-1-2-3``: its subgoal transitions 0->1, 1->2, 2->3, 3->0 (as colour pairs:
0-1 -> 2-3 -> 4-5 -> 6-7 -> 0-1) never occur in a pretraining task. In the rollout engine
the controller of the task's current subgoal acts at layer ``l`` and is swapped for the
next one when the env reports the subgoal done
(:class:`~irl_lens.engine.GroundTruthSwitcher`). Success rate over ``n_episodes``
per layer is compared with the uncontrolled base model on the very same episodes (same
layouts, same action-sampling seed).

:func:`controllability` computes a :class:`ControllabilityResult` from a controllers
folder; :func:`success_figure` draws it; :func:`summary` flattens it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from irl_lens.engine import (
    EngineRollout,
    GroundTruthSwitcher,
    RolloutEngine,
    pair_subgoals,
    seeded_env,
)
from irl_lens.envs.pinpad import format_task, parse_task
from irl_lens.models.base import ActionModel
from irl_lens.models.controller import ControllerBank
from irl_lens.train.controllers import load_controllers

logger = logging.getLogger(__name__)


@dataclass
class ControllabilityResult:
    """Success on ``task`` by controller layer, next to the uncontrolled base model."""

    task: str
    n_layers: int
    layers: list[int]
    success: list[float]  # per layer
    completed_subgoals: list[float]  # mean subgoals completed per episode, per layer
    base_success: float
    base_completed_subgoals: float
    n_subgoals: int
    n_episodes: int
    greedy: bool
    val_nll: list[float] = field(default_factory=list)  # per layer, clean held-out data
    base_val_nll: float = float("nan")

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
) -> tuple[np.ndarray, np.ndarray]:
    """``(success bool[n], subgoals completed int[n])`` over ``n_episodes`` fixed episodes."""
    engine = RolloutEngine(model, layer)
    generator = torch.Generator().manual_seed(seed)
    success, done = [], []
    for chunk, start in enumerate(range(0, n_episodes, n_envs)):
        n = min(n_envs, n_episodes - start)
        env = seeded_env(n, task=task, seed=seed, stream=1000 + chunk)
        fn = GroundTruthSwitcher(bank.select) if bank is not None else None
        ro: EngineRollout = engine.run(env, controller_fn=fn, greedy=greedy, generator=generator)
        success.append(ro.success)
        done.append(ro.final_n_done // 2)
    return np.concatenate(success), np.concatenate(done)


def controllability(
    path: str | Path,
    *,
    task="post",
    n_episodes: int = 1000,
    layers: list[int] | None = None,
    seed: int = 0,
    greedy: bool = False,
    n_envs: int = 1000,
    device: str = "cpu",
    progress: bool = False,
) -> ControllabilityResult:
    """Evaluate a controllers folder on ``task``: success by layer and the base model's."""
    colours = parse_task(task)
    n_subgoals = len(pair_subgoals(colours))
    if n_episodes < 1:
        raise ValueError(f"episodes={n_episodes} must be >= 1")
    model, banks, _ = load_controllers(path, device=device)
    wanted = sorted(banks) if layers is None else layers
    missing = [layer for layer in wanted if layer not in banks]
    if missing:
        raise ValueError(
            f"layers {missing} have no trained controllers in {path} (it has {sorted(banks)})"
        )
    base_ok, base_done = _episodes(
        model, model.cfg.n_layers, None, colours, n_episodes, seed, greedy, n_envs
    )
    success, completed = [], []
    for layer in tqdm(wanted, desc="evaluate layers", disable=not progress):
        ok, done = _episodes(model, layer, banks[layer], colours, n_episodes, seed, greedy, n_envs)
        success.append(float(ok.mean()))
        completed.append(float(done.mean()))
        logger.info(
            "layer %d: success %.3f, subgoals %.2f / %d", layer, ok.mean(), done.mean(), n_subgoals
        )
    return ControllabilityResult(
        task=format_task(colours),
        n_layers=model.cfg.n_layers,
        layers=list(wanted),
        success=success,
        completed_subgoals=completed,
        base_success=float(base_ok.mean()),
        base_completed_subgoals=float(base_done.mean()),
        n_subgoals=n_subgoals,
        n_episodes=n_episodes,
        greedy=greedy,
    )


def summary(result: ControllabilityResult) -> dict[str, float]:
    """Flat numbers for ``summary.json`` (``controllers/`` keys)."""
    out = {
        "controllers/base_success": result.base_success,
        "controllers/base_completed_subgoals": result.base_completed_subgoals,
        "controllers/best_layer": float(result.best_layer),
        "controllers/best_success": max(result.success),
        "controllers/n_episodes": float(result.n_episodes),
        "controllers/n_subgoals": float(result.n_subgoals),
    }
    for i, layer in enumerate(result.layers):
        out[f"controllers/success_layer_{layer}"] = result.success[i]
        out[f"controllers/completed_subgoals_layer_{layer}"] = result.completed_subgoals[i]
        if i < len(result.val_nll):
            out[f"controllers/val_nll_layer_{layer}"] = result.val_nll[i]
    if result.val_nll:
        out["controllers/base_val_nll"] = result.base_val_nll
    return out


def success_figure(result: ControllabilityResult):
    """Success on the task by controller layer, with the uncontrolled base model (Fig 4)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("success rate", f"subgoals completed (of {result.n_subgoals})"),
    )
    fig.add_trace(
        go.Bar(x=result.layers, y=result.success, name="controlled", marker_color="#1f77b4"),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            x=result.layers,
            y=result.completed_subgoals,
            name="controlled",
            marker_color="#1f77b4",
            showlegend=False,
        ),
        row=1,
        col=2,
    )
    for col, value in ((1, result.base_success), (2, result.base_completed_subgoals)):
        fig.add_hline(
            y=value,
            line_dash="dash",
            line_color="#d62728",
            row=1,
            col=col,
            annotation_text="base model" if col == 1 else None,
        )
    fig.update_xaxes(title_text="controller layer l", dtick=1)
    fig.update_yaxes(range=[0, 1], row=1, col=1)
    fig.update_yaxes(range=[0, result.n_subgoals], row=1, col=2)
    mode = "greedy" if result.greedy else "sampled"
    fig.update_layout(
        title=f"Supervised controllers on task {result.task} "
        f"({result.n_episodes} episodes per layer, {mode} actions)"
    )
    return fig
