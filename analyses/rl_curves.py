"""Success-vs-episodes curves of RL runs, grouped by method, with seed bands (paper Fig 8, A5).

Each RL folder (from ``irl-lens internal-rl`` or ``irl-lens raw-rl``) logs one record per
batch with the cumulative ``episodes`` and the batch's ``success`` rate. Runs are grouped
by their label (``internal_rl``, ``internal_rl_beta1``, ``internal_rl (cotrain)``,
``raw_rl``); for each group the curves are put on a common episode grid and summarised by
the median and the 25-75% band over seeds.

:func:`compare_runs` returns a :class:`Comparison`; :func:`curves_figure` draws it with a
linear or a log x-axis; :func:`table` gives final success and episodes-to-0.5 per group.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from irl_lens import runs


@dataclass
class RunCurve:
    path: str
    label: str
    seed: int
    episodes: list[int]
    success: list[float]
    rollout_episodes_per_s: float
    task: str = "?"
    """The task the run's env enforced, as colours (``config.json``)."""


@dataclass
class GroupCurve:
    label: str
    n_runs: int
    episodes: list[float]
    median: list[float]
    q25: list[float]
    q75: list[float]
    final_success: list[float]
    """Per run: mean success over the last 10% of batches."""
    episodes_to_half: list[float]
    """Per run: first episode count with batch success >= 0.5 (nan if never)."""


@dataclass
class Comparison:
    runs: list[RunCurve]
    groups: list[GroupCurve] = field(default_factory=list)


def run_label(config: dict) -> str:
    method = config.get("method", "?")
    if method.startswith("internal_rl") and config.get("variant") in ("cotrain", "compile"):
        return f"internal_rl ({config['variant']})"
    return method


def load_curve(path: str | Path) -> RunCurve:
    path = Path(path)
    config = runs.read_json(path / "config.json", "RL config")
    if config.get("kind") != "internal_rl":
        raise runs.RunError(f"{path} is not an RL run folder (kind={config.get('kind')!r})")
    recs = [r for r in runs.read_metrics(path / "metrics.jsonl") if "success" in r]
    if not recs:
        raise runs.RunError(f"{path}/metrics.jsonl has no batches yet")
    return RunCurve(
        path=str(path),
        label=run_label(config),
        seed=int(config["train"]["seed"]),
        episodes=[int(r["episodes"]) for r in recs],
        success=[float(r["success"]) for r in recs],
        rollout_episodes_per_s=float(np.mean([r["rollout_episodes_per_s"] for r in recs])),
        task=str(config.get("task", config.get("train", {}).get("task", "?"))),
    )


def _group(label: str, curves: list[RunCurve]) -> GroupCurve:
    grid = np.unique(np.concatenate([c.episodes for c in curves]))
    values = np.stack([
        np.interp(grid, c.episodes, c.success, left=np.nan, right=np.nan) for c in curves
    ])  # fmt: skip
    with np.errstate(all="ignore"), _quiet():
        med = np.nanmedian(values, axis=0)
        q25 = np.nanpercentile(values, 25, axis=0)
        q75 = np.nanpercentile(values, 75, axis=0)
    finals, to_half = [], []
    for c in curves:
        s = np.asarray(c.success)
        finals.append(float(s[-max(1, len(s) // 10) :].mean()))
        hit = np.flatnonzero(s >= 0.5)
        to_half.append(float(c.episodes[hit[0]]) if len(hit) else float("nan"))
    return GroupCurve(label, len(curves), grid.astype(float).tolist(), med.tolist(),
                      q25.tolist(), q75.tolist(), finals, to_half)  # fmt: skip


class _quiet:
    def __enter__(self):

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def compare_runs(paths: list[str | Path]) -> Comparison:
    """Load RL folders and group them by method."""
    if not paths:
        raise ValueError("give at least one RL run folder")
    curves = [load_curve(p) for p in paths]
    tasks = sorted({c.task for c in curves})
    if len(tasks) > 1:  # a success rate means nothing next to one on another task
        by_task = "; ".join(
            f"{t}: {', '.join(c.path for c in curves if c.task == t)}" for t in tasks
        )
        raise ValueError(f"compare: the runs were trained on different tasks ({by_task}); "
                         "compare one task at a time")  # fmt: skip
    labels = sorted({c.label for c in curves})
    return Comparison(curves, [_group(lb, [c for c in curves if c.label == lb]) for lb in labels])


def table(comp: Comparison) -> list[dict]:
    """Per group: runs, median final success, median episodes-to-0.5 and how many reached it."""
    rows = []
    for g in comp.groups:
        reached = [e for e in g.episodes_to_half if e == e]
        rows.append({
            "method": g.label,
            "runs": g.n_runs,
            "final_success_median": float(np.median(g.final_success)),
            "final_success_min": float(np.min(g.final_success)),
            "final_success_max": float(np.max(g.final_success)),
            "episodes_to_0.5_median": float(np.median(reached)) if reached else float("nan"),
            "reached_0.5": len(reached),
        })  # fmt: skip
    return rows


def curves_figure(comp: Comparison, log_x: bool = False):
    """Median success vs episodes per method with the 25-75% band over seeds."""

    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
    fig = go.Figure()
    for i, g in enumerate(comp.groups):
        colour = palette[i % len(palette)]
        x = g.episodes
        if g.n_runs > 1:
            fig.add_trace(go.Scatter(x=x + x[::-1], y=g.q75 + g.q25[::-1], fill="toself",
                                     fillcolor=colour, opacity=0.2, line={"width": 0},
                                     hoverinfo="skip", showlegend=False))  # fmt: skip
        fig.add_trace(go.Scatter(x=x, y=g.median, mode="lines", line={"color": colour},
                                 name=f"{g.label} (median of {g.n_runs})"))  # fmt: skip
    fig.update_layout(
        title="Success on the task vs episodes" + (" (log x)" if log_x else ""),
        xaxis={"title": "episodes", "type": "log" if log_x else "linear"},
        yaxis={"title": "success rate (batch)", "range": [0, 1]},
    )
    return fig


def to_json(comp: Comparison) -> str:

    return json.dumps(asdict(comp))
