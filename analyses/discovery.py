"""Everything ``irl-lens discover`` reports about a trained metacontroller, in one pass.

Switch alignment (Fig 6), code clustering and what a code predicts (Fig 5), and, when
``rollouts`` is on, steering with the cluster codes, sampling codes from the prior and
whether the codes compose on ``post`` (:mod:`analyses.composition`): the analyses that run
the model in its env (gridworld or ant,
:func:`irl_lens.rollout.kit.env_kit`). The caller writes the figures and details.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analyses import clustering, composition, switching
from irl_lens.data.dataset import TrajectoryDataset
from irl_lens.models.metacontroller import load_metacontroller
from irl_lens.train.discover import prior_rollouts


@dataclass
class DiscoveryAnalysis:
    summary: dict[str, float]
    """Flat ``switching/``, ``clustering/``, ``steering/`` and ``prior/`` numbers."""
    details: dict[str, Any]
    """Per-analysis results (``analysis.json``)."""
    figures: dict[str, Any] = field(default_factory=dict)
    """Plotly figures by file stem: ``switching_beta``, ``clusters``, ``steering``."""


def analyse(
    out: Path, ds: TrajectoryDataset, n_val: int, *, task: str, episodes: int, seed: int,
    device: str, rollouts: bool = True,
) -> DiscoveryAnalysis:  # fmt: skip
    """Analyse the metacontroller folder ``out`` on the last ``n_val`` episodes of ``ds``."""
    loaded = load_metacontroller(out, device=device)  # once, for every analysis below
    # one posterior pass over the held-out episodes serves alignment and clustering
    held = switching.held_out(ds, n_val)
    betas, subgoals, codes = switching.episode_betas(out, ds, held, loaded=loaded)
    sw = switching.alignment_result(betas, subgoals)
    z, truth = clustering.segment_codes(codes, subgoals)
    cl = clustering.cluster_codes(z, truth, seed=seed)
    cells = clustering.segment_target_cells(ds, held, subgoals) if "layout" in ds.arrays else None
    semantics = clustering.code_semantics(
        z, truth, cells, seed=seed, previous=clustering.segment_previous(subgoals)
    )
    found = DiscoveryAnalysis(
        summary=switching.summary(sw)
        | clustering.clusters_summary(cl)
        | {f"clustering/{k}": v for k, v in semantics.items()},
        details={"switching": dataclasses.asdict(sw), "clustering": dataclasses.asdict(cl)},
        figures={
            "switching_beta": switching.beta_figure(sw),
            "clusters": clustering.cluster_figure(cl),
        },
    )
    if rollouts:
        st = clustering.steering(out, cl, task=task, n_episodes=episodes, seed=seed,
                                 loaded=loaded)  # fmt: skip
        prior = prior_rollouts(out, n_episodes=episodes, seed=seed, loaded=loaded)
        found.figures["steering"] = clustering.steering_figure(st)
        found.details |= {"steering": dataclasses.asdict(st), "prior": prior}
        found.summary |= clustering.steering_summary(st) | {
            f"prior/{k}": v for k, v in prior.items() if isinstance(v, float)
        }
        # do the codes compose on the post-training task? (functional, closed loop)
        found.summary |= composition.analyse(loaded, ds, held, n_episodes=episodes, seed=seed)
    return found
