"""Linear probes of the residual stream for the current subgoal (paper C.2, Fig 3 and A1).

For every layer ``l = 0..L`` a softmax probe ``p(g_t | e_t,l) = softmax(W e_t,l + b)``
predicts the ground-truth subgoal ``g_t`` from the *instantaneous* residual at step ``t``.
Residuals are cached once per dataset with ``run_with_cache(names_filter=...)`` at the
hooks :func:`irl_lens.hooks.resid_hook_name` names; episodes are split into train and
test, so accuracy is held-out.

The paper fits the probe with AdamW (lr 1e-3, 8000 steps, batch 512). On a CPU we solve
the same convex problem (multinomial logistic regression, small L2) to convergence with
full-batch L-BFGS on standardised features, which takes seconds per layer.

Outputs (:class:`ProbeResult`):

* held-out accuracy by layer, next to the majority-class rate and, on ant-pinpad, the
  accuracy of a one-observation rule (:func:`irl_lens.models.ant_features.heading_target`:
  the colour whose path the torso's velocity follows), what the base's inputs already say;
* *belief traces*: the probe's probability of the true subgoal as a function of the
  steps since the current segment began, averaged over test segments (Fig 3: belief
  mass grows within a segment as evidence accumulates), plus one example episode;
* when the run has checkpoints, accuracy by layer x training step (Fig A1).

:func:`probe_run` computes it from a run folder; :func:`accuracy_figure`,
:func:`belief_figure` and :func:`steps_figure` turn it into plotly figures;
:func:`summary` flattens it for ``summary.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor
from tqdm.auto import tqdm

from irl_lens import runs
from irl_lens.data.dataset import TrajectoryDataset, make_batch
from irl_lens.envs.pinpad import N_SUBGOALS
from irl_lens.hooks import layer_hook_name, n_layers_of
from irl_lens.models.ant_features import heading_target
from irl_lens.models.base import ActionModel, load_base_model
from irl_lens.models.probe import fit_probe

logger = logging.getLogger(__name__)

MAX_SINCE = 16
"""Belief traces bin steps-since-segment-start as 0..MAX_SINCE-1 (later steps are dropped)."""


def _on_device(model: ActionModel, device: str) -> ActionModel:
    """``model.to(device)`` without TransformerLens's "Moving model to device" print."""
    return model.to(device, print_details=False)


# ----------------------------------------------------------------------- residual cache


@dataclass
class ResidualSet:
    """Residuals of every labelled step of some episodes, at several layers."""

    resid: dict[int, Float[Tensor, "n d_model"]]
    label: np.ndarray  # [n] subgoal label
    episode: np.ndarray  # [n] dataset episode index
    t: np.ndarray  # [n] step within the episode
    since: np.ndarray  # [n] steps since the current segment (run of equal labels) began


@torch.no_grad()
def collect_residuals(
    model: ActionModel,
    ds: TrajectoryDataset,
    episodes: np.ndarray,
    layers: list[int],
    *,
    tokens_per_batch: int = 16384,
    progress: bool = False,
) -> ResidualSet:
    """Cache the residual at ``layers`` for every labelled step of ``episodes``.

    One ``run_with_cache`` per batch with ``names_filter`` set to just these hooks; steps
    whose label is -1 (none) are dropped. Steps stay in episode order, time order.
    """
    device = next(model.parameters()).device
    names = {layer: layer_hook_name(model, layer) for layer in layers}
    episodes = np.asarray(episodes, dtype=np.int64)
    episodes = episodes[np.argsort(ds.lengths[episodes], kind="stable")]  # less padding
    chunks: list[np.ndarray] = []
    start = 0
    lengths = ds.lengths[episodes]
    while start < len(episodes):  # consecutive chunks whose padded size fits the budget
        end = start + 1
        while (
            end < len(episodes)
            and (end - start + 1) * lengths[start : end + 1].max() <= tokens_per_batch
        ):
            end += 1
        chunks.append(episodes[start:end])
        start = end
    parts: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    labels, eps, ts = [], [], []
    for chunk in tqdm(chunks, desc="residuals", disable=not progress, leave=False):
        batch = make_batch(ds, chunk)
        keep = (batch.mask > 0) & (batch.subgoal >= 0)  # [batch, pos]
        _, cache = model.run_with_cache(batch.obs.to(device), names_filter=list(names.values()))
        for layer, name in names.items():
            parts[layer].append(cache[name][keep.to(device)].float().cpu())
        rows, pos = torch.nonzero(keep, as_tuple=True)
        labels.append(batch.subgoal[keep].numpy())
        eps.append(chunk[rows.numpy()])
        ts.append(pos.numpy())
    label = np.concatenate(labels)
    episode = np.concatenate(eps)
    t = np.concatenate(ts)
    return ResidualSet(
        resid={layer: torch.cat(p) for layer, p in parts.items()},
        label=label,
        episode=episode,
        t=t,
        since=_steps_since_segment_start(episode, label),
    )


def _steps_since_segment_start(episode: np.ndarray, label: np.ndarray) -> np.ndarray:
    """For steps in episode/time order: steps since the label last changed (0 at a change)."""
    n = len(label)
    new = np.ones(n, dtype=bool)
    new[1:] = (episode[1:] != episode[:-1]) | (label[1:] != label[:-1])
    seg_start = np.maximum.accumulate(np.where(new, np.arange(n), 0))
    return np.arange(n) - seg_start


# ------------------------------------------------------------------------------ result


@dataclass
class ProbeResult:
    """Everything the probe figures and ``summary.json`` need."""

    layers: list[int]
    accuracy: list[float]  # held-out, per layer
    train_accuracy: list[float]
    chance: float  # majority-class rate on the test steps
    n_train: int  # labelled steps
    n_test: int
    belief: list[list[float]]  # [layer][since] mean p(true subgoal), since = 0..MAX_SINCE-1
    belief_count: list[int]  # test steps per `since` bin
    example_probs: list[list[float]]  # [t][subgoal] at the best layer, one test episode
    example_labels: list[int]  # [t]
    example_layer: int
    checkpoint_steps: list[int] = field(default_factory=list)
    accuracy_by_step: list[list[float]] = field(default_factory=list)  # [checkpoint][layer]
    heading_rule: float | None = None  # ant: heading_target's accuracy on the test steps

    @property
    def best_layer(self) -> int:
        return self.layers[int(np.argmax(self.accuracy))]


def _split_episodes(episodes: np.ndarray, test_fraction: float, seed: int):
    rng = np.random.default_rng([seed, 31])
    perm = rng.permutation(episodes)
    n_test = max(1, int(round(len(perm) * test_fraction)))
    if n_test >= len(perm):
        raise ValueError(f"need at least 2 episodes to split into train and test, got {len(perm)}")
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _fit_layers(
    train: ResidualSet, test: ResidualSet, layers: list[int], l2: float, max_iter: int
) -> tuple[list[float], list[float], dict[int, Tensor]]:
    acc, train_acc, probs = [], [], {}
    y_train = torch.from_numpy(train.label)
    y_test = torch.from_numpy(test.label)
    for layer in layers:
        probe = fit_probe(train.resid[layer], y_train, N_SUBGOALS, l2=l2, max_iter=max_iter)
        p = probe.predict_proba(test.resid[layer])  # [n_test, n_subgoals]
        probs[layer] = p
        acc.append(float((p.argmax(-1) == y_test).float().mean()))
        train_acc.append(
            float((probe.logits(train.resid[layer]).argmax(-1) == y_train).float().mean())
        )
    return acc, train_acc, probs


def heading_rule_accuracy(ds: TrajectoryDataset, steps: ResidualSet) -> float:
    """Accuracy of :func:`~irl_lens.models.ant_features.heading_target` (an ant
    observation's own rule, no model) on the labelled ``steps``."""
    rows = ds.offsets[steps.episode] + steps.t
    obs = torch.from_numpy(np.asarray(ds.arrays["obs"][rows]))
    return float((heading_target(obs).numpy() == steps.label).mean())


def probe_model(
    model: ActionModel,
    ds: TrajectoryDataset,
    *,
    episodes: np.ndarray | None = None,
    test_fraction: float = 0.2,
    l2: float = 1e-3,
    max_iter: int = 200,
    seed: int = 0,
    progress: bool = False,
) -> ProbeResult:
    """Probes at every layer ``0..L`` of ``model`` on ``ds`` (split by episode with ``seed``)."""
    if ds.meta.get("obs_kind") != model.model_cfg.obs_kind:
        raise ValueError(
            f"dataset obs_kind={ds.meta.get('obs_kind')!r} does not match the "
            f"model's {model.model_cfg.obs_kind!r}"
        )
    episodes = np.arange(ds.n_episodes) if episodes is None else np.asarray(episodes)
    train_eps, test_eps = _split_episodes(episodes, test_fraction, seed)
    layers = list(range(n_layers_of(model) + 1))
    train = collect_residuals(model, ds, train_eps, layers, progress=progress)
    test = collect_residuals(model, ds, test_eps, layers, progress=progress)
    acc, train_acc, probs = _fit_layers(train, test, layers, l2, max_iter)

    y = torch.from_numpy(test.label)
    since = np.minimum(test.since, MAX_SINCE)
    counts = np.bincount(since, minlength=MAX_SINCE + 1)[:MAX_SINCE]
    belief = []
    for layer in layers:
        p_true = probs[layer].gather(1, y[:, None])[:, 0].numpy()
        sums = np.bincount(since, weights=p_true, minlength=MAX_SINCE + 1)[:MAX_SINCE]
        belief.append(
            [float(s / c) if c else float("nan") for s, c in zip(sums, counts, strict=True)]
        )

    best = layers[int(np.argmax(acc))]
    # the example: the longest test episode with at least two segments
    seg_counts = {}
    for ep in np.unique(test.episode):
        sel = test.episode == ep
        seg_counts[int(ep)] = (int((test.since[sel] == 0).sum()), int(sel.sum()))
    example = max(seg_counts, key=lambda e: (min(seg_counts[e][0], 3), seg_counts[e][1]))
    sel = test.episode == example
    chance = float(np.bincount(test.label, minlength=N_SUBGOALS).max() / len(test.label))
    return ProbeResult(
        layers=layers,
        accuracy=acc,
        train_accuracy=train_acc,
        chance=chance,
        n_train=len(train.label),
        n_test=len(test.label),
        belief=belief,
        belief_count=[int(c) for c in counts],
        example_probs=probs[best][torch.from_numpy(sel)].tolist(),
        example_labels=[int(v) for v in test.label[sel]],
        example_layer=best,
        heading_rule=heading_rule_accuracy(ds, test) if ds.meta.get("env") == "ant" else None,
    )


def probe_checkpoints(
    run: str | Path,
    ds: TrajectoryDataset,
    *,
    episodes: np.ndarray | None = None,
    max_checkpoints: int = 8,
    test_fraction: float = 0.2,
    l2: float = 1e-3,
    max_iter: int = 200,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[list[int], list[list[float]]]:
    """Held-out probe accuracy by layer for (up to ``max_checkpoints``) checkpoints of ``run``.

    Same episodes and split as :func:`probe_model`. Returns ``(steps, accuracy[ckpt][layer])``.
    """
    ckpts = runs.checkpoint_dirs(Path(run))
    if max_checkpoints < 1 or not ckpts:
        return [], []
    if len(ckpts) > max_checkpoints:  # evenly spaced, always keeping the last
        pick = np.unique(np.linspace(len(ckpts) - 1, 0, max_checkpoints).round().astype(int))
        ckpts = [ckpts[i] for i in pick]
    episodes = np.arange(ds.n_episodes) if episodes is None else np.asarray(episodes)
    train_eps, test_eps = _split_episodes(episodes, test_fraction, seed)
    steps, table = [], []
    for ckpt in tqdm(ckpts, desc="checkpoints", disable=not progress):
        model = _on_device(load_base_model(run, checkpoint=ckpt), device)
        layers = list(range(n_layers_of(model) + 1))
        train = collect_residuals(model, ds, train_eps, layers)
        test = collect_residuals(model, ds, test_eps, layers)
        acc, _, _ = _fit_layers(train, test, layers, l2, max_iter)
        steps.append(runs.checkpoint_step(ckpt))
        table.append(acc)
        logger.info("probe %s: %s", ckpt.name, " ".join(f"{a:.3f}" for a in acc))
    return steps, table


def probe_run(
    run: str | Path,
    ds: TrajectoryDataset,
    *,
    n_episodes: int | None = None,
    checkpoints: bool = True,
    max_checkpoints: int = 8,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> ProbeResult:
    """Probes of a base-model run folder (final weights, and its checkpoints when asked)."""
    model = _on_device(load_base_model(run), device)
    n = ds.n_episodes if n_episodes is None else min(n_episodes, ds.n_episodes)
    if n < 2:
        raise ValueError(f"episodes={n}: the probe needs at least 2 episodes")
    episodes = np.arange(n)
    result = probe_model(model, ds, episodes=episodes, seed=seed, progress=progress)
    if checkpoints:
        result.checkpoint_steps, result.accuracy_by_step = probe_checkpoints(
            run,
            ds,
            episodes=episodes,
            max_checkpoints=max_checkpoints,
            seed=seed,
            device=device,
            progress=progress,
        )
    return result


# ----------------------------------------------------------------------------- outputs


def summary(result: ProbeResult) -> dict[str, float]:
    """Flat numbers for ``summary.json`` (``probe/`` keys)."""
    out: dict[str, float] = {
        "probe/best_layer": float(result.best_layer),
        "probe/best_accuracy": max(result.accuracy),
        "probe/chance": result.chance,
        "probe/n_train_steps": float(result.n_train),
        "probe/n_test_steps": float(result.n_test),
    }
    if result.heading_rule is not None:
        out["probe/heading_rule"] = result.heading_rule
    for layer, acc, tr, bel in zip(
        result.layers, result.accuracy, result.train_accuracy, result.belief, strict=True
    ):
        out[f"probe/accuracy_layer_{layer}"] = acc
        out[f"probe/train_accuracy_layer_{layer}"] = tr
        out[f"probe/belief_start_layer_{layer}"] = bel[0]
        late = [b for b in bel[8:] if b == b]
        if late:
            out[f"probe/belief_late_layer_{layer}"] = float(np.mean(late))
    for step, accs in zip(result.checkpoint_steps, result.accuracy_by_step, strict=True):
        for layer, acc in zip(result.layers, accs, strict=True):
            out[f"probe/step_{step}_accuracy_layer_{layer}"] = acc
    return out


def table_rows(result: ProbeResult) -> list[tuple[int, float, float, float]]:
    """``(layer, test accuracy, train accuracy, belief at segment start)`` per layer."""
    return [
        (layer, acc, tr, bel[0])
        for layer, acc, tr, bel in zip(
            result.layers, result.accuracy, result.train_accuracy, result.belief, strict=True
        )
    ]


def accuracy_figure(result: ProbeResult):
    """Held-out probe accuracy by layer, with the majority-class rate (Fig A1 final column)."""

    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=result.layers, y=result.accuracy, mode="lines+markers", name="held-out accuracy"
        )
    )
    fig.add_trace(
        go.Scatter(
            x=result.layers,
            y=result.train_accuracy,
            mode="lines+markers",
            name="train accuracy",
            line={"dash": "dot"},
        )
    )
    fig.add_hline(y=result.chance, line_dash="dash", annotation_text="majority class")
    if result.heading_rule is not None:
        fig.add_hline(
            y=result.heading_rule, line_dash="dot", annotation_text="heading rule (no model)"
        )
    fig.update_layout(
        title="Linear probe for the current subgoal, by layer",
        xaxis_title="layer l (0 = before block 0)",
        yaxis_title="accuracy",
        yaxis_range=[0, 1],
        xaxis={"dtick": 1},
    )
    return fig


def belief_figure(result: ProbeResult):
    """Belief in the true subgoal vs steps since the segment began, per layer (Fig 3),
    and the best layer's beliefs over one test episode."""

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            "mean p(true subgoal) within a segment",
            f"example episode, layer {result.example_layer}",
        ),
    )
    since = list(range(MAX_SINCE))
    for layer, bel in zip(result.layers, result.belief, strict=True):
        fig.add_trace(
            go.Scatter(x=since, y=bel, mode="lines+markers", name=f"layer {layer}"), row=1, col=1
        )
    probs = np.asarray(result.example_probs)
    t = list(range(len(result.example_labels)))
    for g in range(probs.shape[1] if probs.size else 0):
        fig.add_trace(
            go.Scatter(x=t, y=probs[:, g], mode="lines", stackgroup="p", name=f"p(subgoal {g})"),
            row=1,
            col=2,
        )
    fig.add_trace(
        go.Scatter(
            x=t,
            y=[(g + 0.5) / N_SUBGOALS for g in result.example_labels],
            mode="markers",
            marker={"color": "black", "size": 5},
            name="true subgoal (height = label)",
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text="steps since segment start", row=1, col=1)
    fig.update_xaxes(title_text="step t", row=1, col=2)
    fig.update_yaxes(range=[0, 1])
    fig.update_layout(title="Belief traces of the subgoal probe")
    return fig


def steps_figure(result: ProbeResult):
    """Held-out accuracy by layer x training step (Fig A1); ``None`` without checkpoints."""
    if not result.checkpoint_steps:
        return None

    fig = go.Figure(
        go.Heatmap(
            z=np.asarray(result.accuracy_by_step).T,
            x=[str(s) for s in result.checkpoint_steps],
            y=result.layers,
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            colorbar={"title": "accuracy"},
            texttemplate="%{z:.2f}",
        )
    )
    fig.update_layout(
        title="Probe accuracy by layer and training step",
        xaxis_title="training step",
        yaxis_title="layer",
        yaxis={"dtick": 1},
    )
    return fig
