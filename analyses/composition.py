"""Do the codes command? Functional tests of a metacontroller's codes (issue 29).

A linear probe can read small offsets in a code that the decoder ignores, so these tests
run the codes in closed loop instead:

* **compositional steering**: the metacontroller's own switching unit decides *when* to
  switch, and each switch gets the *ideal* code, the held-out centroid of the next subgoal
  of the task (labels are used to pick the code, never to train). Success on a task whose
  transitions pretraining never showed (``post``) says whether the codes compose;
* **prior commitment**: codes drawn from ``N(0, I)`` at each switch (what an RL policy
  starts with). Per segment of the task, the fraction of episodes that reached it and
  completed it; their product is the chance that the initial policy solves the task, the
  exploration a sparse reward depends on (1/4 per segment is a uniform choice among 4
  subgoals);
* **code swaps** (teacher forced, :func:`code_swaps`): action accuracy over the first steps
  of each true segment with its own code, with the code the same subgoal got after a
  *different* predecessor, and (later segments) with the code it got at the start of an
  episode. Equal accuracies mean "go to subgoal k" whatever came before: an absolute code
  (``clustering/previous_accuracy`` can be high while the decoder ignores the offsets it
  reads);
* **unseen transitions one at a time**: compositional steering on each two-subgoal task
  whose one transition no pretraining task contains (gridworld: 0-1-2-3, 2-3-4-5, 4-5-6-7,
  6-7-0-1; ``post`` chains all four).

:func:`segments_figure` and :func:`unseen_figure` draw them from a ``summary.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from irl_lens.data.dataset import TrajectoryDataset, make_batch
from irl_lens.envs.pinpad import PRETRAIN_TASKS, format_task
from irl_lens.hooks import intervene
from irl_lens.models.metacontroller import LoadedMetacontroller
from irl_lens.rollout.kit import EnvKit, env_kit, run_batches
from irl_lens.rollout.switchers import MetacontrollerDriver

logger = logging.getLogger(__name__)


def subgoal_codes(
    loaded: LoadedMetacontroller, ds: TrajectoryDataset, episodes: np.ndarray, n_subgoals: int
) -> Float[Tensor, "n_subgoals n_z"]:
    """Mean noiseless code in force at the last step of each true segment, per subgoal."""
    codes: list[list[Tensor]] = [[] for _ in range(n_subgoals)]
    device = next(loaded.mc.parameters()).device
    with torch.no_grad():
        for chunk in np.array_split(episodes, max(1, len(episodes) // 64)):
            batch = make_batch(ds, chunk, device)
            z = loaded.posterior(batch.obs, batch.mask, sample=False).z
            for i, n in enumerate(batch.mask.sum(1).long().tolist()):
                g = batch.subgoal[i, :n]
                ends = torch.nonzero(torch.cat([g[1:] != g[:-1], g.new_ones(1, dtype=torch.bool)]))
                for t in ends.flatten().tolist():
                    if 0 <= int(g[t]) < n_subgoals:
                        codes[int(g[t])].append(z[i, t])
    missing = [k for k, c in enumerate(codes) if not c]
    if missing:
        raise ValueError(f"no held-out segment of subgoal(s) {missing} to take a code from")
    return torch.stack([torch.stack(c).mean(0) for c in codes])


def _segments(subgoal: Tensor, n: int) -> list[tuple[int, int, int, int]]:
    """``(start, end, subgoal, predecessor)`` of each true segment of one episode's first
    ``n`` steps (predecessor -1 for the first)."""
    g = subgoal[:n].tolist()
    out, start = [], 0
    for t in range(1, n + 1):
        if t == n or g[t] != g[start]:
            out.append((start, t, g[start], g[out[-1][0]] if out else -1))
            start = t
    return out


def code_swaps(
    loaded: LoadedMetacontroller, ds: TrajectoryDataset, episodes: np.ndarray, first: int = 3
) -> dict[str, float]:
    """``codes/{own,swap,reuse}_first{first}_accuracy`` (see the module docstring) and the
    number of steps each averages over (``codes/{swap,reuse}_steps``); gridworld (discrete
    actions) only: an empty dict otherwise."""
    if loaded.base.model_cfg.action_kind != "discrete":
        return {}
    device = next(loaded.mc.parameters()).device
    chunks = np.array_split(episodes, max(1, len(episodes) // 64))
    found = []  # per chunk: (batch, z, segments per episode)
    by_kind: dict[tuple[int, int], list[Tensor]] = {}
    with torch.no_grad():
        for chunk in chunks:
            batch = make_batch(ds, chunk, device)
            z = loaded.posterior(batch.obs, batch.mask, sample=False).z
            segs = [_segments(batch.subgoal[i].cpu(), int(n))
                    for i, n in enumerate(batch.mask.sum(1).tolist())]  # fmt: skip
            for i, episode in enumerate(segs):
                for _, end, k, prev in episode:
                    by_kind.setdefault((k, prev), []).append(z[i, end - 1])
            found.append((batch, z, segs))
    mean = {kind: torch.stack(v).mean(0) for kind, v in by_kind.items()}

    def swap_for(k: int, prev: int) -> Tensor | None:
        others = [
            (len(by_kind[(k, p)]), p) for (kk, p) in by_kind if kk == k and p not in (prev, -1)
        ]
        return mean[(k, max(others)[1])] if others and prev != -1 else None

    def reuse_for(k: int, prev: int) -> Tensor | None:
        return mean.get((k, -1)) if prev != -1 else None

    hits = {"own": [0, 0], "swap": [0, 0], "reuse": [0, 0]}
    with torch.no_grad():
        for batch, z, segs in found:
            for name, pick in (("own", None), ("swap", swap_for), ("reuse", reuse_for)):
                zz, scored = z.clone(), torch.zeros_like(batch.mask, dtype=torch.bool)
                for i, episode in enumerate(segs):
                    for start, end, k, prev in episode:
                        code = None if pick is None else pick(k, prev)
                        if pick is not None and code is None:
                            continue
                        if code is not None:
                            zz[i, start:end] = code
                        scored[i, start : min(end, start + first)] = True
                with intervene(loaded.base, loaded.layer,
                               lambda e, zz=zz: loaded.mc.apply_code(e, zz)):  # fmt: skip
                    logits = loaded.base.split(loaded.base(batch.obs)).action_params
                right = (logits.argmax(-1) == batch.action) & scored
                hits[name][0] += int(right.sum())
                hits[name][1] += int(scored.sum())
    out = {f"codes/{name}_first{first}_accuracy": h / t if t else float("nan")
           for name, (h, t) in hits.items()}  # fmt: skip
    out["codes/swap_steps"] = float(hits["swap"][1])
    out["codes/reuse_steps"] = float(hits["reuse"][1])
    return out


def task_subgoals(kit: EnvKit, task) -> list[int]:
    """The task's subgoal sequence (gridworld ``post`` -> 0, 1, 2, 3, 0, 1)."""
    colours = kit.parse_task(task)
    k = kit.colours_per_subgoal
    return [c // k for c in colours[::k]]


@dataclass
class ClosedLoop:
    task: str
    success: float
    switches_per_episode: float
    segments_reached: list[float]
    """Fraction of episodes that started segment k (k = 0 .. number of segments - 1)."""
    segments_completed: list[float]
    """Fraction of episodes that completed segment k."""

    @property
    def per_segment(self) -> list[float]:
        """P(complete segment k | reached it)."""
        return [
            c / r if r > 0 else 0.0
            for c, r in zip(self.segments_completed, self.segments_reached, strict=True)
        ]


def _closed_loop(kit, loaded, task, n_episodes, seed, propose) -> ClosedLoop:
    subgoals = task_subgoals(kit, task)

    def make() -> MetacontrollerDriver:
        return MetacontrollerDriver(
            loaded.mc, threshold=0.5, propose=propose() if propose else None,
            generator=torch.Generator().manual_seed(seed), max_steps=kit.max_steps,
        )  # fmt: skip

    with torch.no_grad():
        batches = run_batches(kit, n_episodes, task=task, seed=seed, stream=4000, make_fn=make,
                              generator=torch.Generator().manual_seed(seed))  # fmt: skip
    done = np.concatenate([ro.final_n_done for ro, _ in batches]) // kit.colours_per_subgoal
    segs = np.arange(len(subgoals))
    return ClosedLoop(
        task=str(task),
        success=float(np.concatenate([ro.success for ro, _ in batches]).mean()),
        switches_per_episode=float(
            np.concatenate([fn.switched[:, 1:].sum(1) for _, fn in batches]).mean()
        ),
        segments_reached=[float((done >= k).mean()) for k in segs],
        segments_completed=[float((done >= k + 1).mean()) for k in segs],
    )


def compositional_steering(
    loaded: LoadedMetacontroller, codes: Tensor, task, n_episodes: int = 500, seed: int = 7
) -> ClosedLoop:
    """Own switching, ideal codes: the i-th switch of an episode gets the code of the task's
    i-th subgoal (the last one after that)."""
    kit = env_kit(loaded.base, loaded.layer)
    order = task_subgoals(kit, task)

    def propose():
        count = np.zeros(kit.batch, np.int64)

        def next_code(state, sel: Tensor) -> Tensor:
            envs = state.env_index[sel.cpu().numpy()]
            k = np.minimum(count[envs], len(order) - 1)
            count[envs] += 1
            return codes[[order[j] for j in k]].to(state.resid.device)

        return next_code

    return _closed_loop(kit, loaded, task, n_episodes, seed, propose)


def prior_commitment(
    loaded: LoadedMetacontroller, task, n_episodes: int = 500, seed: int = 7
) -> ClosedLoop:
    """Own switching, codes from ``N(0, I)``: what an RL policy's initial codes achieve."""
    kit = env_kit(loaded.base, loaded.layer)
    return _closed_loop(kit, loaded, task, n_episodes, seed, None)


def summary(prefix: str, result: ClosedLoop) -> dict[str, float]:
    out = {
        f"{prefix}/success": result.success,
        f"{prefix}/switches_per_episode": result.switches_per_episode,
        f"{prefix}/segment_product": float(np.prod(result.per_segment)),
    }
    for k, p in enumerate(result.per_segment):
        out[f"{prefix}/segment_{k}"] = p
    return out


def unseen_transitions(tasks=PRETRAIN_TASKS, colours_per_subgoal: int = 2) -> list[str]:
    """Two-subgoal tasks, one per subgoal transition that no task in ``tasks`` contains
    (gridworld: ``0-1-2-3``, ``2-3-4-5``, ``4-5-6-7``, ``6-7-0-1``; ant, one colour per
    subgoal: ``0-1``, ``1-2``, ``2-3``, ``3-0``)."""
    k = colours_per_subgoal
    subgoals = sorted({c // k for t in tasks for c in t})
    seen = {(a, b) for t in tasks for a, b in zip(t[::k], t[k::k], strict=False)}
    seen = {(a // k, b // k) for a, b in seen}
    return [
        format_task([*range(a * k, a * k + k), *range(b * k, b * k + k)])
        for a in subgoals for b in subgoals if a != b and (a, b) not in seen
    ]  # fmt: skip


def analyse(
    loaded: LoadedMetacontroller, ds: TrajectoryDataset, episodes: np.ndarray, *,
    task="post", n_episodes: int = 500, seed: int = 7,
) -> dict[str, float]:  # fmt: skip
    """``compose/...`` (ideal codes, own switching) on ``task`` and on each unseen single
    transition (``compose/unseen/TASK``, their mean ``compose/unseen_mean``),
    ``prior_commit/...`` (prior codes) on ``task`` and ``codes/...`` (:func:`code_swaps`),
    codes taken from the held-out ``episodes`` of ``ds``."""
    n_subgoals = int(ds.arrays["subgoal"].max()) + 1
    prior = summary("prior_commit", prior_commitment(loaded, task, n_episodes, seed))
    prior |= code_swaps(loaded, ds, episodes)
    try:
        codes = subgoal_codes(loaded, ds, episodes, n_subgoals)
    except ValueError as e:  # too few held-out episodes: not computed (null in summary.json)
        logger.warning("compositional steering not computed: %s", e)
        return {"compose/success": float("nan")} | prior
    out = summary("compose", compositional_steering(loaded, codes, task, n_episodes, seed))
    kit = env_kit(loaded.base, loaded.layer)  # ant: single colours, its own task table
    unseen = {
        t: compositional_steering(loaded, codes, t, n_episodes, seed).success
        for t in unseen_transitions(kit.pretrain_tasks, kit.colours_per_subgoal)
    }
    out |= {f"compose/unseen/{t}": v for t, v in unseen.items()}
    out["compose/unseen_mean"] = float(np.mean(list(unseen.values())))
    return out | prior


def segments_figure(summary_: dict, title: str = "") -> go.Figure:
    """Per segment of the task: P(complete it | reached it) with the ideal codes under the
    metacontroller's own switching, and with codes from ``N(0, I)`` (the RL policy's
    start), from a ``summary.json`` holding ``compose/...`` and ``prior_commit/...``."""
    fig = go.Figure()
    series = (("compose", "ideal codes, own switching"),
              ("prior_commit", "codes from N(0, I): the RL policy's start"))  # fmt: skip
    for prefix, name in series:
        keys = [k for k in summary_ if k.startswith(f"{prefix}/segment_")]
        keys = sorted((k for k in keys if k.rsplit("_", 1)[1].isdigit()),
                      key=lambda k: int(k.rsplit("_", 1)[1]))  # fmt: skip
        fig.add_bar(
            x=[f"segment {k.rsplit('_', 1)[1]}" for k in keys],
            y=[summary_[k] for k in keys], name=name,
        )  # fmt: skip
    fig.add_hline(y=0.25, line_dash="dot", annotation_text="1/4: a uniform choice of subgoal")
    fig.update_layout(
        barmode="group", yaxis={"range": [0, 1], "title": "P(complete segment | reached it)"},
        title=title or "Do the codes command? post, segment by segment",
    )  # fmt: skip
    return fig


def unseen_figure(summary_: dict) -> go.Figure:
    """Compositional steering on each unseen single transition (``compose/unseen/TASK``)
    and on the whole task, from a ``summary.json``."""
    tasks = sorted(k.split("/", 2)[2] for k in summary_ if k.startswith("compose/unseen/"))
    x = [*tasks, "post (all four in a row)"]
    y = [summary_[f"compose/unseen/{t}"] for t in tasks] + [summary_.get("compose/success")]
    fig = go.Figure(go.Bar(x=x, y=y, name="ideal codes, own switching"))
    fig.update_layout(
        yaxis={"range": [0, 1], "title": "success"},
        xaxis_title="task (each single task: one transition pretraining never showed)",
        title="Codes composing transitions the base never saw",
    )  # fmt: skip
    return fig
