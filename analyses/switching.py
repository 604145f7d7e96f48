"""Switch alignment: does beta switch where the true subgoal changes? (paper Fig 6, A3)

On held-out clean episodes the metacontroller runs with its posterior mean (no latent
noise). ``beta_t`` is binarised at 0.5; its switch times ``t >= 1`` are matched one-to-one
with the true subgoal boundaries (``t >= 1`` where the label changes) within a tolerance
of 0, 1 or 2 steps by a maximum matching (:func:`match_count`), giving precision, recall
and F1. Position 0
is left out of both sides: every episode starts a segment there and ``z_{-1} = 0`` makes
the first switch trivial.

:func:`switch_alignment` returns a :class:`SwitchResult`; :func:`beta_figure` draws
``beta_t`` on coloured bands of the true subgoal for chosen episodes; :func:`summary`
flattens the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from irl_lens.data.dataset import TrajectoryDataset, make_batch
from irl_lens.models.metacontroller import load_metacontroller, posterior

TOLERANCES = (0, 1, 2)
SUBGOAL_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


@dataclass
class SwitchResult:
    """Alignment of binarised beta with the true subgoal boundaries on held-out episodes."""

    n_episodes: int
    threshold: float
    tolerances: list[int]
    precision: list[float]
    recall: list[float]
    f1: list[float]
    binary_fraction: float
    """Fraction of beta values within 0.05 of 0 or 1."""
    switches_per_episode: float
    """Predicted switches per episode (``t >= 1``)."""
    true_switches_per_episode: float
    """True subgoal boundaries per episode (``t >= 1``)."""
    mean_beta: float
    examples: list[dict] = field(default_factory=list)
    """A few episodes: ``{"beta": [...], "subgoal": [...]}`` for the figure."""


def switch_times(beta: np.ndarray, length: int, threshold: float) -> np.ndarray:
    """Positions ``1 <= t < length`` with ``beta_t >= threshold``."""
    return np.flatnonzero(beta[1:length] >= threshold) + 1


def boundary_times(subgoal: np.ndarray, length: int) -> np.ndarray:
    """Positions ``1 <= t < length`` where the true subgoal label changes."""
    return np.flatnonzero(subgoal[1:length] != subgoal[: length - 1]) + 1


def match_count(pred: np.ndarray, true: np.ndarray, tol: int) -> int:
    """Size of a maximum one-to-one matching of ``pred`` to ``true`` times ``<= tol`` apart.

    A two-pointer sweep over both sorted lists, O(n log n). Matching the nearest pair first
    is *not* optimal (true [2, 3], predicted [1, 2], tol 1: nearest-first pairs 2-2 and
    leaves 1 and 3 unmatched, 1 hit instead of 2). The sweep is: the smallest unmatched
    prediction ``p`` takes the smallest unmatched true time in ``[p - tol, p + tol]``; a true
    time below ``p - tol`` is out of reach of every later (larger) prediction and is dropped,
    and a prediction with no true time in reach is dropped. Optimal by exchange: all windows
    have the same width, so the true time ``p`` takes is the one that expires first; in any
    maximum matching that pairs ``p`` or that true time elsewhere, swapping partners keeps
    every pair within ``tol`` and the size unchanged (tests/test_switching.py checks it
    against brute force).
    """
    p, t = np.sort(np.asarray(pred)), np.sort(np.asarray(true))
    i = j = hits = 0
    while i < len(p) and j < len(t):
        if t[j] < p[i] - tol:
            j += 1
        elif t[j] > p[i] + tol:
            i += 1
        else:
            hits += 1
            i += 1
            j += 1
    return hits


def alignment_scores(
    betas: list[np.ndarray], subgoals: list[np.ndarray], threshold: float = 0.5
) -> tuple[list[float], list[float], list[float], int, int]:
    """Precision, recall, F1 per tolerance, and the totals of predicted and true switches."""
    preds = [switch_times(b, len(b), threshold) for b in betas]
    trues = [boundary_times(s, len(s)) for s in subgoals]
    n_pred = sum(len(p) for p in preds)
    n_true = sum(len(t) for t in trues)
    precision, recall, f1 = [], [], []
    for tol in TOLERANCES:
        hits = sum(match_count(p, t, tol) for p, t in zip(preds, trues, strict=True))
        p = hits / n_pred if n_pred else 0.0
        r = hits / n_true if n_true else 0.0
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return precision, recall, f1, n_pred, n_true


def held_out(ds: TrajectoryDataset, n_episodes: int) -> np.ndarray:
    """The last ``n_episodes`` episodes of ``ds`` (the ones discovery held out)."""
    if n_episodes < 1:
        raise ValueError(f"episodes={n_episodes} must be >= 1")
    return np.arange(max(0, ds.n_episodes - n_episodes), ds.n_episodes)


def episode_betas(
    path: str | Path,
    ds: TrajectoryDataset,
    episodes: np.ndarray,
    device: str = "cpu",
    loaded: tuple | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per episode: ``beta_t``, true subgoal ``g_t`` and latent codes ``z_t`` (posterior mean).

    ``loaded``: the ``(base, mc, config)`` of ``path`` when the caller already has them.
    """
    base, mc, config = loaded or load_metacontroller(path, device=device)
    layer = int(config["layer"])
    beta1 = config["train"]["variant"] == "beta1"
    betas, subgoals, codes = [], [], []
    with torch.no_grad():
        for chunk in np.array_split(episodes, max(1, len(episodes) // 64)):
            batch = make_batch(ds, chunk)
            mask = batch.mask.to(device)
            mo = posterior(
                base, mc, layer, batch.obs.to(device), mask, sample=False,
                beta_override=1.0 if beta1 else None,
            )  # fmt: skip
            lengths = batch.mask.sum(1).long().tolist()
            for i, n in enumerate(lengths):
                betas.append(mo.beta[i, :n].cpu().numpy())
                subgoals.append(batch.subgoal[i, :n].numpy())
                codes.append(mo.z[i, :n].cpu().numpy())
    return betas, subgoals, codes


def switch_alignment(
    path: str | Path,
    ds: TrajectoryDataset,
    *,
    n_episodes: int = 500,
    threshold: float = 0.5,
    n_examples: int = 6,
    device: str = "cpu",
) -> SwitchResult:
    """Alignment of the metacontroller in ``path`` on the last ``n_episodes`` of ``ds``."""
    betas, subgoals, _ = episode_betas(path, ds, held_out(ds, n_episodes), device=device)
    return alignment_result(betas, subgoals, threshold=threshold, n_examples=n_examples)


def alignment_result(
    betas: list[np.ndarray],
    subgoals: list[np.ndarray],
    *,
    threshold: float = 0.5,
    n_examples: int = 6,
) -> SwitchResult:
    """:class:`SwitchResult` from per-episode ``beta_t`` and true subgoals."""
    precision, recall, f1, n_pred, n_true = alignment_scores(betas, subgoals, threshold)
    flat = np.concatenate(betas)
    n = len(betas)
    return SwitchResult(
        n_episodes=n,
        threshold=threshold,
        tolerances=list(TOLERANCES),
        precision=precision,
        recall=recall,
        f1=f1,
        binary_fraction=float(((flat <= 0.05) | (flat >= 0.95)).mean()),
        switches_per_episode=n_pred / n,
        true_switches_per_episode=n_true / n,
        mean_beta=float(flat.mean()),
        examples=[
            {"beta": betas[i].round(4).tolist(), "subgoal": subgoals[i].tolist()}
            for i in range(min(n_examples, len(betas)))
        ],
    )


def summary(result: SwitchResult) -> dict[str, float]:
    """Flat numbers for ``summary.json`` (``switching/`` keys)."""
    out = {
        "switching/binary_fraction": result.binary_fraction,
        "switching/switches_per_episode": result.switches_per_episode,
        "switching/true_switches_per_episode": result.true_switches_per_episode,
        "switching/mean_beta": result.mean_beta,
        "switching/n_episodes": float(result.n_episodes),
    }
    for tol, p, r, f in zip(result.tolerances, result.precision, result.recall, result.f1,
                            strict=True):  # fmt: skip
        out[f"switching/precision_tol{tol}"] = p
        out[f"switching/recall_tol{tol}"] = r
        out[f"switching/f1_tol{tol}"] = f
    return out


def beta_figure(result: SwitchResult, episodes: list[int] | None = None):
    """``beta_t`` over time on coloured bands of the true subgoal, one row per episode."""

    chosen = list(range(len(result.examples))) if episodes is None else list(episodes)
    chosen = [i for i in chosen if 0 <= i < len(result.examples)] or [0]
    fig = make_subplots(rows=len(chosen), cols=1, shared_xaxes=False, vertical_spacing=0.04,
                        subplot_titles=[f"episode {i}" for i in chosen])  # fmt: skip
    seen: set[int] = set()
    for row, i in enumerate(chosen, start=1):
        ex = result.examples[i]
        beta, sub = np.asarray(ex["beta"]), np.asarray(ex["subgoal"])
        start = 0
        for t in range(1, len(sub) + 1):
            if t == len(sub) or sub[t] != sub[start]:
                g = int(sub[start])
                colour = SUBGOAL_COLOURS[g % len(SUBGOAL_COLOURS)] if g >= 0 else "#cccccc"
                fig.add_vrect(x0=start - 0.5, x1=t - 0.5, fillcolor=colour, opacity=0.18,
                              line_width=0, row=row, col=1)  # fmt: skip
                if g not in seen and g >= 0:  # legend entry per subgoal
                    seen.add(g)
                    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers",
                                             marker={"color": colour, "symbol": "square"},
                                             name=f"true subgoal {g} (colours {2*g}-{2*g+1})"),
                                  row=row, col=1)  # fmt: skip
                start = t
        fig.add_trace(
            go.Scatter(x=np.arange(len(beta)), y=beta, mode="lines+markers", name="beta_t",
                       line={"color": "black"}, showlegend=row == 1),
            row=row, col=1,
        )  # fmt: skip
        fig.add_hline(y=result.threshold, line_dash="dot", line_color="grey", row=row, col=1)
        fig.update_yaxes(range=[-0.05, 1.05], title_text="beta", row=row, col=1)
    fig.update_xaxes(title_text="time step t", row=len(chosen), col=1)
    f1 = ", ".join(f"tol {t}: {f:.2f}" for t, f in zip(result.tolerances, result.f1, strict=True))
    fig.update_layout(
        height=220 * len(chosen) + 80,
        title=f"Switching gate beta_t on true subgoal bands (F1 {f1})",
    )
    return fig
