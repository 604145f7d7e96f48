"""Do the discovered latent codes mean "go to subgoal k"? Clustering and steering (Fig 5, B.3.2).

**Clustering.** On held-out clean episodes the metacontroller runs with its posterior mean;
for every true subgoal segment the code ``z`` active at the segment's last step is taken
(the code in force once any switch at the segment start has happened). The codes are
clustered with k-means (``k`` = number of subgoals present) and compared with the true
subgoal: normalised mutual information and adjusted Rand index. A PCA projection to 2-D,
coloured by the true subgoal, is the figure.

**Steering.** Each cluster is mapped to the subgoal most of its members carry, and its
centroid code becomes a fixed controller ``e + U(z_k) e`` at the metacontroller's layer.
On new layouts the codes are then *forced*: (a) from step 0 on a one-subgoal task
(gridworld ``2k-2k+1``, ant ``k``), against the uncontrolled base model on the same
layouts; (b) in sequence on a whole task (default the post-training task), switching to the
next subgoal's code when the env reports the subgoal done, exactly like the supervised
controllers. Both run in the model's own environment (:func:`irl_lens.rollout.kit.env_kit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score

from irl_lens.data.dataset import TrajectoryDataset
from irl_lens.envs.pinpad import format_task
from irl_lens.models.metacontroller import load_metacontroller
from irl_lens.rollout.kit import env_kit, run_batches

from .switching import SUBGOAL_COLOURS, episode_betas, held_out


@dataclass
class ClusterResult:
    """Latent codes per true segment, their clusters and the agreement with the truth."""

    n_segments: int
    k: int
    nmi: float
    ari: float
    codes_2d: list[list[float]]
    """PCA projection of every segment's code."""
    truth: list[int]
    cluster: list[int]
    cluster_subgoal: list[int]
    """Majority true subgoal of each cluster."""
    centroids: list[list[float]]
    """Cluster centroids in code space (``n_z`` floats each)."""
    explained_variance: list[float] = field(default_factory=list)


def _segment_ends(g: np.ndarray) -> np.ndarray:
    """Last step of every labelled true segment of one episode."""
    ends = np.flatnonzero(np.append(g[1:] != g[:-1], True))
    return ends[g[ends] >= 0]


def segment_codes(
    codes: list[np.ndarray], subgoals: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``(codes [n_segments, n_z], true subgoal [n_segments])``: the code at each segment's end."""
    out_z, out_g = [], []
    for z, g in zip(codes, subgoals, strict=True):
        for t in _segment_ends(g):
            out_z.append(z[t])
            out_g.append(int(g[t]))
    return np.asarray(out_z, dtype=np.float64), np.asarray(out_g, dtype=np.int64)


def segment_previous(subgoals: list[np.ndarray]) -> np.ndarray:
    """The subgoal of the segment before each one (-1 for an episode's first), int[n].

    Rows follow :func:`segment_codes` (same episodes, same segments)."""
    out = []
    for g in subgoals:
        prev = -1
        for t in _segment_ends(g):
            out.append(prev)
            prev = int(g[t])
    return np.asarray(out, dtype=np.int64)


def segment_target_cells(
    ds: TrajectoryDataset, episodes: np.ndarray, subgoals: list[np.ndarray]
) -> np.ndarray:
    """``(row, col)`` of the cell each segment's subgoal sends the agent to first, float[n, 2].

    Gridworld: the cell of colour ``2k`` (subgoal ``k`` is the pair ``2k``, ``2k+1``; 7x7);
    ant: the cell of colour ``k`` (4x4). Rows follow :func:`segment_codes` (same
    episodes, same segments)."""
    layout = ds.arrays["layout"]
    per_subgoal = 2 if ds.meta.get("env", "gridworld") == "gridworld" else 1
    side = int(round(layout.shape[1] ** 0.5))
    cells = []
    for i, g in zip(episodes, subgoals, strict=True):
        for t in _segment_ends(g):
            code = 1 + per_subgoal * int(g[t])  # layout codes: 0 empty, 1 + colour
            cells.append(divmod(int(np.flatnonzero(layout[i] == code)[0]), side))
    return np.asarray(cells, dtype=np.float64)


def code_semantics(
    z: np.ndarray,
    truth: np.ndarray,
    target_cells: np.ndarray | None = None,
    seed: int = 0,
    previous: np.ndarray | None = None,
) -> dict[str, float]:
    """What a segment's code is linearly predictive of, by 5-fold cross-validation.

    ``subgoal_accuracy``: a logistic probe from the code to the true subgoal (next to
    ``subgoal_chance``, the majority rate). ``target_cell_r2``: a linear regression from the
    code to the grid ``(row, col)`` of the segment's first colour (gridworld,
    :func:`segment_target_cells`). A code that means "go to colour k" scores high on the
    first; one that means "go to that cell", whatever its colour, on the second and near
    chance on the first.

    ``previous_accuracy`` (with ``previous``, :func:`segment_previous`): among the codes of
    one subgoal, a probe to the subgoal that came before it (or "none": the episode's
    first), averaged over subgoals by their segment counts, next to ``previous_chance``.
    An *absolute* "go to subgoal k" code is the same whatever came before (near chance); a
    code read *relative to the history* ("the other of the two subgoals the history
    allows") differs by predecessor (near 1), and cannot name a subgoal after a
    predecessor it never followed in training.
    """

    counts = np.bincount(truth)
    out = {"subgoal_chance": float(counts.max() / len(truth)), "subgoal_accuracy": float("nan")}
    folds = min(5, int(counts[counts > 0].min()))
    if folds >= 2 and len(np.unique(truth)) >= 2:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        probe = LogisticRegression(max_iter=2000)
        out["subgoal_accuracy"] = float(cross_val_score(probe, z, truth, cv=cv).mean())
    if target_cells is not None and len(z) >= 5:
        cv = KFold(5, shuffle=True, random_state=seed)
        out["target_cell_r2"] = float(
            cross_val_score(LinearRegression(), z, target_cells, cv=cv, scoring="r2").mean()
        )
    if previous is not None:
        out |= _previous_readout(z, truth, previous, seed)
    return out


def _previous_readout(
    z: np.ndarray, truth: np.ndarray, previous: np.ndarray, seed: int
) -> dict[str, float]:
    """``previous_accuracy`` / ``previous_chance`` of :func:`code_semantics`."""

    if len(previous) != len(truth):
        raise ValueError(f"previous has {len(previous)} rows, truth {len(truth)}")
    acc = chance = weight = 0.0
    for g in np.unique(truth):
        sel = truth == g
        vals, counts = np.unique(previous[sel], return_counts=True)
        folds = min(5, int(counts.min()))
        if len(vals) < 2 or folds < 2:
            continue  # one predecessor only (or too few): nothing to tell apart
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        probe = LogisticRegression(max_iter=2000)
        n = float(sel.sum())
        acc += n * float(cross_val_score(probe, z[sel], previous[sel], cv=cv).mean())
        chance += n * float(counts.max() / counts.sum())
        weight += n
    if weight == 0:
        return {"previous_accuracy": float("nan"), "previous_chance": float("nan")}
    return {"previous_accuracy": acc / weight, "previous_chance": chance / weight}


def cluster_codes(z: np.ndarray, truth: np.ndarray, seed: int = 0) -> ClusterResult:
    """k-means on ``z`` with ``k`` = number of distinct true subgoals; NMI, ARI, PCA."""

    if len(z) < 2:
        raise ValueError(f"need at least 2 segments to cluster, got {len(z)}")
    k = max(2, len(np.unique(truth)))
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(z)
    labels = km.labels_
    majority = []
    for c in range(k):
        members = truth[labels == c]
        majority.append(int(np.bincount(members).argmax()) if len(members) else -1)
    n_comp = min(2, z.shape[1], len(z))
    pca = PCA(n_components=n_comp, random_state=seed).fit(z)
    proj = pca.transform(z)
    if n_comp < 2:
        proj = np.concatenate([proj, np.zeros((len(proj), 2 - n_comp))], axis=1)
    return ClusterResult(
        n_segments=len(z),
        k=k,
        nmi=float(normalized_mutual_info_score(truth, labels)),
        ari=float(adjusted_rand_score(truth, labels)),
        codes_2d=proj.round(4).tolist(),
        truth=truth.tolist(),
        cluster=labels.tolist(),
        cluster_subgoal=majority,
        centroids=km.cluster_centers_.tolist(),
        explained_variance=pca.explained_variance_ratio_.tolist(),
    )


def code_clusters(
    path: str | Path,
    ds: TrajectoryDataset,
    *,
    n_episodes: int = 500,
    seed: int = 0,
    device: str = "cpu",
) -> ClusterResult:
    """Cluster the codes of the metacontroller in ``path`` on the last ``n_episodes`` of ``ds``."""
    _, subgoals, codes = episode_betas(path, ds, held_out(ds, n_episodes), device=device)
    z, truth = segment_codes(codes, subgoals)
    return cluster_codes(z, truth, seed=seed)


def clusters_summary(result: ClusterResult) -> dict[str, float]:
    return {
        "clustering/nmi": result.nmi,
        "clustering/ari": result.ari,
        "clustering/k": float(result.k),
        "clustering/n_segments": float(result.n_segments),
    }


def cluster_figure(result: ClusterResult):
    """2-D PCA projection of the segment codes, coloured by the true subgoal."""

    xy = np.asarray(result.codes_2d)
    truth = np.asarray(result.truth)
    fig = go.Figure()
    for g in sorted(set(result.truth)):
        sel = truth == g
        fig.add_trace(go.Scatter(
            x=xy[sel, 0], y=xy[sel, 1], mode="markers", opacity=0.6,
            marker={"color": SUBGOAL_COLOURS[g % len(SUBGOAL_COLOURS)], "size": 6},
            name=f"true subgoal {g} (colours {2 * g}-{2 * g + 1})",
        ))  # fmt: skip
    fig.update_layout(
        title=f"Latent codes per true segment (PCA); k-means k={result.k}: "
        f"NMI {result.nmi:.2f}, ARI {result.ari:.2f}",
        xaxis_title="PC 1",
        yaxis_title="PC 2",
    )
    return fig


# --------------------------------------------------------------------------- steering


@dataclass
class SteeringResult:
    """Forcing cluster codes in new layouts."""

    subgoals: list[int]
    """Subgoal of each steered code (one per subgoal that has a cluster)."""
    steered: list[float]
    """Success on the one-subgoal task ``2k-2k+1`` with code k forced from step 0."""
    uncontrolled: list[float]
    """The base model alone on the same episodes."""
    task: str
    task_success: float
    """Success on ``task`` with the codes forced in sequence (switching when a subgoal is done)."""
    task_base_success: float
    n_episodes: int
    colours_per_subgoal: int = 2
    """2 on the gridworld (colour pairs), 1 on ant (one colour per subgoal)."""


def steering(
    path: str | Path,
    clusters: ClusterResult,
    *,
    task="post",
    n_episodes: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    loaded: tuple | None = None,
) -> SteeringResult:
    """Force each cluster's centroid code on new layouts (see the module docstring).

    ``loaded``: the ``(base, mc, config)`` of ``path`` when the caller already has them.
    """
    base, mc, config = loaded or load_metacontroller(path, device=device)
    kit = env_kit(base, int(config["layer"]))
    codes: dict[int, torch.Tensor] = {}
    for c, g in enumerate(clusters.cluster_subgoal):  # first cluster per subgoal wins ties
        if g >= 0 and g not in codes:
            codes[g] = torch.tensor(clusters.centroids[c], dtype=torch.float32, device=device)
    if not codes:
        raise ValueError("no cluster maps to a subgoal; cannot steer")
    n_z = mc.cfg.n_z
    table = torch.stack(
        [codes.get(g, torch.zeros(n_z, device=device)) for g in range(max(codes) + 1)]
    )

    def fixed(index: torch.Tensor):
        def controller(e: torch.Tensor) -> torch.Tensor:  # e: [rows, 1, d]
            z = table[index.clamp(min=0)].unsqueeze(1)  # [rows, 1, n_z]
            out = mc.apply_code(e, z)
            return torch.where((index >= 0)[:, None, None], out, e)

        return controller

    def run(task_colours, controlled: bool, stream: int) -> float:
        make_fn = (lambda: kit.switcher(fixed, kit.max_steps)) if controlled else None
        batches = run_batches(
            kit,
            n_episodes,
            task=task_colours,
            seed=seed,
            stream=stream,
            make_fn=make_fn,
            generator=torch.Generator().manual_seed(seed),
        )
        return float(np.concatenate([ro.success for ro, _ in batches]).mean())

    subgoals = sorted(codes)
    steered, uncontrolled = [], []
    with torch.no_grad():
        for g in subgoals:
            one = kit.subgoal_task(g)
            steered.append(run(one, True, 3000 + g))
            uncontrolled.append(run(one, False, 3000 + g))
        colours = kit.parse_task(task)
        needed = {c // kit.colours_per_subgoal for c in colours}
        missing = sorted(needed - set(codes))
        if missing:
            task_ok = task_base = float("nan")
        else:
            task_ok = run(colours, True, 4000)
            task_base = run(colours, False, 4000)
    return SteeringResult(
        subgoals=subgoals,
        steered=steered,
        uncontrolled=uncontrolled,
        task=format_task(colours),
        task_success=task_ok,
        task_base_success=task_base,
        n_episodes=n_episodes,
        colours_per_subgoal=kit.colours_per_subgoal,
    )


def steering_summary(result: SteeringResult) -> dict[str, float]:
    out = {
        "steering/mean_steered": float(np.mean(result.steered)),
        "steering/mean_uncontrolled": float(np.mean(result.uncontrolled)),
        "steering/task_success": result.task_success,
        "steering/task_base_success": result.task_base_success,
    }
    for g, s, u in zip(result.subgoals, result.steered, result.uncontrolled, strict=True):
        out[f"steering/steered_subgoal_{g}"] = s
        out[f"steering/uncontrolled_subgoal_{g}"] = u
    return out


def steering_figure(result: SteeringResult):
    """Success with each cluster code forced vs the uncontrolled base model."""

    k = result.colours_per_subgoal
    names = ["-".join(str(c) for c in range(k * g, k * (g + 1))) for g in result.subgoals]
    fig = go.Figure([
        go.Bar(x=names, y=result.steered, name="cluster code forced from step 0"),
        go.Bar(x=names, y=result.uncontrolled, name="uncontrolled base model"),
    ])  # fmt: skip
    if np.isfinite(result.task_success):
        on_task = f"{result.task_success:.3f} (base {result.task_base_success:.3f})"
    else:  # a subgoal the task needs has no cluster code (see steering())
        on_task = "not computed: no cluster code for a subgoal the task needs"
    fig.update_layout(
        barmode="group",
        yaxis={"range": [0, 1], "title": "success on the one-subgoal task"},
        xaxis_title="subgoal of the cluster (" + ("colour pair" if k == 2 else "colour") + ")",
        title=f"Steering with discovered codes; on task {result.task}: {on_task}",
    )
    return fig
