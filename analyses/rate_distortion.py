"""Rate-distortion of metacontrollers over the KL weight alpha (paper Fig 7, C.6).

Every metacontroller folder of a sweep (``irl-lens sweep rate-distortion``) gives one point:
rate = validation KL per step, distortion = validation action NLL per step, plus its
switch F1 (tolerance 1) and switches per episode. Frozen-base (``full``) and co-trained
runs are drawn in different colours; runs with F1 >= 0.9 are starred. The paper's finding:
with a frozen base the curve has a gap where subgoal-aligned switching appears; co-trained
runs show no such structure. CompILE folders (``irl-lens sweep compile-kl``, issue 31) give
points the same way, their KL weight ``beta_z`` in the ``alpha`` column and their rate the
latents' held-out KL, so the baseline's curve reads like the metacontroller's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

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


def sweep_points(sweep: str | Path) -> list[RDPoint]:
    """The finished runs of a sweep folder (one subfolder per run, as the sweep lays them out)."""
    return load_points(sorted(p.parent for p in Path(sweep).glob("*/config.json")))


def label(variant: str) -> str:
    """A variant's name in tables and legends."""
    return {"full": "frozen base", "compile": "CompILE"}.get(variant, variant)


def load_points(folders: list[str | Path]) -> list[RDPoint]:
    """One point per finished metacontroller folder (unfinished ones are left out)."""
    points = []
    for folder in folders:
        folder = Path(folder)
        if not (folder / "summary.json").is_file():
            continue
        s = runs.read_json(folder / "summary.json", "metacontroller summary")
        c = runs.read_json(folder / "config.json", "metacontroller config")
        # a CompILE folder (``irl-lens sweep compile-kl``): its KL weight is beta_z and its
        # rate the latents' held-out KL (analyses.segmentation.held_out_losses)
        is_compile = c.get("kind") == "compile"
        points.append(RDPoint(
            path=str(folder),
            variant="compile" if is_compile else c["train"]["variant"],
            alpha=float(c["train"]["beta_z" if is_compile else "alpha"]),
            seed=int(c["train"]["seed"]),
            rate=runs.number(s, "compile/kl_z" if is_compile else "discover/kl"),
            distortion=runs.number(
                s, "compile/action_nll" if is_compile else "discover/action_nll"
            ),
            f1=runs.number(s, "switching/f1_tol1"),
            switches_per_episode=runs.number(s, "switching/switches_per_episode"),
        ))  # fmt: skip
    return points


@dataclass
class RDRow:
    """The seeds of one (variant, alpha): medians and spread of rate and distortion."""

    variant: str
    alpha: float
    n_seeds: int
    rate: float
    rate_min: float
    rate_max: float
    distortion: float
    distortion_min: float
    distortion_max: float
    aligned: float
    """Share of the seeds whose switch F1 (tolerance 1) is >= STAR_F1."""
    switches_per_episode: float


def rd_table(points: list[RDPoint]) -> list[RDRow]:
    """One row per (variant, alpha), ordered by variant then alpha; medians over seeds."""
    groups: dict[tuple[str, float], list[RDPoint]] = {}
    for p in points:
        groups.setdefault((p.variant, p.alpha), []).append(p)
    rows = []
    for (variant, alpha), ps in sorted(groups.items()):
        rate = np.array([p.rate for p in ps])
        dist = np.array([p.distortion for p in ps])
        rows.append(RDRow(
            variant=variant, alpha=alpha, n_seeds=len(ps),
            rate=float(np.median(rate)), rate_min=float(rate.min()), rate_max=float(rate.max()),
            distortion=float(np.median(dist)), distortion_min=float(dist.min()),
            distortion_max=float(dist.max()),
            aligned=float(np.mean([p.f1 >= STAR_F1 for p in ps])),
            switches_per_episode=float(np.median([p.switches_per_episode for p in ps])),
        ))  # fmt: skip
    return rows


def table_summary(rows: list[RDRow]) -> dict[str, float]:
    """Flat ``summary.json`` keys: ``rd/VARIANT/aALPHA/rate`` and so on."""
    out = {}
    for r in rows:
        key = f"rd/{r.variant}/a{r.alpha:g}"
        out |= {f"{key}/n_seeds": float(r.n_seeds), f"{key}/rate": r.rate,
                f"{key}/distortion": r.distortion, f"{key}/aligned": r.aligned,
                f"{key}/switches_per_episode": r.switches_per_episode}  # fmt: skip
    return out


def _cells(r: RDRow) -> tuple[str, str]:
    """Rate and distortion as "median [min, max]"."""
    return (f"{r.rate:.3f} [{r.rate_min:.3f}, {r.rate_max:.3f}]",
            f"{r.distortion:.4f} [{r.distortion_min:.4f}, {r.distortion_max:.4f}]")  # fmt: skip


def format_table(rows: list[RDRow]) -> str:
    """The table ``irl-lens sweep rate-distortion`` prints: medians over seeds, [min, max]."""
    lines = [f"{'variant':<8} {'alpha':>6} {'seeds':>5} {'rate (KL/step)':>24} "
             f"{'distortion (NLL/step)':>26} {f'F1>={STAR_F1:g}':>7} {'switches':>8}"]  # fmt: skip
    for r in rows:
        rate, dist = _cells(r)
        lines.append(f"{r.variant:<8} {r.alpha:>6g} {r.n_seeds:>5} {rate:>24} {dist:>26} "
                     f"{r.aligned:>7.2f} {r.switches_per_episode:>8.2f}")  # fmt: skip
    return "\n".join(lines)


def markdown_table(rows: list[RDRow]) -> list[str]:
    """The per-alpha table as markdown lines (for a reproduction's report)."""
    lines = [
        f"| variant | alpha | seeds | rate (KL/step) | distortion (NLL/step) | F1 >= {STAR_F1} "
        "| switches/episode |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        rate, dist = _cells(r)
        lines.append(f"| {label(r.variant)} | {r.alpha:g} | {r.n_seeds} | {rate} | {dist} "
                     f"| {r.aligned:.2f} | {r.switches_per_episode:.2f} |")  # fmt: skip
    return lines


def rd_figure(points: list[RDPoint], rate_floor: float = 1e-3):
    """Rate (KL) vs distortion (action NLL) on a log rate axis, coloured by variant.

    Each seed is a marker (a star where its switch F1 >= STAR_F1); a line joins each
    variant's per-alpha medians in alpha order. Rates below ``rate_floor`` (a collapsed
    code, KL ~ 0) are drawn at the floor, which the axis title says.
    """

    colours = {"full": "#1f77b4", "cotrain": "#d62728", "beta1": "#2ca02c", "compile": "#ff7f0e"}
    fig = go.Figure()
    for variant in sorted({p.variant for p in points}):
        ps = [p for p in points if p.variant == variant]
        colour = colours.get(variant, "#777")
        name = label(variant)
        rows = [r for r in rd_table(ps) if np.isfinite(r.rate) and np.isfinite(r.distortion)]
        fig.add_trace(go.Scatter(
            x=[max(r.rate, rate_floor) for r in rows], y=[r.distortion for r in rows],
            mode="lines+text", line={"color": colour, "width": 1.5},
            text=[f"{r.alpha:g}" for r in rows], textposition="top right",
            name=f"{name}: median over seeds (labels: alpha)",
        ))  # fmt: skip
        fig.add_trace(go.Scatter(
            x=[max(p.rate, rate_floor) for p in ps], y=[p.distortion for p in ps],
            mode="markers", name=f"{name}: one seed",
            marker={"color": colour, "size": [14 if p.f1 >= STAR_F1 else 8 for p in ps],
                    "symbol": ["star" if p.f1 >= STAR_F1 else "circle" for p in ps],
                    "opacity": 0.8},
            text=[f"alpha {p.alpha:g}, seed {p.seed}, rate {p.rate:.4f}, F1 {p.f1:.2f}, "
                  f"{p.switches_per_episode:.1f} switches/ep" for p in ps],
            hoverinfo="text",
        ))  # fmt: skip
    fig.update_layout(
        title=f"Rate-distortion over alpha (stars: switch F1 >= {STAR_F1} at tolerance 1)",
        xaxis={"title": f"rate: KL per step (nats, log; below {rate_floor:g} drawn at it)",
               "type": "log"},
        yaxis_title="distortion: action NLL per step (nats)",
    )  # fmt: skip
    return fig
