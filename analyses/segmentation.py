"""What a trained CompILE (issue 31) found: its boundaries against the true subgoal switches
and its latents against the true subgoals, with the metacontroller's own measures.

Each episode's hard segmentation is read without sampling: boundary ``i`` at the mode of
``q(b_i)``, segment ``i`` where ``m_i(t)`` is largest. A segment start after the first step
is a switch, written as ``beta_t = 1`` so that :mod:`analyses.switching` scores it exactly
as it scores the metacontroller (F1 at tolerances 0-2 with the optimal matching). The code
in force at a step is the latent of the segment it belongs to, so
:func:`analyses.clustering.segment_codes` and :func:`~analyses.clustering.cluster_codes` give
the clustering NMI as for the metacontroller.
"""

from __future__ import annotations

import numpy as np
import torch

from analyses import clustering, switching
from irl_lens.data.dataset import TrajectoryDataset, make_batch
from irl_lens.train.compile_fit import LoadedCompile, compile_loss


def episode_segments(
    loaded: LoadedCompile, ds: TrajectoryDataset, episodes: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per episode: switch indicators ``[T]`` (1 where a segment starts, after step 0), true
    subgoals and the code in force ``[T, n_z]``."""
    device = next(loaded.model.parameters()).device
    starts, subgoals, codes = [], [], []
    with torch.no_grad():
        for chunk in np.array_split(episodes, max(1, len(episodes) // 64)):
            batch = make_batch(ds, chunk, device)
            out = loaded.model(batch.obs, batch.action, batch.mask, sample=False)
            segment = out.masks.argmax(0)  # [batch, pos]
            for i, n in enumerate(batch.mask.sum(1).long().tolist()):
                seg = segment[i, :n].cpu().numpy()
                start = np.zeros(n, dtype=np.float32)
                start[1:] = seg[1:] != seg[:-1]
                starts.append(start)
                subgoals.append(batch.subgoal[i, :n].cpu().numpy())
                codes.append(out.mu[i, seg].cpu().numpy())
    return starts, subgoals, codes


def analyse(
    loaded: LoadedCompile, ds: TrajectoryDataset, episodes: np.ndarray, seed: int = 0
) -> dict[str, float]:
    """``switching/...`` (boundary alignment), ``clustering/...`` (latents), ``compile/...``
    (held-out rate and distortion, :func:`held_out_losses`) and ``segments/mean_steps``
    (raw steps per inferred segment: the segment length internal RL over CompILE's latents
    uses) numbers."""
    starts, subgoals, codes = episode_segments(loaded, ds, episodes)
    out = switching.summary(switching.alignment_result(starts, subgoals)) | held_out_losses(
        loaded, ds, episodes
    )
    n_segments = sum(float(s.sum()) + 1.0 for s in starts)
    out["segments/mean_steps"] = sum(len(s) for s in starts) / max(n_segments, 1.0)
    z, truth = clustering.segment_codes(codes, subgoals)
    if len(z) >= 2:
        out |= clustering.clusters_summary(clustering.cluster_codes(z, truth, seed=seed))
    return out


def held_out_losses(
    loaded: LoadedCompile, ds: TrajectoryDataset, episodes: np.ndarray
) -> dict[str, float]:
    """Per real step on ``episodes``: ``compile/kl_z`` (the rate, the latents' KL to the
    prior), ``compile/kl_b`` (the boundaries' KL) and ``compile/action_nll`` (the
    distortion), each the step-weighted mean over chunks of the training objective's own
    terms. Deterministic: the latents are the posterior means and the masks the relaxed
    boundaries' expectations (no sampling), so one folder always gives the same point of the
    KL-weight sweep (``irl-lens sweep compile-kl``)."""
    model, base = loaded.model, loaded.base
    device = next(model.parameters()).device
    beta_z, beta_b = (float(loaded.config["train"][k]) for k in ("beta_z", "beta_b"))
    totals, steps = np.zeros(3), 0.0
    with torch.no_grad():
        for chunk in np.array_split(episodes, max(1, len(episodes) // 64)):
            batch = make_batch(ds, chunk, device)
            n = float(batch.mask.sum())
            parts = compile_loss(base, model, loaded.layer, batch, beta_z, beta_b, sample=False)
            totals += n * np.array([float(parts.nll), float(parts.kl_z), float(parts.kl_b)])
            steps += n
    nll, kl_z, kl_b = totals / max(steps, 1.0)
    return {"compile/action_nll": nll, "compile/kl_z": kl_z, "compile/kl_b": kl_b}
