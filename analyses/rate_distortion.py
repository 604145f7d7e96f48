"""Rate-distortion of metacontrollers over the KL weight alpha (paper Fig 7, C.6).

Every metacontroller folder of a sweep (``irl-lens sweep rate-distortion``) gives one point:
rate = validation KL per step, distortion = validation action NLL per step, plus its
switch F1 (tolerance 1) and switches per episode. Frozen-base (``full``) and co-trained
runs are drawn in different colours; runs with F1 >= 0.9 are starred. The paper's finding:
with a frozen base the curve has a gap where subgoal-aligned switching appears; co-trained
runs show no such structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from irl_lens import runs

STAR_F1 = 0.9


@dataclass
class RDPoint:
    path: str
    variant: str
    alpha: float
    seed: int
    rate: float
    distortion: float
    f1: float
    switches_per_episode: float


def load_points(folders: list[str | Path]) -> list[RDPoint]:
    """One point per finished metacontroller folder (unfinished ones are left out)."""
    points = []
    for folder in folders:
        folder = Path(folder)
        if not (folder / "summary.json").is_file():
            continue
        s = runs.read_json(folder / "summary.json", "metacontroller summary")
        c = runs.read_json(folder / "config.json", "metacontroller config")
        points.append(RDPoint(
            path=str(folder),
            variant=c["train"]["variant"],
            alpha=float(c["train"]["alpha"]),
            seed=int(c["train"]["seed"]),
            rate=float(s.get("discover/kl", float("nan"))),
            distortion=float(s.get("discover/action_nll", float("nan"))),
            f1=float(s.get("switching/f1_tol1", float("nan"))),
            switches_per_episode=float(s.get("switching/switches_per_episode", float("nan"))),
        ))  # fmt: skip
    return points


def rd_figure(points: list[RDPoint]):
    """Rate (KL) vs distortion (action NLL), coloured by variant, stars where F1 >= 0.9."""
    import plotly.graph_objects as go

    colours = {"full": "#1f77b4", "cotrain": "#d62728", "beta1": "#2ca02c"}
    fig = go.Figure()
    for variant in sorted({p.variant for p in points}):
        ps = sorted((p for p in points if p.variant == variant), key=lambda p: p.rate)
        fig.add_trace(go.Scatter(
            x=[p.rate for p in ps], y=[p.distortion for p in ps], mode="markers",
            marker={"color": colours.get(variant, "#777"), "size": [14 if p.f1 >= STAR_F1 else 8
                                                                   for p in ps],
                    "symbol": ["star" if p.f1 >= STAR_F1 else "circle" for p in ps]},
            text=[f"alpha {p.alpha:g}, seed {p.seed}, F1 {p.f1:.2f}, "
                  f"{p.switches_per_episode:.1f} switches/ep" for p in ps],
            name="frozen base" if variant == "full" else variant,
        ))  # fmt: skip
    fig.update_layout(
        title=f"Rate-distortion over alpha (stars: switch F1 >= {STAR_F1} at tolerance 1)",
        xaxis_title="rate: KL per step (nats)",
        yaxis_title="distortion: action NLL per step (nats)",
    )
    return fig
